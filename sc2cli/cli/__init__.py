"""The `sc2` command: a Typer app composed from one module per command, and `main()`, which maps every outcome to
an exit code (0 ok, 1 failure, 2 bad usage or input, 130 Ctrl-C, 143 SIGTERM) and at most one line on stderr (a
bare `sc2`, a usage error, prints its help there). A closed stdout is an error (exit 1, as for `cat >&-`); a
reader that closes the pipe (`| head`) ends the command quietly with 0.

Command modules import torch only inside their functions, so `sc2 --help`, `sc2 config` and shell completion
start fast.

Signals go through `signals.GATE`, installed before anything else this package imports (see signals.py).
"""

from __future__ import annotations

from .signals import CODES, GATE, Terminated

GATE.install_over_defaults()  # now, before the imports below (typer, rich; the commands import torch later)

import contextlib  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

import typer  # noqa: E402

from ..errors import InputError, Sc2Error  # noqa: E402
from . import bench, common, config_cmd, conventions, export, models, output  # noqa: E402
from .classify import classify  # noqa: E402
from .complete import complete  # noqa: E402
from .download import download  # noqa: E402
from .info import info  # noqa: E402
from .infill import infill  # noqa: E402
from .serve import serve  # noqa: E402
from .train import train  # noqa: E402

app = typer.Typer(
    name="sc2",
    help="StarCoder2 code completion in the terminal.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command(no_args_is_help=False)(complete)
app.command()(infill)
app.command()(classify)
app.command()(serve)
app.command()(download)
app.add_typer(models.app, name="models")
app.command()(info)
app.add_typer(config_cmd.app, name="config")
app.command()(train)
app.add_typer(bench.app, name="bench")
app.add_typer(export.app, name="export")

# ---- main ---------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    """Run the command line (`argv`, or the process's own arguments) and exit with its code. Only the gate's
    `begin` and the command run where a signal is raised; the outcome is mapped and reported where it only counts."""
    code = 1
    try:
        try:
            code = GATE.begin()
            if code is None:
                code = _invoke(argv)
        finally:
            GATE.close()
    except BaseException as err:  # every outcome is mapped to an exit code (SC2_DEBUG=1 re-raises bugs)
        code = _outcome(err)
    sys.exit(GATE.finish(code, program=argv is None))


def _invoke(argv: list[str] | None) -> int:
    output.guard_stdout()
    conventions.plain_help_when_no_color()
    command = typer.main.get_command(app)
    conventions.apply(command)
    code = command.main(args=argv, prog_name="sc2", standalone_mode=False)
    return code if isinstance(code, int) else 0


def _outcome(err: BaseException) -> int:
    """The exit code of a run that raised `err`, after saying what went wrong in one line on stderr."""
    debug = os.environ.get("SC2_DEBUG", "") not in ("", "0")
    if GATE.received:  # interrupted: whatever failed after that is its consequence, not news
        return CODES.get(GATE.received, 1)
    if isinstance(err, KeyboardInterrupt):
        return 130
    if isinstance(err, Terminated):
        return 143
    if isinstance(err, SystemExit):
        if conventions.closed_pipe(err):
            return 0
        return err.code if isinstance(err.code, int) else (0 if err.code is None else 1)
    if isinstance(err, conventions.NoCommand):
        with contextlib.redirect_stdout(sys.stderr):
            err.ctx.get_help()  # Typer's help prints itself (to sys.stdout, here stderr)
        return 2
    if isinstance(err, conventions.click.UsageError):
        hint = f" (see `{err.ctx.command_path} --help`)" if err.ctx is not None else ""
        output.error(f"{err.format_message()}{hint}")
        return 2
    if isinstance(err, conventions.click.ClickException):
        output.error(err.format_message())
        return err.exit_code
    if isinstance(err, typer.Abort):
        return 130
    if isinstance(err, (output.PipeClosed, BrokenPipeError)):
        return 0
    if isinstance(err, Sc2Error):
        if debug:
            raise err
        output.error(common.flag_message(err) if isinstance(err, InputError) else str(err))
        return err.exit_code
    if debug:  # a bug: say so in one line; SC2_DEBUG=1 shows the traceback
        raise err
    detail = " ".join(str(err).split())[:300]
    output.error(f"unexpected {type(err).__name__}: {detail} (rerun with SC2_DEBUG=1 for the traceback)")
    return 1
