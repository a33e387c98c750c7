"""Running sc2 the way users do: a subprocess of the installed entry point, with an isolated home."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path


def sc2_command() -> list[str]:
    script = Path(sys.executable).with_name("sc2")
    return [str(script)] if script.exists() else [shutil.which("sc2") or "sc2"]


def isolated_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SC2_", "HF_"))}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), HF_HOME=str(home / "hf"),
               HF_HUB_OFFLINE="1", NO_COLOR="1", TOKENIZERS_PARALLELISM="false")
    env.update(extra)
    return env


def run_sc2(args: list[str], home: Path, input: bytes | str | None = None, timeout: float = 300,
            **env: str) -> subprocess.CompletedProcess:
    data = input.encode() if isinstance(input, str) else input
    return subprocess.run(sc2_command() + args, input=data, capture_output=True, timeout=timeout,
                          env=isolated_env(home, **env), stdin=None if data is not None else subprocess.DEVNULL)


def assert_one_line_error(result: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    stderr = result.stderr.decode()
    assert result.returncode == code, (result.returncode, stderr)
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def isolate_in_process(home: Path, monkeypatch) -> Path:
    """For in-process runs (CliRunner): the isolated environment, and huggingface_hub's cache under `home`."""
    from huggingface_hub import constants

    for key, value in isolated_env(home).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hf" / "hub"))
    return home
