"""Interrupts (issue 8): SIGINT / SIGTERM while generating and while `infill --write` is writing end with exit 130 /
143, no traceback, the original file byte-identical and no temporary file left; a closed pipe ends quietly.

Every run is a real process of the installed `sc2` (or of python running `sc2cli.cli.main` with a patch)."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from checkpoints import make_checkpoint
from cli_helpers import isolated_env, sc2_command

CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
SIGNALS = [pytest.param(signal.SIGINT, id="SIGINT"), pytest.param(signal.SIGTERM, id="SIGTERM")]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    # A long context (the sliding window keeps the cache at 512 positions) so `--max-new-tokens 100000` really
    # keeps generating until the signal comes.
    return make_checkpoint(tmp_path_factory.mktemp("ckpt"), seed=3, max_position_embeddings=200_000,
                           sliding_window=512)


def _wait_for_stdout(process: subprocess.Popen, timeout: float = 90) -> bytes:
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    assert ready, "no output before the timeout"
    return os.read(process.stdout.fileno(), 64)


def _interrupt(process: subprocess.Popen, wait_until_ready, signum) -> tuple[bytes, bytes]:
    """Once `wait_until_ready()` returns, send `signum` and collect (stdout, stderr); never leave it running."""
    try:
        wait_until_ready()
        process.send_signal(signum)
        return process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.slow
@pytest.mark.parametrize("signum", SIGNALS)
def test_signal_during_generation(signum, checkpoint, tmp_path):
    argv = ["complete", "-m", str(checkpoint), "--dtype", "float32", "--ignore-eos", "--max-new-tokens", "100000",
            "def main():"]
    process = subprocess.Popen(sc2_command() + argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=isolated_env(tmp_path))

    def streaming():
        assert _wait_for_stdout(process)  # it is streaming a completion

    _, stderr = _interrupt(process, streaming, signum)
    assert process.returncode == CODES[signum], stderr.decode()
    assert b"Traceback" not in stderr
    assert stderr.strip() == b"", stderr.decode()  # interrupted on purpose: nothing to report


# The write pauses inside atomic_write_bytes, after the temporary file is written and before it replaces the
# original: the worst moment for an interrupt. The wrapper announces the pause by creating READY.
PAUSED_WRITE = """
import os, sys, time
from pathlib import Path

real_fsync = os.fsync

def paused_fsync(fd):
    if os.readlink(f"/proc/self/fd/{fd}").endswith(".sc2tmp"):
        Path(READY).write_text("temporary file written")
        time.sleep(60)
    real_fsync(fd)

os.fsync = paused_fsync
from sc2cli.cli import main
main()
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to recognise the temporary file")
@pytest.mark.parametrize("signum", SIGNALS)
def test_signal_during_infill_write_leaves_the_file_untouched(signum, checkpoint, tmp_path):
    folder = tmp_path / "project"
    folder.mkdir()
    path = folder / "app.py"
    original = b"def add(a, b):\r\n    return a + b\r\n\r\nx = 1\r\n"  # CRLF: any rewrite would show
    path.write_bytes(original)
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    before = (path.stat().st_mtime_ns, path.stat().st_mode)
    ready = tmp_path / "READY"
    code = f"READY = {str(ready)!r}\n" + PAUSED_WRITE
    argv = ["infill", str(path), "--line", "3", "-m", str(checkpoint), "--dtype", "float32", "--max-new-tokens", "3",
            "--ignore-eos", "--write"]
    process = subprocess.Popen([sys.executable, "-c", code, *argv], stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=isolated_env(tmp_path / "home"))

    def paused_in_the_write():
        deadline = time.monotonic() + 90
        while not ready.exists():
            assert process.poll() is None, process.communicate()[1].decode()
            assert time.monotonic() < deadline, "the write never started"
            time.sleep(0.05)
        assert len(list(folder.iterdir())) == 2  # the temporary file is there now

    stdout, stderr = _interrupt(process, paused_in_the_write, signum)
    assert process.returncode == CODES[signum], stderr.decode()
    assert b"Traceback" not in stderr
    assert stderr.strip() == b"" and stdout == b"", (stdout, stderr)
    assert path.read_bytes() == original
    assert (path.stat().st_mtime_ns, path.stat().st_mode) == before
    assert [p.name for p in folder.iterdir()] == ["app.py"]  # no temporary file left behind


@pytest.mark.slow
def test_closed_pipe_during_infill_ends_quietly(checkpoint, tmp_path):
    path = tmp_path / "app.py"
    path.write_bytes(b"def main():\n\n")
    command = " ".join(sc2_command()) + (f" infill {path} --line 2 -m {checkpoint} --dtype float32 --mode block "
                                         "--ignore-eos --max-new-tokens 100")
    result = subprocess.run(["bash", "-c", f"{command} | head -c 1 >/dev/null; echo \"rc=${{PIPESTATUS[0]}}\" >&2"],
                            capture_output=True, env=isolated_env(tmp_path / "home"), timeout=120)
    assert result.stderr.decode().strip() == "rc=0"
    assert path.read_bytes() == b"def main():\n\n"
