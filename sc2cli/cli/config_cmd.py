"""`sc2 config`: show or change the defaults in ~/.config/sc2/config.toml (never imports torch)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .. import settings
from . import output

app = typer.Typer(help="Show or set defaults (model, device, dtype).", invoke_without_command=True,
                  no_args_is_help=False)


@app.callback()
def show(ctx: typer.Context, json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Show every setting, its value and where it comes from."""
    if ctx.invoked_subcommand is not None:
        return
    rows = {key: settings.get(key, check=False) for key in settings.KEYS}  # a bad value is shown, and said so
    problems = {key: settings.problem(key, value) for key, (value, _) in rows.items()}
    if json_out:
        output.write_json({key: {"value": v, "source": src, **({"problem": problems[key]} if problems[key] else {})}
                           for key, (v, src) in rows.items()})
        return
    for key, (value, source) in rows.items():
        note = f" (not valid: it {problems[key]})" if problems[key] else ""
        output.write(f"{key} = {value}    # {source}{note}\n")


@app.command("set")
def set_(key: Annotated[str, typer.Argument(help="model, device or dtype.")],
         value: Annotated[str, typer.Argument(help="The new value: device auto, cpu, cuda, cuda:N or mps; dtype auto, "
                                              "float32, bfloat16 or float16; model a Hub id or a folder.")]) -> None:
    """Store a default in the config file (checked first: a bad value is refused, never saved)."""
    path = settings.set_value(key, value)
    output.status(f"{key} = {settings.normalized(key, value)} (saved to {path})")


@app.command("unset")
def unset(key: Annotated[str, typer.Argument(help="model, device or dtype.")]) -> None:
    """Remove a setting from the config file (the built-in default applies again)."""
    path = settings.set_value(key, None)
    output.status(f"{key} removed from {path}")


@app.command("path")
def path() -> None:
    """Print the config file's location."""
    output.write(f"{settings.config_path()}\n")


__all__ = ["app", "Optional"]
