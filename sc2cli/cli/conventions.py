"""The command line's conventions, applied to the built Typer commands: plain usage lines, a bare group is a usage
error, NO_COLOR help, and how Rich and Typer report a closed pipe."""

from __future__ import annotations

import errno
import os

from typer import rich_utils
from typer.core import TyperArgument

try:  # typer >= 0.20 vendors its own click
    from typer._click import exceptions as click
except ImportError:  # pragma: no cover
    from click import exceptions as click

TYPER_FORCE_TERMINAL = rich_utils.FORCE_TERMINAL


class NoCommand(click.UsageError):
    """A group (`sc2`, `sc2 bench`) run without a command: a usage error, answered with its help on stderr."""

    def __init__(self, ctx) -> None:
        super().__init__("a command is needed", ctx=ctx)


def apply(command) -> None:
    """Usage lines name arguments plainly (`FILE`, `[PROMPT]`; Typer writes a required one `{file}`), and a group
    run bare raises NoCommand instead of printing its help on stdout as it builds the error."""
    for param in command.params:
        if isinstance(param, TyperArgument):
            param.metavar = (param.metavar or param.name or "ARG").upper()
            piece = param.metavar if param.required else f"[{param.metavar}]"
            param.get_usage_pieces = lambda ctx, piece=piece + ("..." if param.nargs != 1 else ""): [piece]
    if getattr(command, "no_args_is_help", False) and hasattr(command, "commands"):
        parse_args = command.parse_args

        def parse_or_refuse(ctx, args, parse_args=parse_args):
            if not args and not ctx.resilient_parsing:
                raise NoCommand(ctx)
            return parse_args(ctx, args)

        command.parse_args = parse_or_refuse
    for sub in getattr(command, "commands", {}).values():
        apply(sub)


def plain_help_when_no_color() -> None:
    """NO_COLOR: help without escape codes (bold, dim, colour), like the rest of sc2's stderr."""
    rich_utils.FORCE_TERMINAL = False if os.environ.get("NO_COLOR") else TYPER_FORCE_TERMINAL


def closed_pipe(exit: SystemExit) -> bool:
    """Whether a SystemExit is how Rich or Typer end the program when stdout's reader has gone (`| head`): Rich's
    `Console.on_broken_pipe` raises SystemExit(1), Typer turns an EPIPE into sys.exit(1)."""
    context = exit.__context__
    if isinstance(context, OSError) and context.errno == errno.EPIPE:
        return True
    tb = exit.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return False
    raiser = tb.tb_frame
    return raiser.f_code.co_name == "on_broken_pipe" and raiser.f_globals.get("__name__", "").startswith("rich")
