"""llama.cpp's server protocol: POST /infill (llama.vim, llama.vscode), POST /completion, GET /health.

Differences from llama.cpp, on purpose:
  * the prompt is StarCoder2's own repository format (`<repo_name>`/`<file_sep>` chunks, then PSM), built by
    fim.pipeline with sc2's budget, line/block filters and healing, not llama.cpp's `--- snippet ---` order;
  * /infill is greedy unless the request sets `temperature` (and, when it lists `samplers`, lists it): llama.vim
    names no temperature, and an editor wants the likeliest middle, the same one for the same text;
  * `t_max_prompt_ms` is ignored, as llama.cpp does;
  * a string `stop` is one stop string (as in OpenAI's protocol), where llama.cpp silently ignores it.
"""

from __future__ import annotations

from starlette.requests import Request as HttpRequest
from starlette.responses import Response, StreamingResponse

from ..fim.formats import ContextFile
from . import work
from .fields import BadRequest, Fields
from .replies import CompactJSON, sse
from .service import Finished, Service

DEFAULTS = {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.05}


def error_body(status: int, message: str, kind: str, param: str | None = None) -> dict:
    return {"error": {"code": status, "message": message, "type": kind}}


def health(service: Service) -> Response:
    if not service.ready:
        return CompactJSON(error_body(503, "Loading model", "unavailable_error"), status_code=503)
    return CompactJSON({"status": "ok"})


def _sampling(fields: Fields, greedy_by_default: bool):
    samplers = fields.body.get("samplers")
    names_temperature = not isinstance(samplers, (list, str)) or "temperature" in samplers
    default_t = 0.0 if greedy_by_default else DEFAULTS["temperature"]
    temperature = fields.number("temperature", default_t, 0.0)
    if greedy_by_default and not (fields.has("temperature") and names_temperature):
        temperature = 0.0
    return work.sampling(temperature, fields.integer("top_k", DEFAULTS["top_k"], 0),
                         fields.number("top_p", DEFAULTS["top_p"], 0.0, 1.0),
                         fields.number("min_p", DEFAULTS["min_p"], 0.0, 1.0),
                         fields.number("repeat_penalty", 1.0, 0.0), fields.seed())


def _max_tokens(service: Service, fields: Fields) -> tuple[int, bool]:
    """n_predict (or its aliases); −1 is the server's default. Also: whether it is a warm-up (0)."""
    for name in ("n_predict", "max_tokens", "max_completion_tokens"):
        if fields.has(name):
            value = fields.integer(name, None, -1)
            if value == -1:
                return service.default_max_tokens, False
            return work.check_tokens(service, value, name), value == 0
    return service.default_max_tokens, False


def _count(service: Service, fields: Fields) -> int:
    n = fields.integer("n_cmpl", None, 1) or fields.integer("n", 1, 1)
    if n > service.parallel and n > 1:
        raise BadRequest(f'"n_cmpl" is {n}, more than the {service.parallel} slot(s) this server runs',
                         param="n_cmpl")
    return n


def _context(fields: Fields) -> list[ContextFile]:
    chunks = fields.body.get("input_extra")
    if chunks is None:
        return []
    message = '"input_extra" must be an array of {"filename": string, "text": string}'
    if not isinstance(chunks, list):
        raise BadRequest(message, param="input_extra")
    files = []
    for chunk in chunks:
        if not isinstance(chunk, dict) or not isinstance(chunk.get("text"), str):
            raise BadRequest(message, param="input_extra")
        name = chunk.get("filename", "tmp")
        if not isinstance(name, str):
            raise BadRequest(message, param="input_extra")
        files.append(ContextFile(name or "tmp", chunk["text"]))
    return files


async def infill(http: HttpRequest, service: Service, body: dict) -> Response:
    fields = Fields(body)
    prefix = fields.string("input_prefix", required=True)
    suffix = fields.string("input_suffix", required=True)
    typed = fields.string("prompt", "")
    max_tokens, warm_up = _max_tokens(service, fields)
    n = _count(service, fields)
    request = service.request(http, fields.integer("t_max_predict_ms", None, 0), fields.integer("n_indent", 0, 0))
    request.reuse_prompt = fields.boolean("cache_prompt", True)
    mode = fields.string("mode", "auto")  # (an sc2 extension: line | block | auto)
    run = work.infill(service, request, prefix + typed, suffix, _context(fields), _sampling(fields, True),
                      max_tokens, n, fields.stops("stop"), mode)
    return await _respond(http, service, fields, request, run, warm_up, n)


async def completion(http: HttpRequest, service: Service, body: dict) -> Response:
    fields = Fields(body)
    prompt = body.get("prompt")  # (token ids run as they are: text that spells `<file_sep>` in them stays text)
    ids = isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
    if not (ids or isinstance(prompt, str)):
        raise BadRequest('"prompt" must be a string or an array of token ids', param="prompt")
    max_tokens, warm_up = _max_tokens(service, fields)
    n = _count(service, fields)
    request = service.request(http, fields.integer("t_max_predict_ms", None, 0), fields.integer("n_indent", 0, 0))
    request.reuse_prompt = fields.boolean("cache_prompt", True)
    run = work.completion(service, request, prompt, _sampling(fields, False), max_tokens, n,
                          fields.stops("stop"))
    return await _respond(http, service, fields, request, run, warm_up, n)


async def _respond(http, service, fields, request, run, warm_up: bool, n: int) -> Response:
    if fields.boolean("stream", False):
        if n > 1:
            raise BadRequest('"stream" needs "n_cmpl" 1', param="stream")
        head, rest = await service.stream(request, run)
        return StreamingResponse(_events(service, head, rest, warm_up), media_type="text/event-stream")
    outcome = await service.run(http, request, run)
    results = [_final(service, outcome, i, warm_up, fields) for i in range(len(outcome.texts))]
    return CompactJSON(results[0] if n == 1 else results)


async def _events(service, head, rest, warm_up: bool):
    predicted = 0
    for piece in head:
        predicted += 1
        yield sse({"index": 0, "content": piece, "tokens": [], "stop": False, "id_slot": 0,
                   "tokens_predicted": predicted})
    async for item in rest:
        if isinstance(item, Finished):
            final = _final(service, item.result, 0, warm_up, Fields({}))
            final["content"] = ""
            yield sse(final)
        else:
            predicted += 1
            yield sse({"index": 0, "content": item, "tokens": [], "stop": False, "id_slot": 0,
                       "tokens_predicted": predicted})


def _final(service: Service, outcome, i: int, warm_up: bool, fields: Fields) -> dict:
    usage = outcome.usage
    text = "" if warm_up else outcome.texts[i]
    predicted = 0 if warm_up else outcome.token_counts[i]
    limited = outcome.limited or outcome.finish_reasons[i] == "length"
    prompt_ms, predicted_ms = usage.prompt_s * 1000, usage.decode_s * 1000
    backend = service.backend
    body = {
        "index": i, "content": text, "tokens": [], "id_slot": 0, "stop": True, "model": service.model_id,
        "tokens_predicted": predicted, "tokens_evaluated": usage.prompt_tokens,
        "generation_settings": {"n_ctx": backend.config.max_position_embeddings, "seed": outcome.seed,
                                "n_predict": service.default_max_tokens, "model": service.model_id},
        "prompt": outcome.prompt_text, "has_new_line": "\n" in text, "truncated": False,
        "stop_type": "limit" if limited else "eos", "stopping_word": "",
        "tokens_cached": usage.prompt_tokens + usage.completion_tokens,
        "timings": {
            "cache_n": usage.reused_tokens, "prompt_n": usage.evaluated_tokens, "prompt_ms": prompt_ms,
            "prompt_per_token_ms": prompt_ms / max(1, usage.evaluated_tokens),
            "prompt_per_second": 1000 * usage.evaluated_tokens / prompt_ms if prompt_ms else 0.0,
            "predicted_n": predicted, "predicted_ms": predicted_ms,
            "predicted_per_token_ms": predicted_ms / max(1, predicted),
            "predicted_per_second": 1000 * predicted / predicted_ms if predicted_ms else 0.0,
        },
    }
    wanted = fields.body.get("response_fields")
    if isinstance(wanted, list) and wanted:
        return _pick(body, wanted)
    return body


def _pick(body: dict, paths: list) -> dict:
    """llama.cpp's `response_fields`: an object whose keys are the paths asked for ("timings/prompt_n"), of those
    that exist."""
    picked = {}
    for path in paths:
        if not isinstance(path, str) or not path:
            continue
        value = body
        for part in path.split("/"):
            if not isinstance(value, dict) or part not in value:
                break
            value = value[part]
        else:
            picked[path] = value
    return picked
