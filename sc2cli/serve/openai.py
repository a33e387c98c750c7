"""OpenAI's legacy completions: POST /v1/completions (and /completions), GET /v1/models (and /models).

`suffix` present (even empty) turns a request into fill-in-the-middle (`prompt` is the prefix), as Ollama does and
minuet relies on; vLLM and llama.cpp refuse it. Without it the prompt is raw: its special-token strings are parsed,
since plugins send `<fim_prefix>…<fim_middle>` themselves; or it is an array of token ids, run as they are (vLLM and
llama.cpp take those too: `sc2 --backend openai` sends its prompts so). Deterministic failures are 4xx: the official
client retries every 5xx.
"""

from __future__ import annotations

import time
import uuid

from starlette.requests import Request as HttpRequest
from starlette.responses import Response, StreamingResponse

from . import work
from .fields import BadRequest, Fields
from .replies import CompactJSON, finish_reason, sse
from .service import Finished, Service

MAX_N = 16
DEFAULT_MAX_TOKENS = 16  # OpenAI's and vLLM's


def error_body(status: int, message: str, kind: str, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


def models(service: Service) -> Response:
    backend = service.require_backend()
    meta = {"n_ctx": backend.config.max_position_embeddings, "n_ctx_train": backend.config.max_position_embeddings,
            "n_vocab": backend.config.vocab_size}
    return CompactJSON({"object": "list", "data": [{"id": service.model_id, "object": "model",
                                                    "created": int(service.started), "owned_by": "sc2",
                                                    "meta": meta}]})


def check_model(service: Service, fields: Fields, required: bool = False) -> None:
    name = fields.string("model", required=required)
    if name and name not in service.model_names:
        raise BadRequest(f"The model `{name}` does not exist (this server serves {service.model_id})", status=404,
                         kind="not_found_error", param="model")


async def completions(http: HttpRequest, service: Service, body: dict) -> Response:
    fields = Fields(body)
    check_model(service, fields)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # one prompt in an array: ["text"] or [[ids]]
    if not (isinstance(prompt, str) or _token_ids(prompt)):
        raise BadRequest('"prompt" must be a string or an array of token ids (one prompt per request)',
                         param="prompt")
    if fields.boolean("echo", False):
        raise BadRequest('"echo" is not supported', param="echo")
    n = fields.integer("n", 1, 1, MAX_N)
    if fields.has("max_tokens"):
        max_tokens = work.check_tokens(service, fields.integer("max_tokens", None, 1), "max_tokens")
    else:
        max_tokens = DEFAULT_MAX_TOKENS
    sampling = work.sampling(fields.number("temperature", 1.0, 0.0, 2.0), fields.integer("top_k", 0, 0),
                             fields.number("top_p", 1.0, 0.0, 1.0), fields.number("min_p", 0.0, 0.0, 1.0),
                             fields.number("repetition_penalty", 1.0, 0.0), fields.seed())
    logprobs = fields.integer("logprobs", None, 0, 5)
    stop = fields.stops()
    request = service.request(http)
    suffix = fields.string("suffix")
    if suffix is not None and not isinstance(prompt, str):
        raise BadRequest('"suffix" needs "prompt" as text (the prefix), not token ids', param="suffix")
    if suffix is not None:
        run = work.infill(service, request, prompt, suffix, (), sampling, max_tokens, n, stop)
    else:
        run = work.completion(service, request, prompt, sampling, max_tokens, n, stop)
    ident = f"cmpl-{uuid.uuid4().hex}"
    if fields.boolean("stream", False):
        if n > 1:
            raise BadRequest('"stream" needs "n" 1', param="stream")
        usage_chunk = fields.section("stream_options").boolean("include_usage", False)
        head, rest = await service.stream(request, run)
        return StreamingResponse(_chunks(service, ident, head, rest, usage_chunk), media_type="text/event-stream")
    outcome = await service.run(http, request, run)
    choices = [{"text": text, "index": i, "logprobs": _logprobs(service, outcome, i) if logprobs is not None else None,
                "finish_reason": finish_reason(outcome.completions[i], outcome.limited)}
               for i, text in enumerate(outcome.texts)]
    return CompactJSON(_envelope(service, ident, choices) | {"usage": _usage(outcome.usage, outcome)})


def _token_ids(prompt) -> bool:
    """An array of token ids (vLLM's and llama.cpp's `prompt: int[]`): run as they are, special ids included.
    Unknown fields (vLLM's `stop_token_ids`) are ignored: the model's own boundary tokens end a run here anyway."""
    return isinstance(prompt, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in prompt)


def _envelope(service: Service, ident: str, choices: list) -> dict:
    return {"id": ident, "object": "text_completion", "created": int(time.time()), "model": service.model_id,
            "system_fingerprint": None, "choices": choices}


def _usage(usage, outcome=None) -> dict:
    completion = sum(outcome.token_counts) if outcome is not None else usage.completion_tokens
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": completion,
            "total_tokens": usage.prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": usage.reused_tokens}}


def _logprobs(service: Service, outcome, i: int) -> dict:
    """The chosen tokens with their log-probabilities (`top_logprobs` holds only the chosen token: the engine
    does not keep the rest of each distribution)."""
    tokenizer = service.backend.tokenizer
    completion = outcome.completions[i]
    tokens = _without_prompt_text([tokenizer.decode([t]) for t in completion.tokens], len(outcome.healed))
    values = completion.token_logprobs
    offsets, at = [], 0
    for text in tokens:
        offsets.append(at)
        at += len(text)
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": [{t: v} for t, v in zip(tokens, values)],
            "text_offset": offsets}


def _without_prompt_text(pieces: list[str], healed: int) -> list[str]:
    """Each token's text, less the first `healed` characters of them all: the prompt's trailing whitespace, which
    the first token made again but the completion's text does not repeat (so that they join into the text)."""
    kept = []
    for piece in pieces:
        cut = min(healed, len(piece))
        healed -= cut
        kept.append(piece[cut:])
    return kept


async def _chunks(service: Service, ident: str, head, rest, usage_chunk: bool):
    for piece in head:
        yield sse(_envelope(service, ident, [{"text": piece, "index": 0, "logprobs": None, "finish_reason": None}]))
    async for item in rest:
        if isinstance(item, Finished):
            outcome = item.result
            reason = finish_reason(outcome.completions[0], outcome.limited)
            yield sse(_envelope(service, ident, [{"text": "", "index": 0, "logprobs": None, "finish_reason": reason}]))
            if usage_chunk:
                yield sse(_envelope(service, ident, []) | {"usage": _usage(outcome.usage, outcome)})
        else:
            yield sse(_envelope(service, ident, [{"text": item, "index": 0, "logprobs": None,
                                                  "finish_reason": None}]))
    yield "data: [DONE]\n\n"
