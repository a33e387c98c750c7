"""Signals (SIGINT, SIGTERM) go through one gate, `GATE`, installed by `sc2cli.cli` before anything else it
imports (typer, rich; the commands import torch later), so that an interrupt ends the command with 130 / 143 and
nothing on stderr whenever it arrives:
  * during an import it is held, and raised once the import is done. Raised inside an import it would leave a
    half-made module behind: a C extension cannot be loaded twice ("cannot load module more than once per
    process" when numpy is imported again), and libraries that guard optional imports with a bare `except`
    swallow it (the Ctrl-C "ignored").
  * before `main` runs (while `sc2cli.cli` imports), `main` returns 130 / 143 at once.
  * once the command has returned or failed, it is only recorded: the exit code becomes 130 / 143, and whatever
    failed because of it is not reported. Nothing is raised inside the `except` blocks that report an outcome.
  * a second one within `GRACE` seconds of the one raised is only recorded, so that it cannot cut short the
    clean-up the first one started (`finally` blocks, the temporary file of `infill --write`); if the program
    still runs after `GRACE` (something swallowed the first), it is raised again.
"""

from __future__ import annotations

import _thread
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


GATE = _SignalGate()
