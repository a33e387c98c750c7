"""A model that emits a fixed token script: for testing what surrounds the model (engine, CLI, infill)."""

from __future__ import annotations

import torch


class ScriptedModel(torch.nn.Module):
    """Emits a fixed token script, one token per decode step (nanochat-style mock)."""

    def __init__(self, config, script: list[int]):
        super().__init__()
        self.config = config
        self.script = script
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.prompt_length = None

    def forward(self, ids, attention_mask=None, position_ids=None, cache=None, logits_to_keep=0, tentative=False,
                **_):
        # Keep the cache's bookkeeping exactly as the real model does (a static step, a tentative draft check).
        start, count = cache.seen, ids.shape[1]
        cache.begin(count, attention_mask, torch.float32, tentative=tentative)
        cache.end()
        if self.prompt_length is None:  # the first call is the (single-chunk) prefill
            self.prompt_length = start + count
        # The logits after column c say script[c + 1 - prompt_length]: one scripted token per generated position.
        logits = torch.full((ids.shape[0], count, self.config.vocab_size), -10.0)
        for j in range(count):
            index = min(max(start + j + 1 - self.prompt_length, 0), len(self.script) - 1)
            logits[:, j, self.script[index]] = 10.0
        if logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        return type("Out", (), {"logits": logits})()

    @property
    def device(self):
        return torch.device("cpu")

    @property
    def dtype(self):
        return torch.float32
