"""Ollama's API: POST /api/generate (Continue, Twinny, cmp-ai), POST /api/show, GET /api/tags, GET /api/version,
GET / ("Ollama is running").

`suffix` (non-empty, without `raw`) makes a request fill-in-the-middle, as Ollama's templates do; otherwise the
prompt is raw text. /api/show returns a template with `.Suffix` in it: that is Continue's only switch for using
fill-in-the-middle with an Ollama server.
"""

from __future__ import annotations

from datetime import datetime, timezone

from starlette.requests import Request as HttpRequest
from starlette.responses import PlainTextResponse, Response, StreamingResponse

from . import work
from .fields import BadRequest, Fields
from .replies import CompactJSON, ndjson
from .service import Finished, Service

VERSION = "0.6.0"  # the Ollama API version whose fields this follows
TEMPLATE = ("{{- if .Suffix }}<fim_prefix>{{ .Prompt }}<fim_suffix>{{ .Suffix }}<fim_middle>"
            "{{- else }}{{ .Prompt }}{{- end }}")
STOPS = ("<file_sep>", "<|endoftext|>", "<fim_prefix>", "<fim_suffix>", "<fim_middle>")
DEFAULTS = {"temperature": 0.8, "top_k": 40, "top_p": 0.9}


def error_body(status: int, message: str, kind: str, param: str | None = None) -> dict:
    return {"error": message}


def running() -> Response:
    return PlainTextResponse("Ollama is running")


def version() -> Response:
    return CompactJSON({"version": VERSION})


def _weights(service: Service) -> tuple[int, int]:
    """(parameters, bytes of the weights as loaded), from the config's shapes: the loaded model's `parameters()`
    miss the Linear weights that preparing it for the CPU packed into plain tensors."""
    from ..model.sizes import build_on_meta, weight_bytes

    backend = service.require_backend()
    parameters, bytes_per_dtype = weight_bytes(build_on_meta(backend.config))
    kind = "int8" if backend.loaded.quantize != "none" else str(backend.model.dtype).removeprefix("torch.")
    return parameters, bytes_per_dtype.get(kind, bytes_per_dtype["float32"])


def _details(service: Service) -> dict:
    backend = service.require_backend()
    parameters, _ = _weights(service)
    return {"parent_model": "", "format": "safetensors", "family": "starcoder2", "families": ["starcoder2"],
            "parameter_size": f"{parameters / 1e6:.1f}M" if parameters < 1e9 else f"{parameters / 1e9:.1f}B",
            "quantization_level": backend.loaded.quantize.upper() if backend.loaded.quantize != "none"
            else str(backend.model.dtype).removeprefix("torch.").upper()}


def tags(service: Service) -> Response:
    _, size = _weights(service)
    modified = datetime.fromtimestamp(service.started, timezone.utc).isoformat()
    return CompactJSON({"models": [{"name": service.model_id, "model": service.model_id, "modified_at": modified,
                                    "size": size, "digest": "", "details": _details(service)}]})


def check_model(service: Service, fields: Fields, required: bool = True) -> None:
    name = fields.string("model", required=False) or fields.string("name", required=False)
    if name is None:
        if required:
            raise BadRequest("model is required", param="model")
        return
    if name not in service.model_names and name.removesuffix(":latest") not in service.model_names:
        raise BadRequest(f"model '{name}' not found", status=404, kind="not_found_error", param="model")


async def show(http: HttpRequest, service: Service, body: dict) -> Response:
    check_model(service, Fields(body))
    backend = service.require_backend()
    config = backend.config
    parameters = "\n".join([f"num_ctx {config.max_position_embeddings}"] + [f'stop "{s}"' for s in STOPS])
    info = {"general.architecture": "starcoder2", "starcoder2.context_length": config.max_position_embeddings,
            "starcoder2.embedding_length": config.hidden_size, "starcoder2.block_count": config.num_hidden_layers,
            "starcoder2.attention.sliding_window": config.sliding_window}
    return CompactJSON({"modelfile": f"FROM {service.model_id}\nTEMPLATE \"\"\"{TEMPLATE}\"\"\"\n",
                        "parameters": parameters, "template": TEMPLATE, "details": _details(service),
                        "model_info": info, "capabilities": ["completion", "insert"]})


async def generate(http: HttpRequest, service: Service, body: dict) -> Response:
    fields = Fields(body)
    check_model(service, fields)
    options = fields.section("options")
    prompt = fields.string("prompt", "")
    suffix = fields.string("suffix", "")
    raw = fields.boolean("raw", False)
    stream = fields.boolean("stream", True)
    num_predict = options.integer("num_predict", -1, -2)
    if num_predict in (-1, -2):  # unlimited (−2: fill the context): the server's default
        max_tokens = service.default_max_tokens
    else:
        max_tokens = work.check_tokens(service, num_predict, "options.num_predict")
    sampling = work.sampling(options.number("temperature", DEFAULTS["temperature"], 0.0),
                             options.integer("top_k", DEFAULTS["top_k"], 0),
                             options.number("top_p", DEFAULTS["top_p"], 0.0, 1.0),
                             options.number("min_p", 0.0, 0.0, 1.0), options.number("repeat_penalty", 1.0, 0.0),
                             options.seed())
    stop = options.stops()
    if not prompt and not suffix:  # Ollama loads the model and answers at once
        return _done_only(service, stream)
    request = service.request(http)
    if suffix and not raw:
        run = work.infill(service, request, prompt, suffix, (), sampling, max_tokens, 1, stop)
    else:
        run = work.completion(service, request, prompt, sampling, max_tokens, 1, stop)
    if stream:
        head, rest = await service.stream(request, run)
        return StreamingResponse(_lines(service, head, rest), media_type="application/x-ndjson")
    outcome = await service.run(http, request, run)
    return CompactJSON(_line(service, outcome.texts[0], False) | _final(outcome))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _line(service: Service, text: str, more: bool) -> dict:
    return {"model": service.model_id, "created_at": _now(), "response": text, "done": not more}


def _final(outcome) -> dict:
    usage = outcome.usage
    reason = "length" if outcome.limited or outcome.finish_reasons[0] == "length" else "stop"
    ns = 1_000_000_000
    final = {"done_reason": reason, "total_duration": int((usage.prompt_s + usage.decode_s) * ns),
             "prompt_eval_count": usage.evaluated_tokens, "prompt_eval_duration": int(usage.prompt_s * ns),
             "eval_count": outcome.token_counts[0], "eval_duration": int(usage.decode_s * ns)}
    return {k: v for k, v in final.items() if v != 0 or k in ("prompt_eval_count", "eval_count")}


def _done_only(service: Service, stream: bool) -> Response:
    service.require_backend()
    body = _line(service, "", False) | {"done_reason": "load"}
    return Response(ndjson(body), media_type="application/x-ndjson") if stream else CompactJSON(body)


async def _lines(service: Service, head, rest):
    for piece in head:
        yield ndjson(_line(service, piece, True))
    async for item in rest:
        if isinstance(item, Finished):
            yield ndjson(_line(service, "", False) | _final(item.result))
        else:
            yield ndjson(_line(service, item, True))
