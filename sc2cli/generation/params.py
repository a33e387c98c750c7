"""Sampling parameters, checked once; apart from the sampling code so that building a request imports no torch."""

from __future__ import annotations

import math
from dataclasses import dataclass

MAX_SEED = 2**64 - 1  # what a torch.Generator holds


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 => greedy
    top_k: int = 0  # 0 disables
    top_p: float = 1.0  # 1 disables
    min_p: float = 0.0  # 0 disables
    repetition_penalty: float = 1.0  # 1 disables
    seed: int | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        # `not (x >= 0)` style checks also reject NaN.
        t, k, p, mp, rp = self.temperature, self.top_k, self.top_p, self.min_p, self.repetition_penalty
        if not (math.isfinite(t) and t >= 0):
            raise ValueError(f"temperature must be a finite number >= 0 (got {t})")
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (got {k})")
        if not (0 < p <= 1):
            raise ValueError(f"top_p must be in (0, 1] (got {p})")
        if not (0 <= mp <= 1):
            raise ValueError(f"min_p must be in [0, 1] (got {mp})")
        if not (math.isfinite(rp) and rp > 0):
            raise ValueError(f"repetition_penalty must be a finite number > 0 (got {rp})")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or not 0 <= self.seed <= MAX_SEED):
            raise ValueError(f"seed must be an integer from 0 to {MAX_SEED} (got {self.seed!r})")

    @property
    def greedy(self) -> bool:
        # top_k=1 keeps only the max (plus exact ties), so we take the argmax directly.
        return self.temperature == 0 or self.top_k == 1
