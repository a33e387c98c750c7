"""The output sink: the product (completion text or JSON) on stdout; everything else on stderr via Rich."""

from __future__ import annotations

import errno
import json
import os
import sys
from functools import lru_cache

from ..errors import Sc2Error


class PipeClosed(Sc2Error):
    """stdout was closed by the reader (`| head`): stop quietly."""

    exit_code = 0


class StdoutClosed(Sc2Error):
    """stdout cannot take the output: it is closed (`>&-`), or a write failed (a full disk, `> /dev/full`)."""


class _NoStdout:
    """sys.stdout for a process started with stdout closed (Python leaves it None): every writer (`output.write`,
    Rich, print) fails with one clear StdoutClosed, `isatty()` is False, and the final flush has nothing to do."""

    closed = False
    encoding = "utf-8"
    errors = "strict"

    @property
    def buffer(self):
        return self

    def write(self, data) -> int:
        raise StdoutClosed("cannot write the output: stdout is closed")

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        raise OSError(errno.EBADF, "stdout is closed")


def guard_stdout() -> None:
    """Give a process whose stdout is closed a stdout that says so when written to (see _NoStdout)."""
    if sys.stdout is None:
        sys.stdout = _NoStdout()


def _stdout_to_devnull() -> None:
    """Point file descriptor 1 at /dev/null, so that the interpreter's final flush of what is left cannot fail
    again (a second error, or exit code 120)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)


@lru_cache(maxsize=1)
def err_console():
    from rich.console import Console

    plain = bool(os.environ.get("NO_COLOR")) or not sys.stderr.isatty()
    return Console(stderr=True, no_color=plain, highlight=False, soft_wrap=True,
                   force_terminal=False if plain else None, emoji=False)


def status(message: str) -> None:
    err_console().print(message, style="dim", markup=False)


def warning(message: str) -> None:
    err_console().print(f"warning: {message}", style="yellow", markup=False)


def error(message: str) -> None:
    err_console().print(f"sc2: error: {message}", style="bold red", markup=False)


def write(text: str) -> None:
    """Write product text to stdout now (UTF-8, flushed, so streaming reaches a pipe as it is made)."""
    if not text:
        return
    try:
        sys.stdout.buffer.write(text.encode("utf-8", errors="surrogateescape"))
        sys.stdout.buffer.flush()
    except AttributeError:  # a text-only stdout (e.g. under a test runner)
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:  # the reader went away (`| head`): what it did not read is not wanted
        _stdout_to_devnull()
        raise PipeClosed("") from None
    except OSError as err:  # EBADF, ENOSPC, EIO ...: the output is lost, which is an error
        _stdout_to_devnull()
        raise StdoutClosed(f"cannot write the output to stdout: {err.strerror or err}") from None


def write_json(data: object) -> None:
    write(json.dumps(data, ensure_ascii=False, indent=None) + "\n")
