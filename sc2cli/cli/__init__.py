"""The `sc2` command: a Typer app composed from one module per command, and `main()`, which maps every outcome to
an exit code (0 ok, 1 failure, 2 bad usage or input, 130 Ctrl-C, 143 SIGTERM) and at most one line on stderr (a
bare `sc2`, a usage error, prints its help there). A closed stdout is an error (exit 1, as for `cat >&-`); a
reader that closes the pipe (`| head`) ends the command quietly with 0.

Command modules import torch only inside their functions, so `sc2 --help`, `sc2 config` and shell completion
start fast.

Signals (SIGINT, SIGTERM) go through one gate, `_SignalGate`, installed before anything else this module imports
(typer, rich; the commands import torch later), so that an interrupt ends the command with 130 / 143 and nothing
on stderr whenever it arrives:
  * during an import it is held, and raised once the import is done. Raised inside an import it would leave a
    half-made module behind: a C extension cannot be loaded twice ("cannot load module more than once per
    process" when numpy is imported again), and libraries that guard optional imports with a bare `except`
    swallow it (the Ctrl-C "ignored").
  * before `main` runs (while this module imports), `main` returns 130 / 143 at once.
  * once the command has returned or failed, it is only recorded: the exit code becomes 130 / 143, and whatever
    failed because of it is not reported. Nothing is raised inside the `except` blocks that report an outcome.
  * a second one within `GRACE` seconds of the one raised is only recorded, so that it cannot cut short the
    clean-up the first one started (`finally` blocks, the temporary file of `infill --write`); if the program
    still runs after `GRACE` (something swallowed the first), it is raised again.
"""

from __future__ import annotations

import _thread
import errno
import os
import signal
import sys
import time

IMPORT_CODE = ("<frozen importlib._bootstrap>", "<frozen importlib._bootstrap_external>")  # the import system
IMPORT_FILES = (os.path.join("importlib", "_bootstrap.py"), os.path.join("importlib", "_bootstrap_external.py"))
CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class Terminated(BaseException):
    """SIGTERM, raised where the program is so that `finally` blocks (temp-file clean-up) still run."""


def _importing(frame) -> bool:
    """Whether `frame` (of the main thread) runs inside an import."""
    while frame is not None:
        if frame.f_code.co_filename in IMPORT_CODE or frame.f_code.co_filename.endswith(IMPORT_FILES):
            return True
        frame = frame.f_back
    return False


class _SignalGate:
    """Where SIGINT and SIGTERM become KeyboardInterrupt and Terminated, and when (see the module docstring).

    Outside a run of `main` it only holds a signal that comes during an import; otherwise it does what the
    handler it replaced would have done (Python's KeyboardInterrupt for SIGINT, death by the signal for SIGTERM),
    so that importing sc2cli.cli changes nothing for a program that embeds it."""

    GRACE = 2.0  # seconds after an interrupt is raised during which a second one only counts
    POLL = 0.02  # how often a held signal is checked for a safe moment
    BEFORE_MAIN = 0.5  # how long a signal held before `main` waits for `main` to start and take it

    def __init__(self) -> None:
        self.main_thread = _thread.get_ident()
        self.running = False  # inside main, until the outcome is known
        self.exiting = False  # the outcome is known: signals only count
        self.held: int | None = None  # a signal waiting for the end of an import
        self.received: int | None = None  # the first signal of the run: it decides the exit code
        self.raised_at: float | None = None
        self.watching = False
        self.replaced: dict[int, object] = {}  # what handled each signal before the gate, outside runs
        self.saved: dict[int, object] = {}  # what handled each signal before this run of main

    # ---- the handler and its watcher ---------------------------------------------------------------------------
    def handle(self, signum, frame) -> None:
        if self.running or self.exiting:
            self.received = self.received or signum
        if self.exiting:
            return
        if self.raised_at is not None and time.monotonic() - self.raised_at < self.GRACE:
            return
        if _importing(frame):
            self.held = signum
            self._watch()
            return
        self.held = None
        if not self.running:
            return self._as_before(signum, frame)
        self.raised_at = time.monotonic()
        self._watch()
        raise KeyboardInterrupt() if signum == signal.SIGINT else Terminated()

    def _as_before(self, signum, frame) -> None:
        previous = self.replaced.get(signum, signal.SIG_DFL)
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:  # SIG_DFL: die of the signal, as without the gate
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    def _watch(self) -> None:
        if not self.watching:
            self.watching = True
            _thread.start_new_thread(self._watch_loop, ())

    def _watch_loop(self) -> None:
        """Redeliver a held signal once the main thread is out of its imports; redeliver a raised one that the
        program outlived by GRACE seconds. Runs until the process ends (it wakes 50 times a second)."""
        out_of_imports_since = None
        while True:
            time.sleep(self.POLL)
            try:
                held, raised_at = self.held, self.raised_at
                if self.exiting:
                    continue
                if held is not None:
                    if _importing(sys._current_frames().get(self.main_thread)):
                        out_of_imports_since = None
                        continue
                    if not self.running:  # before main: give main the moment it needs to start and take it
                        out_of_imports_since = out_of_imports_since or time.monotonic()
                        if time.monotonic() - out_of_imports_since < self.BEFORE_MAIN:
                            continue
                    self._deliver(held)
                elif self.running and raised_at is not None and time.monotonic() - raised_at >= self.GRACE:
                    self.raised_at = None
                    self._deliver(self.received or signal.SIGINT)
            except Exception:  # never a traceback from this thread; the next poll tries again
                pass

    def _deliver(self, signum: int) -> None:
        """The signal again, to the main thread: a real one, so that a blocking call there (a sleep, a read) is
        interrupted as by the first; without pthread_kill (Windows), at its next Python instruction."""
        if hasattr(signal, "pthread_kill"):
            signal.pthread_kill(self.main_thread, signum)
        else:  # pragma: no cover
            _thread.interrupt_main(signum)

    # ---- install, and the phases of a run ----------------------------------------------------------------------
    def install_over_defaults(self) -> None:
        """At import: take SIGINT and SIGTERM where Python's defaults handle them (an embedding program's own
        handlers stay)."""
        for signum, default in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL)):
            try:
                if signal.getsignal(signum) is default:
                    signal.signal(signum, self.handle)
                    self.replaced[signum] = default
            except ValueError:  # not the main thread: signals are not ours to handle
                pass

    def begin(self) -> int | None:
        """The run starts; the exit code at once when a signal came before it."""
        self.running, self.exiting = True, False
        self.received, self.held, self.raised_at = self.held, None, None
        self.main_thread = _thread.get_ident()  # where the signals are handled, and redelivered to
        self.saved = {}
        for signum in CODES:
            try:
                current = signal.getsignal(signum)
                if current != self.handle:
                    self.saved[signum] = current
                    signal.signal(signum, self.handle)
            except ValueError:
                pass
        return CODES.get(self.received) if self.received else None

    def close(self) -> None:
        """The outcome is known: from now on a signal only counts."""
        self.exiting, self.running = True, False

    def finish(self, code: int, program: bool) -> int:
        """The exit code (130 / 143 when a signal came during the run). In a program (`main()` run as `sc2`) the
        outcome is reported and only the interpreter's clean-up is left: from here a signal ends the process by
        itself (which a shell reports as 130 / 143 too), so nothing is raised any more and a stuck clean-up stays
        killable. A caller of `main(argv)` gets its own handlers back."""
        if self.received:
            code = CODES.get(self.received, 128 + self.received)
        if program:
            for signum in CODES:
                try:
                    signal.signal(signum, signal.SIG_DFL)
                except ValueError:
                    pass
        else:
            for signum, previous in self.saved.items():
                try:
                    signal.signal(signum, previous)
                except (ValueError, TypeError):
                    pass
            self.exiting = False
        return code


_gate = _SignalGate()
_gate.install_over_defaults()  # now, before the imports below

import contextlib  # noqa: E402

import typer  # noqa: E402
from typer import rich_utils  # noqa: E402
from typer.core import TyperArgument  # noqa: E402

try:  # typer >= 0.20 vendors its own click
    from typer._click import exceptions as click
except ImportError:  # pragma: no cover
    from click import exceptions as click

from ..errors import InputError, Sc2Error  # noqa: E402
from . import bench, common, config_cmd, models, output  # noqa: E402
from .classify import classify  # noqa: E402
from .complete import complete  # noqa: E402
from .download import download  # noqa: E402
from .info import info  # noqa: E402
from .infill import infill  # noqa: E402
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
app.command()(download)
app.add_typer(models.app, name="models")
app.command()(info)
app.add_typer(config_cmd.app, name="config")
app.command()(train)
app.add_typer(bench.app, name="bench")

TYPER_FORCE_TERMINAL = rich_utils.FORCE_TERMINAL


# ---- the command line's conventions, applied to the built commands ------------------------------------------------
class NoCommand(click.UsageError):
    """A group (`sc2`, `sc2 bench`) run without a command: a usage error, answered with its help on stderr."""

    def __init__(self, ctx) -> None:
        super().__init__("a command is needed", ctx=ctx)


def _conventions(command) -> None:
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
        _conventions(sub)


def _plain_help_when_no_color() -> None:
    """NO_COLOR: help without escape codes (bold, dim, colour), like the rest of sc2's stderr."""
    rich_utils.FORCE_TERMINAL = False if os.environ.get("NO_COLOR") else TYPER_FORCE_TERMINAL


def _closed_pipe(exit: SystemExit) -> bool:
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


# ---- main ---------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    """Run the command line (`argv`, or the process's own arguments) and exit with its code. Only the gate's
    `begin` and the command run where a signal is raised; the outcome is mapped and reported where it only counts."""
    code = 1
    try:
        try:
            code = _gate.begin()
            if code is None:
                code = _invoke(argv)
        finally:
            _gate.close()
    except BaseException as err:  # every outcome is mapped to an exit code (SC2_DEBUG=1 re-raises bugs)
        code = _outcome(err)
    sys.exit(_gate.finish(code, program=argv is None))


def _invoke(argv: list[str] | None) -> int:
    output.guard_stdout()
    _plain_help_when_no_color()
    command = typer.main.get_command(app)
    _conventions(command)
    code = command.main(args=argv, prog_name="sc2", standalone_mode=False)
    return code if isinstance(code, int) else 0


def _outcome(err: BaseException) -> int:
    """The exit code of a run that raised `err`, after saying what went wrong in one line on stderr."""
    debug = os.environ.get("SC2_DEBUG", "") not in ("", "0")
    if _gate.received:  # interrupted: whatever failed after that is its consequence, not news
        return CODES.get(_gate.received, 1)
    if isinstance(err, KeyboardInterrupt):
        return 130
    if isinstance(err, Terminated):
        return 143
    if isinstance(err, SystemExit):
        if _closed_pipe(err):
            return 0
        return err.code if isinstance(err.code, int) else (0 if err.code is None else 1)
    if isinstance(err, NoCommand):
        with contextlib.redirect_stdout(sys.stderr):
            err.ctx.get_help()  # Typer's help prints itself (to sys.stdout, here stderr)
        return 2
    if isinstance(err, click.UsageError):
        hint = f" (see `{err.ctx.command_path} --help`)" if err.ctx is not None else ""
        output.error(f"{err.format_message()}{hint}")
        return 2
    if isinstance(err, click.ClickException):
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
