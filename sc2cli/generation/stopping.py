"""Filters over streamed text: stop strings (even when they span tokens), and a chain of filters.

A filter's `feed(delta)` returns `(text_to_emit, stopped)`; `flush()` returns what it still holds when the stream
ends. Once a filter has stopped it emits nothing more.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Protocol


class TextFilter(Protocol):
    def feed(self, delta: str) -> tuple[str, bool]: ...

    def flush(self) -> str: ...


class Chain:
    """Text flows through `first`, then `second`; either may stop the stream."""

    def __init__(self, first: TextFilter, second: TextFilter) -> None:
        self.first, self.second = first, second

    def feed(self, delta: str) -> tuple[str, bool]:
        text, stopped = self.first.feed(delta)
        out, stopped_second = self.second.feed(text)
        if stopped and not stopped_second:
            out += self.second.flush()
        return out, stopped or stopped_second

    def flush(self) -> str:
        text, stopped = self.second.feed(self.first.flush())
        return text + ("" if stopped else self.second.flush())


class StopStringMatcher:
    """Holds back just enough text to tell whether a stop string is starting.

    `feed(delta)` returns `(text_to_emit, stopped)`. Once stopped, the stop string and anything after it are
    dropped; text before it is emitted. Text that could still become a stop string is held until it cannot.
    """

    def __init__(self, stop_strings: Iterable[str] = ()) -> None:
        self.stop_strings = tuple(s for s in stop_strings if s)
        self.pending = ""
        self.stopped = False

    def feed(self, delta: str) -> tuple[str, bool]:
        if self.stopped:
            return "", True
        if not self.stop_strings:
            return delta, False
        self.pending += delta
        hits = [i for i in (self.pending.find(s) for s in self.stop_strings) if i >= 0]
        if hits:
            cut = min(hits)
            text, self.pending, self.stopped = self.pending[:cut], "", True
            return text, True
        hold = self._partial_match_length()
        emit_to = len(self.pending) - hold
        text, self.pending = self.pending[:emit_to], self.pending[emit_to:]
        return text, False

    def _partial_match_length(self) -> int:
        """Length of the longest suffix of `pending` that is a proper prefix of some stop string."""
        best = 0
        for s in self.stop_strings:
            for n in range(min(len(s) - 1, len(self.pending)), best, -1):
                if self.pending.endswith(s[:n]):
                    best = n
                    break
        return best

    def flush(self) -> str:
        """At the end of generation, held-back text is no stop string after all."""
        text, self.pending = ("" if self.stopped else self.pending), ""
        return text


def chain_filters(*factories: Callable[[int], TextFilter] | None) -> Callable[[int], TextFilter] | None:
    """One per-row filter factory from several (None where there are none): text flows through them in order."""
    present = [f for f in factories if f is not None]
    if not present:
        return None

    def make(row: int) -> TextFilter:
        chained = present[0](row)
        for factory in present[1:]:
            chained = Chain(chained, factory(row))
        return chained

    return make


class IndentStop:
    """llama.cpp's `n_indent`: after the first line break, a line that starts with fewer than `indent` spaces or
    tabs before anything else (a blank line included) ends the text there; the short indent itself stays."""

    def __init__(self, indent: int) -> None:
        self.indent = indent
        self.at_line_start = False  # (the first line, the rest of the cursor's, is never checked)
        self.width = 0
        self.stopped = False

    def feed(self, delta: str) -> tuple[str, bool]:
        if self.stopped:
            return "", True
        for i, ch in enumerate(delta):
            if self.at_line_start:
                if ch in " \t":
                    self.width += 1
                    continue
                if self.width < self.indent:
                    self.stopped = True
                    return delta[:i], True
                self.at_line_start = False
            if ch == "\n":
                self.at_line_start, self.width = True, 0
        return delta, False

    def flush(self) -> str:
        return ""


class TimeLimit:
    """Ends the text once `seconds` have passed since its first piece, keeping everything made so far. With
    `at_line_break` (llama.cpp's `t_max_predict_ms`), only at a piece that holds a line break, so the text ends
    with whole lines."""

    def __init__(self, seconds: float, at_line_break: bool = False, clock: Callable[[], float] = time.monotonic):
        self.seconds = seconds
        self.at_line_break = at_line_break
        self.clock = clock
        self.started: float | None = None
        self.fired = False

    def feed(self, delta: str) -> tuple[str, bool]:
        if self.fired:
            return "", True
        now = self.clock()
        if self.started is None:
            self.started = now
        if now - self.started > self.seconds and (not self.at_line_break or "\n" in delta):
            self.fired = True
            return delta, True
        return delta, False

    def flush(self) -> str:
        return ""
