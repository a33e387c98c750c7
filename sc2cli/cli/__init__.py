"""The `sc2` command: a Typer app composed from one module per command, and `main()`, which maps every error to
one line on stderr and an exit code (0 ok, 1 failure, 2 bad usage or input, 130 Ctrl-C, 143 SIGTERM).

Command modules import torch only inside their functions, so `sc2 --help`, `sc2 config` and shell completion
start fast.
"""

from __future__ import annotations

import os
import signal
import sys

import typer

try:  # typer >= 0.20 vendors its own click
    from typer._click import exceptions as click
except ImportError:  # pragma: no cover
    from click import exceptions as click

from ..errors import InputError, Sc2Error
from . import bench, common, config_cmd, models, output
from .classify import classify
from .complete import complete
from .download import download
from .info import info
from .infill import infill
from .train import train

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
app.command()(download)
app.add_typer(models.app, name="models")
app.command()(info)
app.add_typer(config_cmd.app, name="config")
app.command()(train)
app.add_typer(bench.app, name="bench")


class Terminated(BaseException):
    """SIGTERM, raised where the program is so that `finally` blocks (temp-file clean-up) still run."""


def _on_sigterm(signum, frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> None:
    signal.signal(signal.SIGTERM, _on_sigterm)
    debug = os.environ.get("SC2_DEBUG", "") not in ("", "0")
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="sc2", standalone_mode=False)
    except click.NoArgsIsHelpError as err:
        output.err_console().print(err.format_message(), markup=False, highlight=False)
        code = 2
    except click.UsageError as err:
        hint = f" (see `{err.ctx.command_path} --help`)" if err.ctx is not None else ""
        output.error(f"{err.format_message()}{hint}")
        code = 2
    except click.ClickException as err:
        output.error(err.format_message())
        code = err.exit_code
    except typer.Abort:
        code = 130
    except output.PipeClosed:
        code = 0
    except Sc2Error as err:
        if debug:
            raise
        output.error(common.flag_message(err) if isinstance(err, InputError) else str(err))
        code = err.exit_code
    except KeyboardInterrupt:
        code = 130
    except Terminated:
        code = 143
    except BrokenPipeError:
        code = 0
    except Exception as err:  # a bug: say so in one line; SC2_DEBUG=1 shows the traceback
        if debug:
            raise
        detail = " ".join(str(err).split())[:300]
        output.error(f"unexpected {type(err).__name__}: {detail} (rerun with SC2_DEBUG=1 for the traceback)")
        code = 1
    sys.exit(code if isinstance(code, int) else 0)
