"""The HTTP app: routes to the protocol adapters, with what every route shares: the API key, the body limit,
errors in the protocol's own shape (4xx for anything the client can fix; 5xx only for a bug, marked not to be
retried), and one log line per request on stderr.

    app = build_app(service, api_key=None, max_body=4 << 20)
"""

from __future__ import annotations

import hmac
import time
import traceback
from collections.abc import Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request as HttpRequest
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from . import llamacpp, native, ollama, openai
from .fields import BadRequest, parse_object
from .replies import CompactJSON
from .service import ClientGone, Service, log_line

PUBLIC = ("/health", "/v1/health")  # answered without the API key (llama.vscode's health check)
PROTOCOLS = {"llama.cpp": llamacpp, "openai": openai, "ollama": ollama, "sc2": native}


def protocol_of(path: str) -> str:
    """Whose error shape a path answers in."""
    if path in PUBLIC:
        return "llama.cpp"
    if path.startswith("/sc2/"):
        return "sc2"
    if path == "/" or path.startswith("/api/"):
        return "ollama"
    if path.startswith("/v1/") or path in ("/completions", "/models"):
        return "openai"
    return "llama.cpp"


def error_response(path: str, err: BadRequest) -> Response:
    body = PROTOCOLS[protocol_of(path)].error_body(err.status, str(err), err.kind, err.param)
    return CompactJSON(body, status_code=err.status, headers=err.headers)


def build_app(service: Service, api_key: str | None = None, max_body: int = 4 << 20) -> Starlette:
    def authorized(request: HttpRequest) -> bool:
        if not api_key or request.url.path in PUBLIC:
            return True  # no key configured: any Authorization header is ignored (clients send "Bearer ")
        given = request.headers.get("x-api-key") or request.headers.get("authorization", "")
        given = given.removeprefix("Bearer ").strip()
        return hmac.compare_digest(given.encode(), api_key.encode())

    async def read_body(request: HttpRequest) -> dict:
        declared = request.headers.get("content-length", "")
        too_big = BadRequest(f"the body is larger than the server's limit of {max_body} bytes", status=413)
        if declared.isdigit() and int(declared) > max_body:
            raise too_big
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body:
                raise too_big
            chunks.append(chunk)
        return parse_object(b"".join(chunks))

    def route(path: str, handler: Callable, methods=("POST",), body: bool = True) -> Route:
        async def endpoint(request: HttpRequest) -> Response:
            started = time.perf_counter()
            try:
                if not authorized(request):
                    raise BadRequest("Invalid API Key", status=401, kind="authentication_error")
                if body:
                    response = await handler(request, service, await read_body(request))
                else:
                    response = handler(service)
            except BadRequest as err:
                response = error_response(request.url.path, err)
            except ClientGone:
                response = Response(status_code=499)  # (nobody reads it: llama.cpp and Ollama log it so)
            except Exception as err:  # a bug: one line in the log, a 500 the client does not retry
                log_line(f"sc2 serve: {type(err).__name__}: {err} at {_where(err)}")
                response = error_response(request.url.path, BadRequest(
                    f"internal error: {type(err).__name__}", status=500, kind="server_error",
                    headers={"x-should-retry": "false"}))
            return _logged(request, response, started)

        return Route(path, endpoint, methods=list(methods))

    routes = [
        route("/health", llamacpp.health, ("GET",), body=False),
        route("/v1/health", llamacpp.health, ("GET",), body=False),
        route("/infill", llamacpp.infill),
        route("/completion", llamacpp.completion),
        route("/v1/completions", openai.completions),
        route("/completions", openai.completions),
        route("/v1/models", openai.models, ("GET",), body=False),
        route("/models", openai.models, ("GET",), body=False),
        route("/api/generate", ollama.generate),
        route("/api/show", ollama.show),
        route("/api/tags", ollama.tags, ("GET",), body=False),
        route("/api/version", lambda service: ollama.version(), ("GET",), body=False),
        route("/", lambda service: ollama.running(), ("GET", "HEAD"), body=False),
        route("/sc2/v1/infill", native.infill),
        route("/sc2/v1/complete", native.complete),
    ]

    async def not_found(request: HttpRequest, exc: HTTPException) -> Response:
        message = "File Not Found" if exc.status_code == 404 else f"{request.method} is not allowed here"
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        refused = BadRequest(message, exc.status_code, kind, headers=exc.headers)  # (405: the Allow header)
        return _logged(request, error_response(request.url.path, refused), time.perf_counter())

    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})


def _where(err: BaseException) -> str:
    frame = traceback.extract_tb(err.__traceback__)[-1] if err.__traceback__ else None
    return f"{frame.filename}:{frame.lineno}" if frame else "?"


def _logged(request: HttpRequest, response: Response, started: float) -> Response:
    """One stderr line per request, when its reply is complete (a stream: when it ends)."""

    def line() -> None:
        run = getattr(request.state, "run", None)
        usage = getattr(run, "usage", None)
        numbers = (f" prompt={usage.prompt_tokens} reused={usage.reused_tokens} new={usage.completion_tokens}"
                   if usage is not None else "")
        ms = (time.perf_counter() - started) * 1000
        log_line(f"{request.method} {request.url.path} {response.status_code}{numbers} {ms:.0f}ms")

    if isinstance(response, StreamingResponse):
        inner = response.body_iterator

        async def logged_stream():
            try:
                async for chunk in inner:
                    yield chunk
            finally:
                line()

        response.body_iterator = logged_stream()
    else:
        line()
    return response
