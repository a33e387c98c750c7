"""The client of sc2's own routes (native.py), for `sc2 complete|infill --server URL`: it sends the command's
request and rebuilds the pipeline's result from the reply, so that the command renders it exactly as a local run.
The standard library only: a command with --server imports neither torch nor an HTTP package.

    result, served = infill(url, request, on_text=print)
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

from ..backends.base import GenerationJob, GenerationRun
from ..completion import CompletionRequest, CompletionResult
from ..errors import InputError, Sc2Error
from ..fim.pipeline import InfillPlan, InfillRequest, InfillResult, finish
from ..fim.prompt import Budget, Prompt, Truncation
from ..fim.source import split_at
from ..generation.results import Completion

CONNECT_TIMEOUT_S = 10
READ_TIMEOUT_S = 600  # a long generation on a slow machine, or a wait in the server's queue


@dataclass
class Served:
    """What the server says of itself with each result."""

    name: str  # the model as the server's user named it
    load_seconds: float
    context: int  # the model's context, in tokens


def infill(url: str, request: InfillRequest, on_text: Callable[[str], None] | None = None
           ) -> tuple[InfillResult, Served]:
    reply = _post(url, "/sc2/v1/infill", _infill_body(request), on_text)
    return finish(request, _plan(reply["plan"]), _run(reply)), _served(reply)


def infill_plan(url: str, request: InfillRequest) -> tuple[InfillPlan, Served]:
    """The prompt the server would build (a dry run: no model runs)."""
    reply = _post(url, "/sc2/v1/infill", _infill_body(request) | {"dry_run": True}, None)
    return _plan(reply["plan"]), _served(reply)


def complete(url: str, request: CompletionRequest, on_text: Callable[[str], None] | None = None
             ) -> tuple[CompletionResult, Served]:
    body = {"prompt": request.prompt, "mode": request.mode, "truncate": request.truncate, "job": _job(request.job)}
    reply = _post(url, "/sc2/v1/complete", body, on_text)
    plan = reply["plan"]
    return CompletionResult(_run(reply), plan["prompt_tokens"], plan["tokens_cut"], plan["mode"]), _served(reply)


def _infill_body(request: InfillRequest) -> dict:
    prefix, suffix = split_at(request.source, request.cursor)
    return {"prefix": prefix, "suffix": suffix, "path": request.path, "mode": request.mode,
            "context": [{"path": f.path, "text": f.text} for f in request.context], "repo_name": request.repo_name,
            "check_syntax": request.check_syntax, "job": _job(request.job)}


def _job(job: GenerationJob) -> dict:
    s = job.sampling
    return {"max_new_tokens": job.max_new_tokens, "num_samples": job.num_samples, "temperature": s.temperature,
            "top_k": s.top_k, "top_p": s.top_p, "min_p": s.min_p, "repetition_penalty": s.repetition_penalty,
            "seed": s.seed, "stop": list(job.stop), "ignore_eos": job.ignore_eos,
            "prompt_lookup": job.prompt_lookup, "decode": job.decode}


def _plan(plan: dict) -> InfillPlan:
    prompt = Prompt(plan["ids"], plan["text"], plan["prefix"], plan["suffix"], Truncation(**plan["truncation"]))
    return InfillPlan(prompt, plan["mode"], None, Budget(plan["budget_total"]))


def _run(reply: dict) -> GenerationRun:
    run = reply["run"]
    completions = [Completion(row=c["row"], text=c["text"], tokens=c["tokens"], logprob=c["logprob"],
                              token_logprobs=c["token_logprobs"], finish_reason=c["finish_reason"])
                   for c in reply["completions"]]
    return GenerationRun(completions, run["seed"], run["first_token_s"], run["decode_s"], run["reused_tokens"])


def _served(reply: dict) -> Served:
    return Served(reply["model"], reply["load_s"], reply["context"])


def _post(url: str, path: str, body: dict, on_text: Callable[[str], None] | None) -> dict:
    """POST `body` as JSON; with `on_text`, as a stream whose text pieces go there. The reply's result."""
    target = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    if target.scheme not in ("http", "https") or not target.hostname:
        raise InputError(f"{url!r} is not a server address like http://127.0.0.1:8012", field="server")
    kind = http.client.HTTPSConnection if target.scheme == "https" else http.client.HTTPConnection
    connection = kind(target.hostname, target.port, timeout=CONNECT_TIMEOUT_S)
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    if os.environ.get("SC2_API_KEY"):
        headers["Authorization"] = f"Bearer {os.environ['SC2_API_KEY']}"
    data = json.dumps(body | {"stream": on_text is not None}).encode("utf-8")
    base = target.path.rstrip("/")
    try:
        connection.connect()
        connection.sock.settimeout(READ_TIMEOUT_S)
        connection.request("POST", base + path, data, headers)
        response = connection.getresponse()
        if response.status != 200:
            raise _error(url, response.status, response.read())
        if on_text is None:
            return json.loads(response.read())
        return _read_stream(url, response, on_text)
    except (ConnectionError, socket.timeout, socket.gaierror, http.client.HTTPException, OSError) as err:
        reason = getattr(err, "strerror", None) or str(err) or type(err).__name__
        raise Sc2Error(f"cannot reach the server at {url}: {reason} (is `sc2 serve` running there?)") from None
    finally:
        connection.close()


def _read_stream(url: str, response, on_text: Callable[[str], None]) -> dict:
    for line in response:
        if not line.startswith(b"data: "):
            continue
        event = json.loads(line[6:])
        if "text" in event:
            on_text(event["text"])
        elif "result" in event:
            return event["result"]
    raise Sc2Error(f"the server at {url} ended its answer before the result (it may have stopped)")


def _error(url: str, status: int, data: bytes) -> Sc2Error:
    try:
        error = json.loads(data)["error"]
        message, field = error["message"], error.get("param")
    except (ValueError, KeyError, TypeError):
        message, field = data.decode("utf-8", "replace").strip()[:200] or "no detail", None
    if status == 401:
        return InputError(f"the server at {url} wants an API key: set SC2_API_KEY ({message})")
    if 400 <= status < 500:
        return InputError(message, field=field)
    return Sc2Error(f"the server at {url} answered {status}: {message}")
