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
    rows = {key: settings.get(key) for key in settings.KEYS}
    if json_out:
        output.write_json({key: {"value": v, "source": src} for key, (v, src) in rows.items()})
        return
    for key, (value, source) in rows.items():
        output.write(f"{key} = {value}    # {source}\n")


@app.command("set")
def set_(key: Annotated[str, typer.Argument(help="model, device or dtype.")],
         value: Annotated[str, typer.Argument(help="The new value.")]) -> None:
    """Store a default in the config file."""
    path = settings.set_value(key, value)
    output.status(f"{key} = {value} (saved to {path})")


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
