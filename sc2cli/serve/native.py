"""sc2's own routes, for `sc2 complete|infill --server`: the command's request as it is (every option), and the
pipeline's result as it is (every candidate with its tokens and log-probabilities, the plan, the numbers), so that
the command prints and writes exactly what it would locally.

POST /sc2/v1/infill   {"prefix", "suffix", "path", "mode", "context": [{"path", "text"}], "repo_name",
                       "check_syntax", "job": {...}, "stream", "dry_run"}
POST /sc2/v1/complete {"prompt", "mode", "truncate", "job": {...}, "stream"}
A stream is server-sent events: {"text": piece}… then {"result": {...}}. Errors: llama.cpp's shape, with the
request field at fault in "param".
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request as HttpRequest
from starlette.responses import Response, StreamingResponse

from ..backends.base import GenerationJob
from ..completion import CompletionRequest
from ..completion import complete as run_completion
from ..completion import plan as plan_completion
from ..fim.formats import ContextFile
from ..fim.pipeline import InfillRequest, fill
from ..fim.pipeline import plan as plan_infill
from . import work
from .fields import BadRequest, Fields
from .replies import CompactJSON, Usage, sse
from .service import Finished, Request, Service


def error_body(status: int, message: str, kind: str, param: str | None = None) -> dict:
    """llama.cpp's error shape, with the request field at fault (the command words it as its flag)."""
    return {"error": {"code": status, "message": message, "type": kind, "param": param}}


def _job(service: Service, request: Request, fields: Fields) -> GenerationJob:
    job = fields.section("job")
    max_new = job.integer("max_new_tokens", 128, 1)  # (beyond the context: the pipelines say so, as locally)
    sampling = work.sampling(job.number("temperature", 0.0, 0.0), job.integer("top_k", 0, 0),
                             job.number("top_p", 1.0, 0.0, 1.0), job.number("min_p", 0.0, 0.0, 1.0),
                             job.number("repetition_penalty", 1.0, 0.0), job.seed())
    n = job.integer("num_samples", 1, 1, 64)
    lookup = job.body.get("prompt_lookup")
    if lookup is not None and not isinstance(lookup, bool):
        raise BadRequest('"job.prompt_lookup" must be true, false or null', param="prompt_lookup")
    base = request.job(sampling, max_new, n, job.stops("stop", string_alone=False))
    return GenerationJob(sampling=base.sampling, max_new_tokens=max_new, num_samples=n, stop=base.stop,
                         ignore_eos=job.boolean("ignore_eos", False), text_filter=base.text_filter,
                         prompt_lookup=lookup, decode=job.string("decode", "auto"), cancelled=base.cancelled)


def _completions(completions, limited: bool) -> list[dict]:
    """`limited`: the server's time limit or its shutdown ended the run (a "length" end, not the model's)."""
    return [{"row": c.row, "text": c.text, "tokens": c.tokens, "logprob": c.logprob,
             "token_logprobs": c.token_logprobs, "finish_reason": "length" if limited else c.finish_reason}
            for c in completions]


def _run(run) -> dict:
    return {"seed": run.seed, "first_token_s": run.first_token_s, "decode_s": run.decode_s,
            "reused_tokens": run.reused_tokens}


def _plan(planned) -> dict:
    prompt = planned.prompt
    return {"mode": planned.mode, "budget_total": planned.budget.total, "ids": prompt.ids, "text": prompt.text,
            "prefix": prompt.prefix, "suffix": prompt.suffix, "truncation": prompt.truncation.to_json()}


def _header(service: Service) -> dict:
    backend = service.require_backend()
    return {"model": backend.name, "load_s": backend.loaded.load_seconds,
            "context": backend.config.max_position_embeddings}


async def infill(http: HttpRequest, service: Service, body: dict) -> Response:
    fields = Fields(body)
    backend = service.require_backend()
    request = service.request(http)
    context = []
    items = body.get("context") or []
    message = '"context" must be an array of {"path": string, "text": string}'
    if not isinstance(items, list):
        raise BadRequest(message, param="context")
    for item in items:
        if not isinstance(item, dict) or not all(isinstance(item.get(k), str) for k in ("path", "text")):
            raise BadRequest(message, param="context")
        context.append(ContextFile(item["path"], item["text"]))
    check = body.get("check_syntax")
    infill_request = InfillRequest.from_text(
        fields.string("prefix", required=True), fields.string("suffix", required=True), path=fields.string("path"),
        mode=fields.string("mode", "auto"), context=tuple(context), repo_name=fields.string("repo_name"),
        check_syntax=check if isinstance(check, bool) else None, job=_job(service, request, fields))

    def planned():
        with work.input_errors():
            return plan_infill(infill_request, backend.tokenizer, backend.config)

    if fields.boolean("dry_run", False):
        return CompactJSON(_header(service) | {"plan": _plan(await asyncio.to_thread(planned))})

    def run(on_text):
        the_plan = planned()
        with work.input_errors():
            result = fill(infill_request, backend, on_text=on_text, planned=the_plan)
        request.usage = Usage.of(result.run, len(the_plan.prompt.ids))
        completions = _completions(result.run.completions, request.limits.fired)
        return _header(service) | {"plan": _plan(the_plan), "completions": completions, "run": _run(result.run)}

    return await _respond(http, service, fields, request, run)


async def complete(http: HttpRequest, service: Service, body: dict) -> Response:
    fields = Fields(body)
    backend = service.require_backend()
    request = service.request(http)
    prompt = fields.string("prompt", required=True)
    if not prompt:
        raise BadRequest("the prompt is empty; give some text to continue", param="prompt")
    completion_request = CompletionRequest(prompt, mode=fields.string("mode", "auto"),
                                           truncate=fields.boolean("truncate", True),
                                           job=_job(service, request, fields))

    def run(on_text):
        with work.input_errors():
            the_plan = plan_completion(completion_request, backend.tokenizer, backend.config)
            result = run_completion(completion_request, backend, on_text=on_text, planned=the_plan)
        request.usage = Usage.of(result.run, result.prompt_tokens)
        return _header(service) | {
            "plan": {"prompt_tokens": result.prompt_tokens, "tokens_cut": result.tokens_cut, "mode": result.mode},
            "completions": _completions(result.run.completions, request.limits.fired), "run": _run(result.run)}

    return await _respond(http, service, fields, request, run)


async def _respond(http, service: Service, fields: Fields, request: Request, run) -> Response:
    if not fields.boolean("stream", False):
        return CompactJSON(await service.run(http, request, run))
    head, rest = await service.stream(request, run)

    async def events():
        for piece in head:
            yield sse({"text": piece})
        async for item in rest:
            yield sse({"result": item.result} if isinstance(item, Finished) else {"text": item})

    return StreamingResponse(events(), media_type="text/event-stream")
