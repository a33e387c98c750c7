"""How the engine runs one decode step (one new token per row): eagerly, or as a static step that is captured
once as a CUDA graph (or compiled) and replayed for every token.

A decode step of a small batch is hundreds of tiny kernels; on a GPU, launching them from Python costs more
than running them. The static step keeps every shape and address fixed (the new column's index is a device
tensor, the queries attend over the whole ring with a mask computed on the device: see
`KVCache._begin_static`), so one capture replays the whole step with a single launch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..model.cache import KVCache
from ..model.linear import decode_step

DECODE_MODES = ("auto", "eager", "static", "cuda-graph", "compile")
# Rope variants whose frequencies never depend on the positions seen (dynamic and longrope rescale on the host).
STATIC_ROPE_TYPES = ("default", "linear", "yarn", "llama3")
GRAPH_MODES = ("cuda-graph", "compile")  # replayed from a captured graph


class EagerStep:
    def __init__(self, model, cache: KVCache) -> None:
        self.model, self.cache = model, cache

    def __call__(self, tokens: Tensor, positions: Tensor) -> Tensor:
        """tokens, positions: (B,) -> next-token logits (B, V)."""
        with decode_step():
            return self.model(tokens[:, None], position_ids=positions[:, None], cache=self.cache).logits[:, -1]


class StaticStep:
    """The decode step with device-side bookkeeping; `mode` "cuda-graph" captures it as a CUDA graph, "compile"
    compiles it with torch.compile first and captures the compiled step."""

    def __init__(self, model, cache: KVCache, mode: str = "static") -> None:
        self.model, self.cache = model, cache
        device, rows = cache.keys.device, cache.batch_size
        self.tokens = torch.zeros((rows, 1), dtype=torch.long, device=device)
        self.positions = torch.zeros((rows, 1), dtype=torch.long, device=device)
        self.column = torch.zeros((1,), dtype=torch.long, device=device)
        self.graph = None
        self.logits: Tensor | None = None
        self.run = torch.compile(self._forward, dynamic=False) if mode == "compile" else self._forward
        if mode in GRAPH_MODES:
            self._capture()

    def _forward(self) -> Tensor:
        self.cache.static_column = self.column
        try:
            return self.model(self.tokens, position_ids=self.positions, cache=self.cache).logits[:, -1]
        finally:
            self.cache.static_column = None

    def _capture(self) -> None:
        cache = self.cache
        # Warm-up runs (kernel selection, lazy init) write a dummy column; the bookkeeping is put back after.
        saved = cache.slot_columns.clone(), cache.slot_valid.clone()
        self.column.fill_(cache.seen)
        side = torch.cuda.Stream(device=self.column.device)
        side.wait_stream(torch.cuda.current_stream(self.column.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self.run()  # (compiles, in compile mode)
        torch.cuda.current_stream(self.column.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self.run()
        cache.slot_columns.copy_(saved[0])
        cache.slot_valid.copy_(saved[1])

    def __call__(self, tokens: Tensor, positions: Tensor) -> Tensor:
        cache = self.cache
        if cache.seen >= cache.max_length:
            raise ValueError(f"KV cache holds {cache.max_length} positions; {cache.seen + 1} requested")
        self.tokens.copy_(tokens[:, None])
        self.positions.copy_(positions[:, None])
        self.column.fill_(cache.seen)
        if self.graph is not None:
            self.graph.replay()
            logits = self.logits
        else:
            with decode_step():  # (outside any compiled or captured code: a flag for the CPU's bf16 kernels)
                logits = self._forward()
        cache.seen += 1
        return logits


def resolve_mode(mode: str, model) -> str:
    """`auto`: where the rope allows a static step, a CUDA graph on CUDA and the static step on CPU (attending
    over the whole contiguous ring measured a little faster there than over a slice of it); else eager."""
    if mode not in DECODE_MODES:
        raise ValueError(f"decode mode must be one of {', '.join(DECODE_MODES)}, not {mode!r}")
    static_ok = model.config.rope_type in STATIC_ROPE_TYPES
    if mode == "auto":
        if not static_ok or model.device.type not in ("cuda", "cpu"):
            return "eager"
        return "cuda-graph" if model.device.type == "cuda" else "static"
    if mode != "eager" and not static_ok:
        raise ValueError(f"decode mode {mode} needs fixed rope frequencies; rope type "
                         f"{model.config.rope_type!r} rescales them with the positions seen (use eager)")
    if mode in GRAPH_MODES and model.device.type != "cuda":
        # On CPU the compiled step was no faster than the eager one on prepacked weights (which inductor cannot
        # take), so compile is offered where it pays: fused into the CUDA graph.
        raise ValueError(f"decode mode {mode} needs a CUDA device (on CPU use auto)")
    return mode


def make_step(model, cache: KVCache, mode: str):
    """The step runner for a mode `resolve_mode` returned."""
    return EagerStep(model, cache) if mode == "eager" else StaticStep(model, cache, mode)
