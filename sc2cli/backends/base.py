"""The backend seam: what the completion and infill pipelines ask of a model, and what they get back."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ..generation.params import SamplingParams

if TYPE_CHECKING:  # (a request is built before torch is imported: a dry run never imports it)
    from ..generation.results import Completion, Step
    from ..generation.stopping import TextFilter
    from ..tokenizer import Tokenizer


@dataclass(frozen=True)
class GenerationJob:
    """How to generate: sampling, when to stop, and the speed options that never change the tokens."""

    sampling: SamplingParams = SamplingParams()
    max_new_tokens: int = 128
    num_samples: int = 1
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False  # also generate past end-of-text and file boundaries
    # Per row, a filter that sees the text after stop strings and may hold, rewrite or end it (line/block scope).
    text_filter: Callable[[int], TextFilter] | None = None
    heal: str = ""  # whitespace cut from the end of the prompt that every row must begin with
    prompt_lookup: bool | None = None  # None: where it applies
    decode: str = "auto"
    # Asked between steps: True ends the run at once with `Cancelled` (a client that left). Not a way to end a
    # completion with its text so far: that is a text filter's job (see stopping.py).
    cancelled: Callable[[], bool] | None = None
    reuse_prompt: bool = True  # False: evaluate the whole prompt even where a slot holds its start (benchmarks)


class Cancelled(Exception):
    """A run ended because its job's `cancelled()` said so; nothing it made is returned."""


@dataclass
class GenerationRun:
    completions: list[Completion]
    seed: int
    first_token_s: float
    decode_s: float
    reused_tokens: int = 0  # prompt tokens whose keys and values were kept from the run before (not evaluated)

    @property
    def completion_tokens(self) -> int:
        return sum(len(c.tokens) for c in self.completions)

    @property
    def tokens_per_s(self) -> float | None:
        """Decode speed after each row's first token."""
        after_first = max(0, self.completion_tokens - len(self.completions))
        return after_first / self.decode_s if self.decode_s > 0 else None


class Backend(Protocol):
    name: str  # the model as the user named it
    config: object  # what sizes a prompt: max_position_embeddings, sliding_window
    tokenizer: Tokenizer

    def check(self, job: GenerationJob, rows: int) -> GenerationJob:
        """The job with its options resolved for this backend; InputError when it cannot run here."""
        ...

    def generate(self, prompts: Sequence[Sequence[int]], job: GenerationJob,
                 on_step: Callable[[Step], None] | None = None) -> GenerationRun:
        ...
