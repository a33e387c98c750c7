"""What generation yields: steps as they happen, completions at the end. Torch-free, so that a client of a server
builds the same objects without the engine."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Step:
    """One generated token of one row. `text` is the new, final text (stop strings and special tokens removed)."""

    row: int
    token: int
    text: str
    logprob: float
    finish_reason: str | None = None  # "stop" or "length" on the row's last step
    raw: str = ""  # the token's own text as decoded, before healing, stop strings and filters


@dataclass
class Completion:
    row: int
    text: str = ""
    tokens: list[int] = field(default_factory=list)
    logprob: float = 0.0  # sum over generated tokens (stop token included)
    token_logprobs: list[float] = field(default_factory=list)  # each kept token's (stop token not included)
    finish_reason: str | None = None

    @property
    def mean_logprob(self) -> float:
        return self.logprob / max(1, len(self.tokens))
