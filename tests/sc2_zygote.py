"""Run the installed `sc2` entry point many times without paying for `import torch` each time.

A server process (the venv's python, started fresh) imports torch and nothing else, then forks one child per run.
The child takes the run's environment, argv and files (stdin /dev/null, stdout and stderr to files), and executes
the installed console script itself (`runpy.run_path` on `.venv/bin/sc2`), so everything from `main()` on is exactly
what a user's process runs; sc2cli, huggingface_hub and the rest are imported fresh in each child. Only the ~1 s
torch import is shared. Signal tests and pipes use a real `exec` of the script instead (tests/cli_helpers.py).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

SERVER = r"""
import atexit, io, json, os, runpy, sys, traceback
import torch  # noqa: F401  (the expensive import, shared by every child)

script = sys.argv[1]
requests = io.TextIOWrapper(io.FileIO(0, closefd=False), encoding="utf-8")
replies = io.FileIO(1, "w", closefd=False)
while True:
    line = requests.readline()
    if not line:
        break
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.environ.clear()
            os.environ.update(request["env"])
            os.chdir(request["cwd"])
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            for fd, name in ((1, "stdout"), (2, "stderr")):
                os.dup2(os.open(request[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), fd)
            sys.stdin = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, closefd=False)))
            sys.stdout = io.TextIOWrapper(io.BufferedWriter(io.FileIO(1, "w", closefd=False)), line_buffering=False)
            sys.stderr = io.TextIOWrapper(io.BufferedWriter(io.FileIO(2, "w", closefd=False)),
                                          line_buffering=True, errors="backslashreplace")
            sys.argv = [script, *request["argv"]]
            if request["patch"]:
                exec(request["patch"], {"__name__": "sc2_patch"})
            try:
                runpy.run_path(script, run_name="__main__")
                code = 0
            except SystemExit as exit:
                if exit.code is None or isinstance(exit.code, int):
                    code = exit.code or 0
                else:
                    print(exit.code, file=sys.stderr)
            except BaseException:
                traceback.print_exc()
            atexit._run_exitfuncs()
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:
                    pass
        finally:
            os._exit(code)
    replies.write((json.dumps({"pid": pid}) + "\n").encode())
    _, status = os.waitpid(pid, 0)
    replies.write((json.dumps({"returncode": os.waitstatus_to_exitcode(status)}) + "\n").encode())
"""


class Zygote:
    def __init__(self, script: str) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", SERVER, script], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self._buffer = b""

    def _reply(self, timeout: float) -> dict:
        while b"\n" not in self._buffer:
            ready, _, _ = select.select([self.process.stdout], [], [], timeout)
            if not ready:
                raise TimeoutError
            chunk = os.read(self.process.stdout.fileno(), 4096)
            if not chunk:
                raise RuntimeError("the sc2 zygote died")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def run(self, argv: list[str], env: dict[str, str], scratch: Path, patch: str | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
        """Run `sc2 ARGV` in a forked child; its stdout/stderr go through files in `scratch` (outside the
        caller's snapshotted folders)."""
        scratch.mkdir(parents=True, exist_ok=True)
        out, err = scratch / "stdout", scratch / "stderr"
        request = {"argv": argv, "env": env, "cwd": str(scratch), "stdout": str(out), "stderr": str(err),
                   "patch": patch}
        self.process.stdin.write((json.dumps(request) + "\n").encode())
        self.process.stdin.flush()
        pid = self._reply(30)["pid"]
        try:
            code = self._reply(timeout)["returncode"]
        except TimeoutError:
            os.kill(pid, signal.SIGKILL)
            self._reply(30)
            raise subprocess.TimeoutExpired(argv, timeout) from None
        return subprocess.CompletedProcess(argv, code, out.read_bytes(), err.read_bytes())

    def close(self) -> None:
        self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
