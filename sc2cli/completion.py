"""The completion pipeline: a prompt in, completions out, with the prompt fitted to the context, its trailing
whitespace healed and each completion ended at its scope.

    result = complete(CompletionRequest("def fibonacci(n):"), backend)
    result.completions[0].text
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from .backends.base import Backend, GenerationJob, GenerationRun
from .errors import InputError
from .fim.scope import IndentStyle, MiddleFilter
from .generation.healing import split_trailing_whitespace
from .generation.stopping import chain_filters

MODES = ("auto", "free", "block", "line")
STYLE_SAMPLE_CHARS = 4000  # the indentation style is read from the end of the prompt


@dataclass(frozen=True)
class CompletionRequest:
    prompt: str
    # Where a completion ends: block (when the code leaves the block the prompt's last line opens or sits in),
    # line (at the end of the line), free (end-of-text, a stop or the limit); auto: block after `def f():`, else free.
    mode: str = "auto"
    truncate: bool = True  # cut a prompt that does not fit from the left (else refuse it)
    job: GenerationJob = GenerationJob()


@dataclass
class CompletionResult:
    run: GenerationRun
    prompt_tokens: int
    tokens_cut: int  # prompt tokens cut from the left to fit the context
    mode: str  # the mode used (auto resolved)

    @property
    def completions(self):
        return self.run.completions

    @property
    def text(self) -> str:
        """The first completion's text."""
        return self.run.completions[0].text


@dataclass
class CompletionPlan:
    ids: list[int]  # the prompt's tokens, fitted to the context
    tokens_cut: int  # cut from the left to fit
    mode: str  # auto resolved
    job: GenerationJob  # with the scope filter and the healing


def plan(request: CompletionRequest, tokenizer, config) -> CompletionPlan:
    """The prompt's tokens and the generation job: everything before the model runs."""
    if request.mode not in MODES:
        raise InputError(f"the mode must be auto, free, block or line (got {request.mode!r})", field="mode")
    body, owed = split_trailing_whitespace(request.prompt)  # healed: generated again, not repeated (healing.py)
    ids = tokenizer.encode(body)
    kept = fit_prompt(ids, config.max_position_embeddings, request.job.max_new_tokens, request.truncate)
    mode = resolve_mode(request.mode, request.prompt)
    # The request's own filter (a server's time limit) sees the text after the scope's.
    job = replace(request.job, text_filter=chain_filters(scope_filter(mode, request.prompt), request.job.text_filter),
                  heal=owed)
    return CompletionPlan(kept, len(ids) - len(kept), mode, job)


def complete(request: CompletionRequest, backend: Backend, on_text: Callable[[str], None] | None = None,
             planned: CompletionPlan | None = None) -> CompletionResult:
    """Complete `request.prompt` on `backend`; `on_text` sees row 0's text as it is made."""
    planned = planned or plan(request, backend.tokenizer, backend.config)
    on_step = (lambda step: on_text(step.text) if step.row == 0 else None) if on_text else None
    run = backend.generate([planned.ids], planned.job, on_step=on_step)
    return CompletionResult(run, len(planned.ids), planned.tokens_cut, planned.mode)


def fit_prompt(ids: list[int], context: int, max_new_tokens: int, truncate: bool) -> list[int]:
    """The prompt within the context with room for its completion (at least half the context): cut from the left,
    or refused when `truncate` is off."""
    room = context - min(max_new_tokens, context // 2)
    if len(ids) <= room:
        return ids
    if not truncate:
        raise InputError(f"the prompt has {len(ids)} tokens; with {max_new_tokens} new tokens only {room} fit the "
                         f"context of {context}", field="truncate")
    return ids[-room:]


def resolve_mode(mode: str, prompt: str) -> str:
    if mode != "auto":
        return mode
    last = prompt.rstrip().rsplit("\n", 1)[-1]
    return "block" if last.endswith((":", "{")) else "free"


def scope_filter(mode: str, prompt: str):
    """The per-row text filter that ends a completion at its scope (None for free text): the line/block rules of
    infilling, with the prompt as the code before the cursor and nothing after it."""
    mode = resolve_mode(mode, prompt)
    if mode == "free":
        return None
    style = IndentStyle.detect(prompt[-STYLE_SAMPLE_CHARS:])
    return lambda row: MiddleFilter(mode, prompt, "", style)
