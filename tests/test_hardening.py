"""Hardening (issue 8): every bad input through the real `sc2` entry point gets exit 2 (bad usage or input) or 1
(any other failure), ONE line on stderr naming the problem and the fix, no traceback, and no user file touched.
Plus the security checks: safetensors only, checkpoint code never imported, hub downloads limited, checkpoints
never written to.

Each table case builds its bad input under its own tmp dir (a copy of a tiny good checkpoint, source files, a home);
every file under that dir is snapshotted (bytes, mtime, mode) before and compared after the run. The table's runs are
processes of the installed `sc2` script forked from a server that has already imported torch (tests/sc2_zygote.py),
which saves ~1 s of CPU per case; `test_zygote_runs_match_the_installed_script` checks they behave like an `exec`.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch
from checkpoints import make_checkpoint
from cli_helpers import assert_one_line_error, isolated_env, run_sc2, sc2_command
from safetensors.torch import load_file, save_file
from sc2_zygote import Zygote

from sc2cli import hub

SMALL_SOURCE = b"a = 1\n\nb = 2\n"  # fits the tiny model's 32-token window: no truncation warning
SOURCE = b"def add(a, b):\n    return a + b\n\n\ndef main():\n    print(add(1, 2))\n"


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("good"), seed=8)


@pytest.fixture(scope="module")
def zygote():
    server = Zygote(sc2_command()[0])
    yield server
    server.close()


# ---- building bad inputs ----------------------------------------------------------------------------------------


def _copy(good: Path, tmp: Path) -> Path:
    return Path(shutil.copytree(good, tmp / "ckpt"))


def _edit_config(tmp: Path, good: Path, **changes) -> None:
    ckpt = _copy(good, tmp)
    config = json.loads((ckpt / "config.json").read_text())
    config.update(changes)
    (ckpt / "config.json").write_text(json.dumps(config))


def _edit_tensors(tmp: Path, good: Path, edit: Callable[[dict], None]) -> None:
    ckpt = _copy(good, tmp)
    path = ckpt / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def _edit_header(tmp: Path, good: Path, edit: Callable[[dict], None]) -> None:
    ckpt = _copy(good, tmp)
    path = ckpt / "model.safetensors"
    data = path.read_bytes()
    length = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + length])
    edit(header)
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + length:])


def _absurd_sizes(header: dict) -> None:
    entry = header["model.embed_tokens.weight"]
    entry["shape"] = [2**31, 2**31]
    entry["data_offsets"] = [entry["data_offsets"][0], 2**62]


def _source(tmp: Path, data: bytes = SOURCE, name: str = "app.py") -> Path:
    path = tmp / name
    path.write_bytes(data)
    return path


def _ckpt_and_source(tmp: Path, good: Path, data: bytes = SOURCE) -> None:
    _copy(good, tmp)
    _source(tmp, data)


def _read_only_source(tmp: Path, good: Path) -> None:
    _copy(good, tmp)
    _source(tmp).chmod(0o444)


def _setup_no_config(tmp, good):
    (_copy(good, tmp) / "config.json").unlink()


def _setup_bad_json(tmp, good):
    (_copy(good, tmp) / "config.json").write_text('{"model_type": "starcoder2", "hidden_size": 64,,}')


def _setup_truncated(tmp, good):
    path = _copy(good, tmp) / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _setup_pickle_only(tmp, good):
    ckpt = _copy(good, tmp)
    (ckpt / "model.safetensors").unlink()
    (ckpt / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle\x00")


def _setup_no_tokenizer(tmp, good):
    (_copy(good, tmp) / "tokenizer.json").unlink()


def _setup_no_model_dir(tmp, good):
    (tmp / "empty").mkdir()


def _drop_tensor(tensors):
    del tensors["model.layers.0.mlp.c_fc.weight"]


def _wrong_shape(tensors):
    tensors["model.layers.1.self_attn.q_proj.weight"] = torch.zeros(8, 64)


# A wrapper that runs the real entry point with one thing patched (argv after `-c CODE` reaches main()).
FULL_DISK = """
import errno, os
def fsync(fd):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
os.fsync = fsync
"""
DTYPE_DOES_NOT_RUN = """
import sc2cli.devices
sc2cli.devices._runs = lambda dtype, device: False
"""


@dataclass
class Case:
    id: str
    setup: Callable[[Path, Path], None]
    argv: list[str]  # {ckpt} and {tmp} are filled in
    code: int
    needles: tuple[str, ...]
    patch: str | None = None  # Python run before sc2cli.cli.main() in a wrapper process
    marks: tuple = field(default_factory=tuple)


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")
NO_MPS = pytest.mark.skipif(bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
                            reason="MPS is present")
COMPLETE = ["complete", "-m", "{ckpt}", "--max-new-tokens", "2"]
INFILL = ["infill", "{tmp}/app.py", "-m", "{ckpt}", "--max-new-tokens", "2", "--line", "2"]

CASES = [
    # -- the model reference and the checkpoint
    Case("model-path-missing", lambda t, g: None, ["complete", "-m", "{tmp}/nowhere", "x"], 2,
         ("{tmp}/nowhere", "does not exist", "checkpoint folder")),
    Case("no-config-json", _setup_no_config, COMPLETE + ["x"], 1, ("no config.json", "StarCoder2 checkpoint")),
    Case("empty-model-dir", _setup_no_model_dir, ["complete", "-m", "{tmp}/empty", "x"], 1,
         ("no config.json", "StarCoder2 checkpoint")),
    Case("config-invalid-json", _setup_bad_json, COMPLETE + ["x"], 1, ("not valid JSON", "line 1", "download")),
    Case("config-other-model-type", lambda t, g: _edit_config(t, g, model_type="llama"), COMPLETE + ["x"], 1,
         ("'llama'", "only 'starcoder2'")),
    Case("config-unknown-rope", lambda t, g: _edit_config(t, g, rope_scaling={"rope_type": "wobbly", "factor": 2}),
         COMPLETE + ["x"], 1, ("'wobbly'", "known types: default")),
    Case("safetensors-truncated", _setup_truncated, COMPLETE + ["x"], 1, ("model.safetensors", "download")),
    Case("tensor-wrong-shape", lambda t, g: _edit_tensors(t, g, _wrong_shape), COMPLETE + ["x"], 1,
         ("q_proj.weight", "shape [8, 64]", "[64, 64]", "config.json")),
    Case("tensor-missing", lambda t, g: _edit_tensors(t, g, _drop_tensor), COMPLETE + ["x"], 1,
         ("lacks tensor model.layers.0.mlp.c_fc.weight", "download")),
    Case("safetensors-absurd-header", lambda t, g: _edit_header(t, g, _absurd_sizes), COMPLETE + ["x"], 1,
         ("model.safetensors", "download")),
    Case("pickle-bin-only", _setup_pickle_only, COMPLETE + ["x"], 1,
         ("only pickle (.bin) weights", "arbitrary code", "safetensors")),
    Case("tokenizer-missing", _setup_no_tokenizer, COMPLETE + ["x"], 1, ("no tokenizer.json", "tokenizer.json")),
    Case("tokenizer-larger-than-vocab", lambda t, g: _edit_config(t, g, vocab_size=512), COMPLETE + ["x"], 1,
         ("1024 tokens", "512", "tokenizer.json that came with")),
    Case("offline-not-cached", lambda t, g: None, ["complete", "-m", "owner/missing", "--offline", "x"], 1,
         ("owner/missing", "sc2 download owner/missing")),
    # -- infill's file and cursor
    Case("infill-file-missing", lambda t, g: _copy(g, t), INFILL, 2, ("app.py does not exist", "check the path")),
    Case("infill-file-is-directory", lambda t, g: (_copy(g, t), (t / "app.py").mkdir()), INFILL, 2,
         ("is a directory", "give a file")),
    Case("infill-file-binary", lambda t, g: _ckpt_and_source(t, g, b"\x7fELF\x00\x01\x02" * 20), INFILL, 2,
         ("looks binary", "text files")),
    Case("infill-file-empty", lambda t, g: _ckpt_and_source(t, g, b""), INFILL, 2,
         ("is empty", "sc2 complete")),
    Case("infill-line-out-of-range", _ckpt_and_source, INFILL[:-1] + ["99"], 2,
         ("--line: line 99 is outside the file", "use 1..7")),
    Case("infill-column-out-of-range", _ckpt_and_source, INFILL + ["--column", "80"], 2,
         ("--column: column 80 is outside line 2", "use 1..")),
    # -- prompts and sampling values
    Case("empty-prompt", lambda t, g: _copy(g, t), COMPLETE + [""], 2, ("prompt is empty", "give")),
    Case("prompt-too-long-no-truncate", lambda t, g: _copy(g, t),
         COMPLETE + ["--no-truncate", "x = 1\n" * 400], 2, ("the prompt has", "drop --no-truncate")),
    Case("temperature-negative", lambda t, g: _copy(g, t), COMPLETE + ["--temperature", "-1", "x"], 2,
         ("--temperature", ">= 0")),
    Case("top-p-zero", lambda t, g: _copy(g, t), COMPLETE + ["--top-p", "0", "x"], 2, ("--top-p", "(0, 1]")),
    Case("top-p-above-one", lambda t, g: _copy(g, t), COMPLETE + ["--top-p", "1.5", "x"], 2, ("--top-p", "(0, 1]")),
    Case("num-samples-zero", lambda t, g: _copy(g, t), COMPLETE + ["-n", "0", "x"], 2,
         ("--num-samples", "at least 1")),
    Case("max-new-tokens-zero", lambda t, g: _copy(g, t), ["complete", "-m", "{ckpt}", "--max-new-tokens", "0", "x"],
         2, ("--max-new-tokens", "at least 1")),
    # -- the speed options
    Case("quantize-unknown", lambda t, g: _copy(g, t), COMPLETE + ["--quantize", "int4", "x"], 2,
         ("--quantize", "none, int8")),
    Case("decode-unknown", lambda t, g: _copy(g, t), COMPLETE + ["--decode", "turbo", "x"], 2,
         ("--decode", "decode mode must be one of")),
    Case("decode-cuda-graph-on-cpu", lambda t, g: _copy(g, t), COMPLETE + ["--decode", "cuda-graph", "x"], 2,
         ("--decode", "needs a CUDA device")),
    Case("prompt-lookup-when-sampling", lambda t, g: _copy(g, t),
         COMPLETE + ["--prompt-lookup", "--temperature", "0.7", "x"], 2, ("--lookup", "one greedy completion")),
    Case("complete-mode-unknown", lambda t, g: _copy(g, t), COMPLETE + ["--mode", "paragraph", "x"], 2,
         ("--mode", "auto, free, block or line")),
    # -- devices and dtypes
    Case("device-cuda-absent", lambda t, g: _copy(g, t), COMPLETE + ["--device", "cuda", "x"], 2,
         ("--device: no CUDA GPU", "use cpu"), marks=(NO_CUDA,)),
    Case("device-mps-absent", lambda t, g: _copy(g, t), COMPLETE + ["--device", "mps", "x"], 2,
         ("--device: Apple MPS is not available", "use cpu"), marks=(NO_MPS,)),
    Case("dtype-unknown", lambda t, g: _copy(g, t), COMPLETE + ["--dtype", "float64", "x"], 2,
         ("unknown dtype 'float64'", "float32")),
    # Every listed dtype runs on a CPU with current torch, so "cannot run" is simulated by the probe failing.
    Case("dtype-does-not-run-simulated", lambda t, g: _copy(g, t), COMPLETE + ["--dtype", "float16", "x"], 2,
         ("--dtype: float16 does not run on cpu", "use float32"), patch=DTYPE_DOES_NOT_RUN),
    # -- writing the result
    Case("infill-write-read-only", _read_only_source, INFILL + ["--write"], 1,
         ("read-only", "chmod u+w", "unchanged")),
    Case("infill-write-disk-full-simulated", lambda t, g: _ckpt_and_source(t, g, SMALL_SOURCE), INFILL + ["--write"],
         1, ("cannot write", "No space left on device", "unchanged"), patch=FULL_DISK),
]


def snapshot(root: Path) -> dict[str, tuple]:
    """Every file and folder under root: bytes, mtime and mode (folders: the sorted names they hold)."""
    state = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        key = str(path.relative_to(root))
        if path.is_dir():
            state[key] = ("dir", st.st_mode, tuple(sorted(p.name for p in path.iterdir())))
        else:
            state[key] = ("file", st.st_mode, st.st_mtime_ns, path.read_bytes())
    return state


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_bad_input_gets_one_clear_line_and_touches_nothing(case: Case, good: Path, zygote: Zygote, tmp_path: Path,
                                                           tmp_path_factory):
    home = tmp_path / "home"
    home.mkdir()
    case.setup(tmp_path, good)
    fill = dict(ckpt=str(tmp_path / "ckpt"), tmp=str(tmp_path))
    argv = [arg.format(**fill) for arg in case.argv]
    before = snapshot(tmp_path)

    result = zygote.run(argv, isolated_env(home), tmp_path_factory.mktemp("io"), patch=case.patch)

    assert_one_line_error(result, case.code, "sc2: error:", *(n.format(**fill) for n in case.needles))
    assert result.stdout == b"", result.stdout
    assert snapshot(tmp_path) == before, "a file under the case's folder changed"


def test_prompt_longer_than_the_context_is_cut_with_a_warning(good, zygote, tmp_path, tmp_path_factory):
    _copy(good, tmp_path)
    before = snapshot(tmp_path)
    result = zygote.run(["complete", "-m", str(tmp_path / "ckpt"), "--max-new-tokens", "2", "x = 1\n" * 400],
                        isolated_env(tmp_path_factory.mktemp("home")), tmp_path_factory.mktemp("io"))
    assert result.returncode == 0, result.stderr
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: prompt cut from the left"), lines
    assert "kept the last 510 of a 512-token context" in lines[0]
    assert result.stdout  # the completion
    assert snapshot(tmp_path) == before


# ---- security ---------------------------------------------------------------------------------------------------


class _Boom:
    """Unpickling this creates the marker file: what a malicious pytorch_model.bin does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _arm(ckpt: Path, marker: Path) -> None:
    """Booby-trap a good checkpoint: pickle weights next to the safetensors, and auto_map code (a module and a
    package __init__) that would create `marker` if anything imported or unpickled it."""
    torch.save({"model.embed_tokens.weight": _Boom(marker)}, ckpt / "pytorch_model.bin")
    config = json.loads((ckpt / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.Config", "AutoModelForCausalLM": "evil.Model",
                          "AutoModelForSequenceClassification": "evil.Model"}
    (ckpt / "config.json").write_text(json.dumps(config))
    code = f"open({str(marker)!r}, 'w').write('imported')\nConfig = Model = object\n"
    (ckpt / "evil.py").write_text(code)
    (ckpt / "__init__.py").write_text(code)
    (ckpt / "sitecustomize.py").write_text(code)


def test_booby_trap_is_armed(tmp_path):
    """The trap used below really fires when unpickled (so its absence later means nothing unpickled it)."""
    marker = tmp_path / "FIRED"
    torch.save({"w": _Boom(marker)}, tmp_path / "trap.bin")
    torch.load(tmp_path / "trap.bin", weights_only=False)
    assert marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["complete", "classify"])
def test_checkpoint_code_and_pickles_never_run_and_checkpoint_is_never_written(kind, good, tmp_path):
    """safetensors only (the .bin beside them is never unpickled); auto_map and the .py files are never imported,
    even with the checkpoint as the working directory; the checkpoint folder is byte-identical afterwards, with
    no new files."""
    marker = tmp_path / "PWNED"
    if kind == "complete":
        ckpt = _copy(good, tmp_path)
        argv = ["complete", "-m", str(ckpt), "--dtype", "float32", "--max-new-tokens", "3", "def f():"]
    else:
        ckpt = make_checkpoint(tmp_path / "ckpt", class_name="Starcoder2ForSequenceClassification", seed=2)
        argv = ["classify", "-m", str(ckpt), "--json", "Crash when the file is empty"]
    _arm(ckpt, marker)
    home = tmp_path / "home"
    home.mkdir()
    before = snapshot(ckpt)
    result = subprocess.run(sc2_command() + argv, capture_output=True, timeout=120, env=isolated_env(home),
                            cwd=ckpt, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout
    if kind == "classify":
        assert json.loads(result.stdout)["mode"] == "sequence"
    assert not marker.exists(), "checkpoint code or pickle ran"
    assert snapshot(ckpt) == before, "the checkpoint folder changed"


FORBIDDEN = ["pytorch_model.bin", "pytorch_model-00001-of-00002.bin", "pytorch_model.bin.index.json", "model.bin",
             "modeling_starcoder2.py", "configuration_starcoder2.py", "model.pt", "optimizer.pt", "model.pth",
             "training_args.bin", "data.pkl", "tokenizer.pickle", "flax_model.msgpack", "tf_model.h5"]


def test_hub_downloads_only_the_files_sc2_needs(monkeypatch, tmp_path):
    from fnmatch import fnmatch

    import huggingface_hub

    for pattern in hub.ALLOW_PATTERNS:
        assert not pattern.endswith((".bin", ".py", ".pt", ".pth", ".pkl", "*")), pattern
        assert not [name for name in FORBIDDEN if fnmatch(name, pattern)], pattern
    needed = ["config.json", "model.safetensors", "model-00001-of-00002.safetensors", "model.safetensors.index.json",
              "tokenizer.json"]
    assert all(any(fnmatch(name, p) for p in hub.ALLOW_PATTERNS) for name in needed)

    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert hub.resolve("owner/name", revision="v1") == tmp_path
    assert hub.download("owner/name", offline=True) == tmp_path
    assert [repo for repo, _ in calls] == ["owner/name", "owner/name"]
    for _, kwargs in calls:
        assert kwargs["allow_patterns"] == hub.ALLOW_PATTERNS
        assert not set(kwargs) - {"revision", "allow_patterns", "local_files_only"}, kwargs  # no widening
    assert calls[0][1]["revision"] == "v1" and calls[0][1]["local_files_only"] is False
    assert calls[1][1]["local_files_only"] is True


@pytest.mark.slow
def test_zygote_runs_match_the_installed_script(good, zygote, tmp_path):
    """The table's forked runs behave like `exec`ing the installed `sc2` (same stdout, stderr and exit code)."""
    argv = ["complete", "-m", str(good), "--dtype", "float32", "--max-new-tokens", "4", "--json", "--seed", "1",
            "import os"]
    real = run_sc2(argv, tmp_path / "a", timeout=120)
    forked = zygote.run(argv, isolated_env(tmp_path / "b"), tmp_path / "io")
    assert real.returncode == forked.returncode == 0, (real.stderr, forked.stderr)
    strip = lambda out: {k: v for k, v in json.loads(out).items() if k != "timings"}  # noqa: E731
    assert strip(real.stdout) == strip(forked.stdout)
    bad = ["complete", "-m", str(tmp_path / "nowhere"), "x"]
    real, forked = run_sc2(bad, tmp_path / "a", timeout=120), zygote.run(bad, isolated_env(tmp_path / "b"),
                                                                          tmp_path / "io")
    assert (real.returncode, real.stderr, real.stdout) == (forked.returncode, forked.stderr, forked.stdout)
    debug = zygote.run(bad, isolated_env(tmp_path / "b", SC2_DEBUG="1"), tmp_path / "io")
    assert debug.returncode == 1 and b"Traceback" in debug.stderr  # an escaping exception is seen, as in python
