"""A real `sc2 serve` process on the loopback address, for tests that talk HTTP to it with real clients."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from cli_helpers import isolated_env, sc2_command

START_TIMEOUT_S = 90
STOP_TIMEOUT_S = 15


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal the server and wait for it to exit; its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError(f"sc2 serve did not stop within {STOP_TIMEOUT_S}s of {sig!r}") from None
        return self.process.returncode


def wait_until_ready(url: str, process: subprocess.Popen, log_path: Path, timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"sc2 serve exited with {process.returncode}: {log_path.read_text()}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"sc2 serve was not ready within {timeout}s: {log_path.read_text()}")


@contextlib.contextmanager
def running_server(home: Path, *args: str, ready: bool = True, **env: str) -> Iterator[Server]:
    """`sc2 serve --port <free> ARGS` (the shipped model unless ARGS name another), stopped afterwards."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = home / f"serve-{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(sc2_command() + ["serve", "--port", str(port), *args], stdout=subprocess.DEVNULL,
                                   stderr=log, stdin=subprocess.DEVNULL, env=isolated_env(home, **env))
    server = Server(f"http://127.0.0.1:{port}", process, log_path)
    try:
        if ready:
            wait_until_ready(server.url, process, log_path)
        yield server
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
