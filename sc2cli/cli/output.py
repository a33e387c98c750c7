"""The output sink: the product (completion text or JSON) on stdout; everything else on stderr via Rich."""

from __future__ import annotations

import json
import os
import sys
from functools import lru_cache

from ..errors import Sc2Error


class PipeClosed(Sc2Error):
    """stdout was closed by the reader (`| head`): stop quietly."""

    exit_code = 0


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
    except BrokenPipeError:
        # Point stdout at /dev/null so the interpreter's final flush cannot fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise PipeClosed("") from None


def write_json(data: object) -> None:
    write(json.dumps(data, ensure_ascii=False, indent=None) + "\n")
