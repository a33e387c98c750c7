"""`sc2 models`: the StarCoder2 checkpoints on this machine (Hugging Face cache and the shipped model).

Examples:
  sc2 models
  sc2 models --json
  sc2 models | cut -f1
  sc2 models rm bigcode/starcoder2-3b --yes
"""

from __future__ import annotations

import sys
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Annotated

import typer

from ..cache_listing import Entry, list_models as listing, plan_removal
from ..errors import UsageError
from . import output
from .options import RevisionOpt

app = typer.Typer(help="List cached StarCoder2 checkpoints; `sc2 models rm` removes one.",
                  invoke_without_command=True, no_args_is_help=False)


@app.callback()
def list_models(ctx: typer.Context, json_out: Annotated[bool, typer.Option(
        "--json", help="Print a JSON list of objects on stdout.")] = False) -> None:
    """List cached StarCoder2 checkpoints with size on disk, revision and last change."""
    if ctx.invoked_subcommand is not None:
        return
    found = listing()
    if found.warning:
        output.warning(found.warning)
    entries = found.entries
    if json_out:
        output.write_json([entry_json(e) for e in entries])
    elif sys.stdout.isatty():
        print_table(entries)
    else:  # piped: one tab-separated line per model, no header (`sc2 models | cut -f1`)
        for e in entries:
            output.write("\t".join([e.model, e.revision_label, human_size(e.size_bytes), when(e.last_modified),
                                    e.path]) + "\n")


@app.command("rm")
def remove(
    model: Annotated[str, typer.Argument(help="Hub repo id as `sc2 models` lists it.", show_default=False)],
    revision: RevisionOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete MODEL (every cached revision, or only --revision) from the Hugging Face cache."""
    removal = plan_removal(model, revision)
    freed = human_size(removal.freed_bytes)
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError(f"not removing {removal.what} without confirmation (stdin is not a terminal); add --yes")
        if not typer.confirm(f"Remove {removal.what} ({freed}) from the cache?", err=True):
            output.status("nothing removed")
            raise typer.Exit(1)
    removal.execute()
    output.status(f"removed {removal.what} ({freed} freed)")


# ---- formatting -------------------------------------------------------------------------------------------------
def entry_json(entry: Entry) -> dict:
    data = asdict(entry)
    data["last_modified"] = datetime.fromtimestamp(entry.last_modified, timezone.utc).isoformat(timespec="seconds")
    data["size"] = human_size(entry.size_bytes)
    return data


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M")


def print_table(entries: list[Entry]) -> None:
    if not entries:
        output.status("no StarCoder2 models cached; fetch one with `sc2 download bigcode/starcoder2-3b`")
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, soft_wrap=False)
    columns = [("MODEL", "left"), ("REVISION", "left"), ("SIZE", "right"), ("MODIFIED", "left")]
    rows = [[e.model, e.revision_label, human_size(e.size_bytes), when(e.last_modified)] for e in entries]
    widths = [max(len(name), *(len(r[i]) for r in rows)) for i, (name, _) in enumerate(columns)]
    if sum(widths) + 2 * len(widths) + max(len(e.path) for e in entries) <= console.width:
        columns.append(("PATH", "left"))  # only when it fits on one line; `--json` and pipes always have it
        for r, e in zip(rows, entries):
            r.append(e.path)
    table = Table(box=None, pad_edge=False, header_style="bold")
    for name, justify in columns:
        table.add_column(name, justify=justify, no_wrap=True)
    for r in rows:
        table.add_row(*r)
    console.print(table)
