"""The runs every protocol asks for, as calls of the same pipelines the commands use: an infill (prefix, suffix,
context files) or a completion (a raw prompt, whose special-token strings such as `<fim_prefix>` are parsed, or
token ids)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..completion import CompletionPlan, CompletionRequest, complete, fit_prompt
from ..completion import plan as plan_completion
from ..errors import InputError
from ..fim.formats import ContextFile
from ..fim.pipeline import InfillRequest, fill, plan
from ..generation.params import SamplingParams
from .fields import BadRequest
from .replies import Usage
from .service import Request, Service


def sampling(temperature: float, top_k: int, top_p: float, min_p: float, repetition_penalty: float,
             seed: int | None) -> SamplingParams:
    try:
        return SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                              repetition_penalty=repetition_penalty, seed=seed)
    except ValueError as err:
        raise BadRequest(str(err), param=str(err).split(" ", 1)[0]) from None


@dataclass
class Outcome:
    """A finished run as the protocols render it: texts best first, with their finish reasons and numbers."""

    texts: list[str]
    finish_reasons: list[str | None]
    token_counts: list[int]
    usage: Usage
    seed: int
    limited: bool  # a time limit, n_indent or the shutdown ended it (llama.cpp's stop_type "limit")
    prompt_text: str
    completions: list  # the engine's Completions, best first (tokens, logprobs)
    healed: str = ""  # the prompt's trailing whitespace, generated again: the tokens' text begins with it


def check_tokens(service: Service, max_tokens: int, field: str) -> int:
    """A number of tokens to generate within the model's context (the warm-up's 0 generates one, not shown)."""
    context = service.require_backend().config.max_position_embeddings
    if max_tokens > context:
        raise BadRequest(f'"{field}" is {max_tokens}, more than the model\'s context of {context} tokens',
                         param=field)
    return max(1, max_tokens)


def infill(service: Service, request: Request, prefix: str, suffix: str, context: Sequence[ContextFile],
           sampling_params: SamplingParams, max_tokens: int, n: int = 1, stop: tuple[str, ...] = (),
           mode: str = "auto", path: str | None = None) -> Callable:
    backend = service.require_backend()
    job = request.job(sampling_params, max_tokens, n, stop)
    infill_request = InfillRequest.from_text(prefix, suffix, path=path, mode=mode, context=tuple(context), job=job)

    def work(on_text):
        with input_errors():
            planned = plan(infill_request, backend.tokenizer, backend.config)
            result = fill(infill_request, backend, on_text=on_text, planned=planned)
        by_row = {c.row: c for c in result.run.completions}
        ranked = [by_row[c.index] for c in result.candidates]
        request.usage = Usage.of(result.run, len(planned.prompt.ids))
        return Outcome([c.middle for c in result.candidates], [c.finish_reason for c in result.candidates],
                       [len(c.tokens) for c in result.candidates], request.usage, result.run.seed,
                       request.limits.fired, planned.prompt.text, ranked)

    return work


def completion(service: Service, request: Request, prompt: str | Sequence[int], sampling_params: SamplingParams,
               max_tokens: int, n: int = 1, stop: tuple[str, ...] = (), mode: str = "free") -> Callable:
    """A raw prompt: text (its special-token strings parsed, its trailing whitespace healed) or token ids, run as
    they are (nothing decoded and encoded again: a client that built its prompt with the model's tokenizer, such as
    `sc2 --backend openai`, keeps file text that spells `<file_sep>` as text)."""
    backend = service.require_backend()
    if not prompt:
        raise BadRequest('"prompt" is empty: give some text to continue', param="prompt")
    ids = None if isinstance(prompt, str) else _checked_ids(prompt, backend.config.vocab_size)
    job = request.job(sampling_params, max_tokens, n, stop)
    completion_request = CompletionRequest(prompt if ids is None else "", mode=mode, truncate=False, job=job)

    def work(on_text):
        with input_errors():
            if ids is None:
                planned = plan_completion(completion_request, backend.tokenizer, backend.config)
            else:
                fitted = fit_prompt(ids, backend.config.max_position_embeddings, max_tokens, truncate=False)
                planned = CompletionPlan(fitted, 0, "free", job)
            result = complete(completion_request, backend, on_text=_counted(request, on_text, len(planned.ids)),
                              planned=planned)
        completions = result.run.completions
        request.usage = Usage.of(result.run, result.prompt_tokens)
        text = prompt if ids is None else backend.tokenizer.decode(ids)
        return Outcome([c.text for c in completions], [c.finish_reason for c in completions],
                       [len(c.tokens) for c in completions], request.usage, result.run.seed, request.limits.fired,
                       text, completions, planned.job.heal)

    return work


def _checked_ids(ids: Sequence[int], vocab_size: int) -> list[int]:
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < vocab_size:
            raise BadRequest(f'"prompt" holds {i!r}, not a token id of this model (0 to {vocab_size - 1})',
                             param="prompt")
    return list(ids)


def _counted(request: Request, on_text: Callable[[str], None] | None, prompt_tokens: int):
    """`on_text` that also keeps the request's numbers up to date (one call per token of the streamed row), so that
    the log line of a stream its client closed early says how many tokens were made."""
    if on_text is None:
        return None
    made = 0

    def counted(piece: str) -> None:
        nonlocal made
        made += 1
        request.usage = Usage(prompt_tokens, 0, made, 0.0, 0.0)
        on_text(piece)

    return counted


class input_errors:
    """A core InputError as a 400 naming the field (a prompt beyond the context: exceed_context_size_error)."""

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb):
        if isinstance(err, InputError):
            exceeds = err.field in ("truncate", "max_new_tokens")
            raise BadRequest(str(err), kind="exceed_context_size_error" if exceeds else "invalid_request_error",
                             param=err.field) from None
        return False
