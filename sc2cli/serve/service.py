"""The model behind the server: admission, runs in worker threads, cancellation and limits.

Admission: at most `parallel` runs compute at once (one slot each, see backends/sharing.py) and at most `queue` more
wait; a request beyond that is answered at once with 503 and Retry-After, so the server never holds more work than
it can finish. Each admitted request runs the same pipeline as the commands in a worker thread; the event loop
only parses, waits and writes.

A run ends early, keeping what it made, at the server's time limit, at the request's own `t_max_predict_ms`
(llama.cpp's rule: at a line break) and when the server shuts down. A client that leaves cancels its run between
two steps: its slot is free again at once, and keeps its cache.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from ..backends.base import GenerationJob
from ..generation.params import SamplingParams
from ..generation.stopping import IndentStop, TimeLimit, chain_filters
from .fields import BadRequest

DISCONNECT_POLL_S = 0.05  # how often a waiting request checks that its client is still there
RETRY_AFTER_S = 1


class ClientGone(Exception):
    """The client closed the connection; its run was cancelled."""


@dataclass
class Limits:
    """The filters a request's run ends at while keeping its text (created per row, kept to tell which fired)."""

    seconds: float | None  # the server's limit on one run
    line_break_seconds: float | None = None  # the request's t_max_predict_ms
    indent: int = 0  # the request's n_indent
    stopping: threading.Event | None = None  # set when the server shuts down
    made: list = field(default_factory=list)

    @property
    def fired(self) -> bool:
        return any(getattr(f, "fired", False) or getattr(f, "stopped", False) for f in self.made)

    def factory(self):
        def make(row: int):
            filters = []
            if self.seconds is not None:
                filters.append(TimeLimit(self.seconds))
            if self.line_break_seconds is not None:
                filters.append(TimeLimit(self.line_break_seconds, at_line_break=True))
            if self.indent > 0:
                filters.append(IndentStop(self.indent))
            if self.stopping is not None:
                filters.append(_Shutdown(self.stopping))
            self.made.extend(filters)
            return chain_filters(*(lambda row, f=f: f for f in filters))(row) if filters else _Shutdown(None)

        return make


class _Shutdown:
    """Ends the text, keeping it, once the server is shutting down."""

    def __init__(self, event: threading.Event | None) -> None:
        self.event = event  # (None: never)
        self.fired = False

    def feed(self, delta: str) -> tuple[str, bool]:
        self.fired = self.fired or (self.event is not None and self.event.is_set())
        return delta, self.fired

    def flush(self) -> str:
        return ""


@dataclass
class Request:
    """One request's run: its cancel switch and its limits, for building its job."""

    cancel: threading.Event
    limits: Limits
    usage: object = None  # the finished run's Usage (for the log line)
    reuse_prompt: bool = True  # llama.cpp's cache_prompt

    def job(self, sampling: SamplingParams, max_new_tokens: int, num_samples: int = 1,
            stop: tuple[str, ...] = ()) -> GenerationJob:
        return GenerationJob(sampling=sampling, max_new_tokens=max_new_tokens, num_samples=num_samples, stop=stop,
                             text_filter=self.limits.factory(), cancelled=self.cancel.is_set,
                             reuse_prompt=self.reuse_prompt)


class Service:
    def __init__(self, model_id: str, parallel: int = 1, queue: int = 8, timeout_s: float | None = 60.0,
                 default_max_tokens: int = 128, aliases: tuple[str, ...] = ()) -> None:
        self.model_id = model_id  # contains "starcoder2": Continue picks its FIM template by that substring
        self.model_names = {model_id, *aliases}  # what a request's `model` may say
        self.parallel = parallel
        self.capacity = parallel + queue
        self.timeout_s = timeout_s
        self.default_max_tokens = default_max_tokens
        self.backend = None  # set once the model is loaded
        self.started = time.time()
        self.stopping = threading.Event()
        self._admitted = 0
        self._lock = threading.Lock()
        self._executor = concurrent.futures.ThreadPoolExecutor(self.capacity, thread_name_prefix="sc2-run")

    @property
    def ready(self) -> bool:
        return self.backend is not None

    def require_backend(self):
        if self.backend is None:
            raise BadRequest("Loading model", status=503, kind="unavailable_error",
                             headers={"Retry-After": str(RETRY_AFTER_S)})
        return self.backend

    def request(self, http_request, line_break_ms: int | None = None, indent: int = 0) -> Request:
        """A run for `http_request` (kept in its state, for the log line)."""
        seconds = None if line_break_ms is None or line_break_ms <= 0 else line_break_ms / 1000
        request = Request(threading.Event(), Limits(self.timeout_s, seconds, indent, self.stopping))
        http_request.state.run = request
        return request

    def _submit(self, work: Callable[..., Any], *args) -> concurrent.futures.Future:
        with self._lock:
            if self.stopping.is_set():
                raise BadRequest("the server is shutting down", status=503, kind="unavailable_error")
            if self._admitted >= self.capacity:
                raise BadRequest("no slot available: every slot is busy and the queue is full", status=503,
                                 kind="unavailable_error", headers={"Retry-After": str(RETRY_AFTER_S)})
            self._admitted += 1
        try:
            future = self._executor.submit(work, *args)
        except BaseException:
            self._release(None)
            raise
        future.add_done_callback(self._release)
        return future

    def _release(self, _future) -> None:
        with self._lock:
            self._admitted -= 1

    async def run(self, http_request, request: Request, work: Callable[[Callable[[str], None] | None], Any]):
        """`work(None)` in a worker thread; its result. A client that leaves meanwhile cancels it (ClientGone)."""
        future = asyncio.wrap_future(self._submit(work, None))
        while True:
            done, _ = await asyncio.wait({future}, timeout=DISCONNECT_POLL_S)
            if done:
                return future.result()
            if await http_request.is_disconnected():
                request.cancel.set()
                future.add_done_callback(_retrieve)
                raise ClientGone()

    async def stream(self, request: Request, work: Callable[[Callable[[str], None] | None], Any]
                     ) -> tuple[list[str], AsyncIterator[str | Finished]]:
        """`work(on_text)` in a worker thread, as text pieces then a `Finished` with its result. Waits for the
        first piece (or the end), so that a request that fails before any text raises here, as a plain error
        response. The iterator cancels the run when it is closed early (the client left)."""
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue = asyncio.Queue()

        def on_text(piece: str) -> None:
            if piece:
                loop.call_soon_threadsafe(pieces.put_nowait, piece)

        future = asyncio.wrap_future(self._submit(work, on_text))
        future.add_done_callback(lambda f: pieces.put_nowait(None))
        first = await pieces.get()
        if first is None:
            future.result()  # raises what the run raised
        head = [] if first is None else [first]

        async def rest() -> AsyncIterator[str | Finished]:
            try:
                if first is not None:
                    while (piece := await pieces.get()) is not None:
                        yield piece
                yield Finished(await future)
            finally:
                if not future.done():
                    request.cancel.set()
                    future.add_done_callback(_retrieve)

        return head, rest()

    def shutdown(self) -> None:
        self.stopping.set()
        self._executor.shutdown(wait=True, cancel_futures=False)


@dataclass
class Finished:
    result: Any


def _retrieve(future) -> None:
    """Take a cancelled run's outcome, so that nothing reports it as never retrieved."""
    if not future.cancelled():
        future.exception()


def log_line(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
