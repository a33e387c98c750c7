"""`sc2 serve`: load a model once and serve it over HTTP to editor plugins (llama.cpp's /infill, OpenAI's
/v1/completions, Ollama's /api/generate), reusing each slot's cached prompt.

Examples:
  sc2 serve                                   # http://127.0.0.1:8012, llama.vim's default
  sc2 serve -m bigcode/starcoder2-3b --parallel 2
  sc2 serve --port 11434                      # for clients that assume Ollama
  SC2_API_KEY=secret sc2 serve --host 0.0.0.0
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import socket
import threading
from typing import Annotated, Optional

import typer

from ..errors import Sc2Error, UsageError
from . import common, output
from .options import DeviceOpt, DtypeOpt, ModelOpt, OfflineOpt, QuantizeOpt, RevisionOpt

SERVER_PANEL = "Server"
LOOPBACK_NAMES = ("localhost",)
INSTALL_HINT = "sc2 serve needs Starlette and uvicorn: pip install 'sc2cli[serve]'"


def serve(
    host: Annotated[str, typer.Option(help="Address to bind; anything but loopback needs --api-key.",
                                      rich_help_panel=SERVER_PANEL, metavar="ADDR")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (8012: llama.vim's default; 11434 for Ollama clients).",
                                      rich_help_panel=SERVER_PANEL, metavar="INT")] = 8012,
    parallel: Annotated[int, typer.Option(help="Requests computed at once, each with its own cached prompt.",
                                          rich_help_panel=SERVER_PANEL, metavar="N")] = 1,
    queue: Annotated[int, typer.Option(help="Requests that may wait for a slot; more get 503.",
                                       rich_help_panel=SERVER_PANEL, metavar="N")] = 8,
    api_key: Annotated[Optional[str], typer.Option(
        "--api-key", envvar="SC2_API_KEY", help="Require `Authorization: Bearer KEY` (all but /health).",
        show_default=False, show_envvar=True, rich_help_panel=SERVER_PANEL, metavar="KEY")] = None,
    max_body: Annotated[int, typer.Option("--max-body", help="Largest request body, in bytes.",
                                          rich_help_panel=SERVER_PANEL, metavar="BYTES")] = 4 << 20,
    timeout: Annotated[float, typer.Option(help="Seconds one request may generate; it then ends with its text.",
                                           rich_help_panel=SERVER_PANEL, metavar="S")] = 60.0,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="Tokens for a request that sets no limit.",
                                            rich_help_panel=SERVER_PANEL, metavar="INT")] = 128,
    model: ModelOpt = None,
    revision: RevisionOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    quantize: QuantizeOpt = "none",
    offline: OfflineOpt = False,
) -> None:
    """Serve a model over HTTP to editors: llama.cpp /infill, OpenAI /v1/completions, Ollama /api/generate."""
    try:
        import uvicorn  # noqa: F401

        from ..serve.app import build_app
        from ..serve.service import Service
    except ImportError:
        raise Sc2Error(INSTALL_HINT) from None
    for flag, value, low in (("--port", port, 0), ("--parallel", parallel, 1), ("--queue", queue, 0),
                             ("--max-body", max_body, 1024), ("--max-tokens", max_tokens, 1)):
        if value < low:
            raise UsageError(f"{flag} must be at least {low} (got {value})")
    if port > 65535:
        raise UsageError(f"--port must be at most 65535 (got {port})")
    if not timeout > 0:
        raise UsageError(f"--timeout must be more than 0 seconds (got {timeout})")
    if not api_key and not _loopback(host):
        raise UsageError(f"--host {host} would serve the model to the network without a key: give --api-key "
                         "(or SC2_API_KEY), or bind 127.0.0.1")
    sock = _bind(host, port)
    checkpoint = common.open_checkpoint(model, revision, offline)  # a bad reference fails here, in one line
    name = checkpoint.ref.rstrip("/").split("/")[-1]
    model_id = name if "starcoder2" in name.lower() else f"starcoder2-{name}"
    service = Service(model_id, parallel=parallel, queue=queue, timeout_s=timeout, default_max_tokens=max_tokens,
                      aliases=(checkpoint.ref, name))
    server = _Server(uvicorn.Config(build_app(service, api_key=api_key, max_body=max_body), log_level="warning",
                                   access_log=False, timeout_graceful_shutdown=5, lifespan="off"), service)
    failure: list[BaseException] = []

    def load() -> None:
        from ..backends.local import LocalBackend

        try:
            loaded = common.load_model(None, None, device, dtype, False, quantize=quantize, checkpoint=checkpoint)
            service.backend = LocalBackend(loaded, reuse=True, slots=parallel)
            output.status(f"sc2 serve: {model_id} ready on {loaded.model.device} in {loaded.load_seconds:.1f}s")
        except BaseException as err:  # reported by the main thread, which then stops the server
            failure.append(err)
            server.should_exit = True

    address = f"http://{host if ':' not in host else f'[{host}]'}:{sock.getsockname()[1]}"
    output.status(f"sc2 serve: listening on {address} (llama.cpp /infill, OpenAI /v1/completions, Ollama "
                  f"/api/generate); loading {checkpoint.ref}")
    threading.Thread(target=load, name="sc2-load", daemon=True).start()
    try:
        server.run(sockets=[sock])
    finally:
        service.shutdown()
        sock.close()
    if failure:
        raise failure[0]
    output.status("sc2 serve: stopped")


def _loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, made here so that a taken port or a bad address is one line, not a log."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise UsageError(f"--host {host}: {err.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as err:
        sock.close()
        if err.errno in (98, 48):  # EADDRINUSE (Linux, macOS)
            raise Sc2Error(f"port {port} on {host} is taken: another server runs there (use --port)") from None
        raise Sc2Error(f"cannot listen on {host}:{port}: {err.strerror}") from None
    sock.set_inheritable(os.name != "nt")
    return sock


class _Server:
    """uvicorn's server, with the signals handled here: SIGINT or SIGTERM stops accepting, ends the runs in flight
    with what they made, and returns (exit 0), instead of uvicorn raising the signal again afterwards."""

    def __new__(cls, config, service):
        import uvicorn

        class Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self):
                previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
                try:
                    yield
                finally:
                    for sig, handler in previous.items():
                        signal.signal(sig, handler)

            def handle_exit(self, sig, frame) -> None:
                service.stopping.set()
                self.should_exit = True

        return Server(config)
