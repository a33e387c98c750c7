"""The processes `sc2 bench serve` runs: servers (`sc2 serve`, llama.cpp's `llama-server`) on a free port of
127.0.0.1, and a cold `sc2 infill` process timed from its start to its first byte on stdout and to its exit.

A server is a context manager: it is stopped with SIGTERM when the block ends, however it ends (an error, Ctrl-C,
SIGTERM to the benchmark, which the CLI turns into an exception), and killed if it has not exited 15 s later.
Its stderr goes to a log file, whose last lines explain a server that failed to start.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

READY_TIMEOUT_S = 300  # loading the 3B shape takes tens of seconds
STOP_TIMEOUT_S = 15


class ProcessFailed(RuntimeError):
    """A server that did not come up, or a cold process that failed."""


def sc2_command() -> list[str]:
    """The `sc2` console script of this interpreter (as a user runs it), else `python -m sc2cli`."""
    script = Path(sys.executable).with_name("sc2")
    return [str(script)] if script.exists() else [sys.executable, "-m", "sc2cli"]


def process_env(threads: int | None) -> dict[str, str]:
    """The environment of every process measured: this one's (without SC2_SERVER: the cold `sc2 infill` must run
    its own model), with the thread count pinned when asked."""
    env = {key: value for key, value in os.environ.items() if key != "SC2_SERVER"}
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("HF_HUB_OFFLINE", "1")
    if threads is not None:
        for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[key] = str(threads)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


@dataclass
class Server:
    name: str
    url: str
    process: subprocess.Popen
    log_path: Path
    ready_s: float = 0.0  # from the start to the first 200 of /health (the model loaded)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> float:
        """Seconds until /health answers 200 (503 while the model loads)."""
        started = time.perf_counter()
        while time.perf_counter() - started < timeout:
            if self.process.poll() is not None:
                raise ProcessFailed(f"{self.name} exited with {self.process.returncode}: {_tail(self.log_path)}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return time.perf_counter() - started
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise ProcessFailed(f"{self.name} was not ready within {timeout:.0f}s: {_tail(self.log_path)}")


@contextlib.contextmanager
def running(name: str, argv: Sequence[str], port: int, env: dict[str, str], log_dir: Path) -> Iterator[Server]:
    """Start `argv` (which listens on 127.0.0.1:`port`), wait until it is ready, and stop it afterwards."""
    log_path = log_dir / f"{name.replace(' ', '-')}-{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   env=env)
    server = Server(name, f"http://127.0.0.1:{port}", process, log_path)
    try:
        server.ready_s = server.wait_ready()
        yield server
    finally:
        server.stop()


def sc2_server(model: str, dtype: str, device: str, parallel: int, queue: int, env: dict[str, str],
               log_dir: Path) -> contextlib.AbstractContextManager[Server]:
    port = free_port()
    argv = [*sc2_command(), "serve", "--host", "127.0.0.1", "--port", str(port), "-m", model, "--dtype", dtype,
            "--device", device, "--parallel", str(parallel), "--queue", str(queue)]
    return running(f"sc2 serve --parallel {parallel}", argv, port, env, log_dir)


def llama_server(binary: Path, gguf: Path, threads: int, context: int, env: dict[str, str],
                 log_dir: Path, cache_reuse: int = 256) -> contextlib.AbstractContextManager[Server]:
    """llama.cpp's server as spec §8 ran it: one slot, `--cache-reuse 256`."""
    port = free_port()
    argv = [str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "-t", str(threads),
            "-tb", str(threads), "-c", str(context), "-np", "1", "--cache-reuse", str(cache_reuse), "--no-webui"]
    return running("llama-server", argv, port, env, log_dir)


def time_cold(argv: Sequence[str], env: dict[str, str], timeout: float = 600.0) -> dict:
    """Run a command that streams to stdout: seconds to its first byte there (None: it wrote nothing) and to its
    exit, and what it wrote."""
    with tempfile.TemporaryFile() as errors:
        started = time.perf_counter()
        process = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors,
                                   env=env)
        first, chunks = None, []
        try:
            while chunk := os.read(process.stdout.fileno(), 65536):
                if first is None:
                    first = time.perf_counter() - started
                chunks.append(chunk)
            process.wait(timeout)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            process.stdout.close()
        wall = time.perf_counter() - started
        if process.returncode != 0:
            errors.seek(0)
            tail = errors.read().decode(errors="replace").strip().splitlines()[-1:]
            raise ProcessFailed(f"{' '.join(argv[:3])} ... exited with {process.returncode}: {' '.join(tail)}")
    return {"first_text_s": first, "total_s": wall, "content": b"".join(chunks).decode("utf-8", errors="replace")}
