"""One model, several requests at once (a server): slots that keep each one's KV cache, and turns that let their
steps take the model one after another.

A request takes a slot for its run: the free slot whose cached tokens share the longest start with its prompt
(prompt reuse, see generation/slots.py), else the one used least recently. Runs with several rows (samples) take a
slot too (it bounds how many run at once) but do not use its cache.

The model computes one step at a time: a run holds the turn while it computes a step and passes it on after each
one, first come first served, so a long generation never holds a short one back by more than a step. Prefill is
one turn: a long prompt delays the others by its prefill.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Iterator, Sequence

from ..generation.slots import Slot


class Turns:
    """A fair lock (a ticket lock): whoever asked first computes next."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._next_ticket = 0
        self._serving = 0

    @property
    def waiting(self) -> int:
        """How many runs wait for the turn."""
        with self._changed:
            return max(0, self._next_ticket - self._serving - 1)

    def take(self) -> None:
        with self._changed:
            ticket = self._next_ticket
            self._next_ticket += 1
            while self._serving != ticket:
                self._changed.wait()

    def give(self) -> None:
        with self._changed:
            self._serving += 1
            self._changed.notify_all()

    def pass_on(self) -> None:
        """Let everyone waiting compute a step, then go on (nothing happens when no one waits)."""
        if not self.waiting:
            return
        self.give()
        self.take()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self.take()
        try:
            yield
        finally:
            self.give()


class SlotPool:
    """`size` slots, each with its own cache; `acquire` waits for a free one."""

    def __init__(self, model, size: int, reserve: int | None = None) -> None:
        if size < 1:
            raise ValueError("a slot pool needs at least one slot")
        options = {} if reserve is None else {"reserve": reserve}
        self.slots = [Slot(model, **options) for _ in range(size)]
        self._free = list(self.slots)
        self._last_used = {id(s): 0 for s in self.slots}
        self._clock = itertools.count(1)
        self._changed = threading.Condition()

    @property
    def busy(self) -> int:
        with self._changed:
            return len(self.slots) - len(self._free)

    @contextlib.contextmanager
    def acquire(self, prompt: Sequence[int] | None) -> Iterator[Slot]:
        with self._changed:
            while not self._free:
                self._changed.wait()
            slot = self._choose(prompt)
            self._free.remove(slot)
        try:
            yield slot
        finally:
            with self._changed:
                self._last_used[id(slot)] = next(self._clock)
                self._free.append(slot)
                self._changed.notify()

    def _choose(self, prompt: Sequence[int] | None) -> Slot:
        def shared(slot: Slot) -> int:
            return slot.common_prefix(prompt) if prompt else 0

        return max(self._free, key=lambda s: (shared(s), -self._last_used[id(s)]))
