"""The infill pipeline: one call from a request (a file and a cursor, or an editor's prefix and suffix) to ranked
candidates. `plan` builds the prompt without a model (a dry run); `fill` runs it on a backend.

    request = InfillRequest.from_file(data, line=42, path="app.py")      # or InfillRequest.from_text(prefix, suffix)
    result = fill(request, backend)
    result.best.middle, result.best.filled                                # the text to insert, the whole new file
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import PurePath

from ..backends.base import Backend, GenerationJob, GenerationRun
from ..errors import InputError
from ..generation.stopping import chain_filters
from ..tokenizer import Tokenizer
from .formats import ContextFile
from .prompt import Budget, Prompt, build_prompt, token_budget
from .scope import IndentStyle, MiddleFilter, choose_mode
from .source import Cursor, SourceText, cursor_at, cursor_at_marker, filled_bytes, parses, split_at

MODES = ("line", "block", "auto")
PYTHON_SUFFIXES = (".py", ".pyi")
MIN_PROMPT_TOKENS = 8


@dataclass(frozen=True)
class InfillRequest:
    source: SourceText  # the file without any cursor marker
    cursor: Cursor
    path: str | None = None  # the file's name: shown to the model with repository context; decides Python checks
    mode: str = "auto"  # line | block | auto (line when there is code right of the cursor)
    context: tuple[ContextFile, ...] = ()  # in prompt order (see fim.context)
    repo_name: str | None = None
    check_syntax: bool | None = None  # rank candidates whose filled file parses first; None: for Python files
    job: GenerationJob = GenerationJob()

    @classmethod
    def from_file(cls, data: bytes, line: int | None = None, column: int | None = None, marker: str | None = None,
                  name: str = "the file", **options) -> InfillRequest:
        """A request at a cursor in a file's bytes: at `line` (and `column`), or where `marker` is (removed)."""
        if (line is None) == (marker is None):
            raise InputError("give the cursor as a line (and column) or as a marker, one of them", field="line")
        source = SourceText.from_bytes(data, name=name)
        if marker is not None:
            source, cursor = cursor_at_marker(source, marker)
        else:
            cursor = cursor_at(source, line, column)
        return cls(source, cursor, **options)

    @classmethod
    def from_text(cls, prefix: str, suffix: str, **options) -> InfillRequest:
        """A request from an editor: the text before and after the cursor, no file on disk."""
        data = (prefix + suffix).encode("utf-8", errors="surrogateescape")
        line = prefix.count("\n") + 1
        cursor = Cursor(line, len(prefix) - (prefix.rfind("\n") + 1) + 1, len(prefix))
        return cls(SourceText(data, "\r\n" in prefix + suffix), cursor, **options)

    @property
    def python(self) -> bool:
        if self.check_syntax is not None:
            return self.check_syntax
        return self.path is not None and PurePath(self.path).suffix in PYTHON_SUFFIXES


@dataclass
class InfillPlan:
    prompt: Prompt
    mode: str  # line | block
    style: IndentStyle
    budget: Budget


@dataclass
class Candidate:
    index: int
    middle: str
    filled: bytes  # the whole file with the middle in place, byte-exact outside it
    mean_logprob: float
    finish_reason: str | None
    parses: bool | None  # None when not checked
    tokens: list[int] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"index": self.index, "text": self.middle, "mean_logprob": round(self.mean_logprob, 6),
                "finish_reason": self.finish_reason, "parses": self.parses}


@dataclass
class InfillResult:
    request: InfillRequest
    plan: InfillPlan
    candidates: list[Candidate]  # best first
    run: GenerationRun
    source_parses: bool | None  # whether the file parsed before the fill (None when not checked)

    @property
    def best(self) -> Candidate:
        return self.candidates[0]

    @property
    def breaks_the_file(self) -> bool:
        """The file parsed before, and no candidate's filled file does."""
        return bool(self.source_parses) and not any(c.parses for c in self.candidates)

    @property
    def text(self) -> str:
        """The best candidate's middle."""
        return self.best.middle


def plan(request: InfillRequest, tokenizer: Tokenizer, config) -> InfillPlan:
    """The prompt, the mode and the indentation style of a request: everything before the model runs."""
    if request.mode not in MODES:
        raise InputError(f"the mode must be line, block or auto (got {request.mode!r})", field="mode")
    prefix, suffix = split_at(request.source, request.cursor)
    max_new = request.job.max_new_tokens
    budget = token_budget(config, max_new)
    if budget.total < MIN_PROMPT_TOKENS:
        raise InputError(f"generating {max_new} tokens leaves no room for the prompt in a "
                         f"{config.max_position_embeddings}-token context", field="max_new_tokens")
    prompt = build_prompt(tokenizer, prefix, suffix, budget, request.path, request.context, request.repo_name)
    return InfillPlan(prompt, choose_mode(request.mode, suffix), IndentStyle.detect(prefix + suffix), budget)


def fill(request: InfillRequest, backend: Backend, on_text: Callable[[str], None] | None = None,
         planned: InfillPlan | None = None) -> InfillResult:
    """Run the request on `backend` and rank the candidates; `on_text` sees the best-first row's text as it is
    made (row 0: with one sample that is the result; the streamed text is exactly the final middle)."""
    planned = planned or plan(request, backend.tokenizer, backend.config)
    prompt = planned.prompt
    middle = lambda row: MiddleFilter(planned.mode, prompt.prefix, prompt.suffix, planned.style)  # noqa: E731
    job = replace(request.job, text_filter=chain_filters(middle, request.job.text_filter))
    on_step = (lambda step: on_text(step.text) if step.row == 0 else None) if on_text else None
    run = backend.generate([prompt.ids], job, on_step=on_step)
    return finish(request, planned, run)


def finish(request: InfillRequest, planned: InfillPlan, run: GenerationRun) -> InfillResult:
    """The result of a run of the request's plan: its completions ranked into candidates (also for a run made
    elsewhere, by a server)."""
    python = request.python
    candidates = rank(request.source, request.cursor, run.completions, python)
    return InfillResult(request, planned, candidates, run, parses(request.source.data) if python else None)


def rank(source: SourceText, cursor: Cursor, completions: Sequence, python: bool) -> list[Candidate]:
    """Best first: (for Python) candidates whose filled file parses, then by mean log-probability."""
    candidates = []
    for c in completions:
        filled = filled_bytes(source, cursor, c.text)
        candidates.append(Candidate(c.row, c.text, filled, c.mean_logprob, c.finish_reason,
                                    parses(filled) if python else None, list(c.tokens)))
    return sorted(candidates, key=lambda c: (not c.parses if python else False, -c.mean_logprob))
