"""Prompt reuse: a KV cache kept from one run to the next, so a prompt that starts like the last one (an editor
asking again after one more keystroke) evaluates only what changed.

A slot holds the tokens its cache holds (the last prompt and what was generated after it). A new prompt keeps the
longest common start, as long as the cache still holds the window of columns before it: the ring keeps the window
plus `reserve` columns, so up to `reserve` tokens past the common start may be given up. Beyond that the slot
starts again from the first token. Reuse never changes a result: the cached keys and values are exactly those a
cold run computes for the same tokens at the same positions.

Memory: (window + reserve) columns per layer instead of the window (with a 4k window and the default reserve,
1.25 times a one-shot run's cache); a model without a window keeps its whole context, as a one-shot run does.
"""

from __future__ import annotations

from ..model.cache import KVCache

DEFAULT_RESERVE = 1024


class Slot:
    def __init__(self, model, reserve: int = DEFAULT_RESERVE) -> None:
        config = model.config
        self.cache = KVCache(config, 1, config.max_position_embeddings, dtype=model.dtype, device=model.device,
                             reserve=reserve)
        self.tokens: list[int] = []  # what the cache holds, column by column
        self.reused = 0  # tokens the last prompt did not evaluate again
        self._steps: dict[str, object] = {}  # decode mode -> its step over this cache (see decode.py)

    def step(self, mode: str, build):
        """The decode step of `mode` over this slot's cache, built once: a CUDA graph is captured for the first
        run and replayed by every later one (the cache's tensors stay where they are)."""
        if mode not in self._steps:
            self._steps[mode] = build()
        return self._steps[mode]

    def reuse(self, prompt) -> int:
        """Prepare the cache for `prompt`: the number of its first tokens already in the cache (at least one
        token is always evaluated, for the logits of the next)."""
        common = self.common_prefix(prompt)
        if common == 0 or not self.cache.keep(common):
            self.cache.reset()
            common = 0
        self.reused = common
        return common

    def common_prefix(self, prompt) -> int:
        """How many of `prompt`'s first tokens the cache holds, leaving at least its last one to evaluate."""
        common = 0
        limit = min(len(prompt) - 1, len(self.tokens))
        while common < limit and self.tokens[common] == prompt[common]:
            common += 1
        return common

    def forget(self) -> None:
        """Start the next run from its first token."""
        self.cache.reset()
        self.tokens = []

    def remember(self, tokens) -> None:
        """After a run: the tokens fed to the model in order (prompt and generated), of which the cache holds the
        first `cache.seen`. A run broken inside a step leaves the cache unknown: start again next time."""
        if self.cache.open_step:
            self.cache.reset()
            self.tokens = []
        else:
            self.tokens = list(tokens[: self.cache.seen])
