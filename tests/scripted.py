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

    def forward(self, ids, attention_mask=None, position_ids=None, cache=None, logits_to_keep=0, **_):
        cache.seen += ids.shape[1]
        if self.prompt_length is None:  # the first call is the (single-chunk) prefill
            self.prompt_length = cache.seen
        index = min(cache.seen - self.prompt_length, len(self.script) - 1)
        logits = torch.full((ids.shape[0], 1, self.config.vocab_size), -10.0)
        logits[:, :, self.script[index]] = 10.0
        return type("Out", (), {"logits": logits})()

    @property
    def device(self):
        return torch.device("cpu")

    @property
    def dtype(self):
        return torch.float32
