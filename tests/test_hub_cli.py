"""`sc2 download`, `sc2 models` and `sc2 info` against a real on-disk Hugging Face cache layout (no network):
HF_HOME/hub/models--owner--name/{blobs, refs/main, snapshots/<commit>/<file> -> ../../blobs/<sha256>}."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch
from checkpoints import make_checkpoint
from cli_helpers import assert_one_line_error, isolate_in_process, isolated_env, run_sc2
from typer.testing import CliRunner

from sc2cli import hub, model as modeling
from sc2cli.cli import app, main
from sc2cli.cli.download import weights_problem
from sc2cli.errors import UsageError

COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"


def cache_repo(hf_home: Path, repo_id: str, files: dict[str, bytes], commit: str = COMMIT,
               ref: str | None = "main") -> Path:
    """Lay `files` out as huggingface_hub does: content-addressed blobs, snapshot symlinks, a ref to the commit."""
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / name)
    if ref:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snapshot


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt"), seed=3)


@pytest.fixture
def home(tmp_path, checkpoint) -> Path:
    """An isolated HOME whose HF cache holds owner/name (StarCoder2), other/bert (not StarCoder2), bad/json (an
    unreadable config) and broken/entry (a dangling symlink: huggingface_hub reports it as corrupt)."""
    files = {p.name: p.read_bytes() for p in checkpoint.iterdir() if p.is_file()}
    cache_repo(tmp_path / "hf", "owner/name", files)
    cache_repo(tmp_path / "hf", "other/bert", {"config.json": b'{"model_type": "bert"}'})
    cache_repo(tmp_path / "hf", "bad/json", {"config.json": b'{"model_type": "starcoder2"'})
    broken = cache_repo(tmp_path / "hf", "broken/entry", {"config.json": b'{"model_type": "starcoder2"}'})
    os.symlink("../../blobs/does-not-exist", broken / "model.safetensors")
    return tmp_path


@pytest.fixture
def in_process(home, monkeypatch):
    """For CliRunner: the same environment, and huggingface_hub pointed at the temporary cache."""
    return isolate_in_process(home, monkeypatch)


def invoke(args):
    return CliRunner().invoke(app, args, catch_exceptions=False)


def run_main(args, capsys) -> tuple[int, str, str]:
    """The real entry point (error mapping included) in this process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_:
        main(args)
    out, err = capsys.readouterr()
    return exit_.value.code, out, err


# ---- download ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_download_offline_prints_the_cached_snapshot(home):
    result = run_sc2(["download", "owner/name", "--offline"], home)
    assert result.returncode == 0, result.stderr.decode()
    path = Path(result.stdout.decode().strip())
    assert path == home / "hf" / "hub" / "models--owner--name" / "snapshots" / COMMIT
    assert (path / "model.safetensors").is_file() and result.stderr == b""


@pytest.mark.slow
def test_complete_runs_from_the_cache(home):
    result = run_sc2(["complete", "-m", "owner/name", "--offline", "--dtype", "float32", "--max-new-tokens", "5",
                      "def f():"], home)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout


@pytest.mark.slow
def test_missing_model_offline_is_one_line_naming_the_fix(home, in_process, capsys):
    result = run_sc2(["download", "other/missing", "--offline"], home)
    assert_one_line_error(result, 1, "other/missing", "sc2 download other/missing")
    assert result.stdout == b""
    code, out, err = run_main(["complete", "-m", "other/missing", "--offline", "x"], capsys)
    assert code == 1 and out == "" and len(err.splitlines()) == 1
    assert "other/missing" in err and "sc2 download other/missing" in err


@pytest.mark.slow
def test_hf_hub_offline_env_alone_means_offline(home):
    # isolated_env sets HF_HUB_OFFLINE=1 and no --offline is given: still no network, the same one-line error.
    result = run_sc2(["download", "other/missing", "--revision", "v1"], home)
    assert_one_line_error(result, 1, "sc2 download other/missing --revision v1")


def test_download_refuses_pickle_only_and_bad_ids():
    assert weights_problem("a/b", ["config.json", "model.safetensors", "pytorch_model.bin"]) is None
    assert weights_problem("a/b", ["config.json", "model-00001-of-00002.safetensors"]) is None
    assert "has only pickle weights; sc2 loads safetensors only" in weights_problem(
        "a/b", ["config.json", "pytorch_model.bin", "tokenizer.json"])
    assert "no config.json" in weights_problem("a/b", ["model.safetensors"])
    with pytest.raises(UsageError, match="not a Hub repo id"):
        invoke(["download", "not a repo"])


# ---- models -----------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_models_lists_starcoder2_checkpoints_only(home):
    result = run_sc2(["models"], home)
    assert result.returncode == 0, result.stderr.decode()
    lines = [line for line in result.stdout.decode().splitlines() if not line.startswith("sc2-tiny\t")]
    assert len(lines) == 1, lines  # other/bert is not StarCoder2; broken/entry is corrupt (a warning, no crash)
    model, revision, size, modified, path = lines[0].split("\t")
    assert model == "owner/name" and revision == f"{COMMIT[:7]} (main)"
    assert size.endswith(("kB", "MB")) and modified[:2] == "20"
    assert path.endswith(COMMIT)
    assert "broken" in result.stderr.decode() and "Traceback" not in result.stderr.decode()


def test_models_json_schema(in_process, checkpoint):
    result = invoke(["models", "--json"])
    assert result.exit_code == 0
    entries = json.loads(result.stdout)
    assert all(e["source"] == "shipped" for e in entries if e["model"] == "sc2-tiny")
    (entry,) = [e for e in entries if e["source"] != "shipped"]
    assert set(entry) == {"model", "revision", "refs", "size_bytes", "size", "last_modified", "path", "source"}
    assert entry["model"] == "owner/name" and entry["revision"] == COMMIT and entry["refs"] == ["main"]
    assert entry["source"] == "hub"
    assert entry["size_bytes"] == sum(p.stat().st_size for p in checkpoint.iterdir() if p.is_file())
    assert entry["last_modified"].endswith("+00:00")


def test_models_in_an_empty_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "nothing-here"))
    monkeypatch.setattr("sc2cli.hub.shipped_model_dir", lambda: tmp_path / "no-shipped-model")
    assert invoke(["models", "--json"]).stdout == "[]\n"
    assert invoke(["models"]).stdout == ""


@pytest.mark.slow
def test_models_rm(home):
    snapshot = cache_repo(home / "hf", "owner/name", {"config.json": b'{"model_type": "starcoder2"}'},
                          commit=OTHER_COMMIT, ref=None)  # a second revision of the same repo
    refused = run_sc2(["models", "rm", "owner/name"], home)  # stdin is not a terminal and no --yes
    assert_one_line_error(refused, 2, "--yes")
    assert snapshot.exists()

    one = run_sc2(["models", "rm", "owner/name", "--revision", OTHER_COMMIT[:8], "--yes"], home)
    assert one.returncode == 0, one.stderr.decode()
    assert not snapshot.exists() and (snapshot.parent / COMMIT).exists()

    assert run_sc2(["models", "rm", "owner/name", "--revision", "nope", "--yes"], home).returncode == 2
    removed = run_sc2(["models", "rm", "owner/name", "--yes"], home)
    assert removed.returncode == 0, removed.stderr.decode()
    assert not (home / "hf" / "hub" / "models--owner--name").exists()
    # The other repos share the commit hash (huggingface_hub matches bare hashes cache-wide): all still there.
    assert {p.name for p in (home / "hf" / "hub").iterdir()} == {
        "models--other--bert", "models--bad--json", "models--broken--entry"}
    again = run_sc2(["models", "rm", "owner/name", "--yes"], home)
    assert_one_line_error(again, 2, "owner/name")


def test_listing_and_removal_plan_come_from_the_core(in_process):
    """`sc2 models` renders `cache_listing.list_models()`; `sc2 models rm` confirms and runs `plan_removal`."""
    from sc2cli import cache_listing
    from sc2cli.errors import InputError

    listing = cache_listing.list_models()
    assert [e.model for e in listing.entries if e.source == "hub"] == ["owner/name"]
    assert listing.warning.startswith("skipped a corrupt cache entry") and "hf cache verify" in listing.warning
    removal = cache_listing.plan_removal("owner/name", "main")
    assert removal.what == f"owner/name revision {COMMIT[:7]} (main)" and removal.freed_bytes > 0
    assert cache_listing.plan_removal("owner/name").what == "owner/name"
    assert (in_process / "hf" / "hub" / "models--owner--name").exists()  # nothing is deleted before execute()
    for model, revision, needle in (("sc2-tiny", None, "ships inside"), ("other/bert", None, "no cached"),
                                    ("owner/name", "nope", "no cached revision 'nope'")):
        with pytest.raises(InputError, match=needle) as refused:
            cache_listing.plan_removal(model, revision)
        assert refused.value.field is None and "--" not in str(refused.value)
    removal.execute()
    assert not (in_process / "hf" / "hub" / "models--owner--name" / "snapshots" / COMMIT).exists()


# ---- info -------------------------------------------------------------------------------------------------------
def meta_parameter_count(config) -> int:
    with torch.device("meta"):
        model = modeling.Starcoder2ForCausalLM(config)
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def test_info_local_checkpoint_json(in_process, checkpoint):
    result = invoke(["info", str(checkpoint), "--json"])
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    config = modeling.Starcoder2Config.from_pretrained(checkpoint)
    assert report["parameters"] == meta_parameter_count(config)
    assert report["source"] == "local" and report["path"] == str(checkpoint)
    c = report["config"]
    assert (c["num_hidden_layers"], c["hidden_size"], c["head_dim"]) == (
        config.num_hidden_layers, config.hidden_size, config.head_size)
    mem = report["memory"]
    assert mem["float32"]["weights_bytes"] == 4 * report["parameters"]
    assert mem["bfloat16"]["weights_bytes"] == 2 * report["parameters"]
    assert mem["int8"]["weights_bytes"] < mem["bfloat16"]["weights_bytes"]
    kv = report["kv_cache"]
    per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_size * 2
    assert kv["bytes_per_token"]["bfloat16"] == per_token
    assert kv["window_tokens"] == min(config.sliding_window, config.max_position_embeddings)
    assert kv["bytes_full_window"]["bfloat16"] == per_token * kv["window_tokens"]
    assert set(report["devices"]) == {"cpu", "cuda", "mps", "auto"}
    assert report["versions"]["torch"] == metadata.version("torch")


def test_info_cached_hub_model_and_human_output(in_process):
    result = invoke(["info", "owner/name"])
    assert result.exit_code == 0
    assert "parameters" in result.stdout and COMMIT in result.stdout


def test_info_preset_offline_with_empty_cache(in_process, tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    code, out, err = run_main(["info", "bigcode/starcoder2-3b", "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["parameters"] == 3_030_371_328
    assert report["source"] == "preset" and "not downloaded" in report["note"]


def test_info_unknown_uncached_model_is_one_line(in_process):
    with pytest.raises(hub.ModelNotCached, match="sc2 download other/missing"):
        CliRunner().invoke(app, ["info", "other/missing"], catch_exceptions=False)


# ---- start-up ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_help_of_new_commands_does_not_import_torch(tmp_path):
    code = (
        "import sys\n"
        "from sc2cli.cli import main\n"
        "for args in (['download', '--help'], ['models', '--help'], ['models', 'rm', '--help'], ['info', '--help']):\n"
        "    try:\n"
        "        main(args)\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, (args, e.code)\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "sys.stderr.write(repr(bad))\n"
        "sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, env=isolated_env(tmp_path),
                            timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    assert b"sc2 download" in result.stdout and b"sc2 models rm" in result.stdout


def test_download_checks_the_repo_files_before_fetching(in_process, monkeypatch, capsys):
    from types import SimpleNamespace

    from huggingface_hub import HfApi

    def fake_model_info(self, repo_id, revision=None, **kwargs):
        names = ["config.json", "pytorch_model.bin", "tokenizer.json"]
        return SimpleNamespace(siblings=[SimpleNamespace(rfilename=n) for n in names])

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(HfApi, "model_info", fake_model_info)
    code, out, err = run_main(["download", "legacy/pickled"], capsys)
    assert code == 1 and out == ""
    assert err.strip() == ("sc2: error: legacy/pickled has only pickle weights; sc2 loads safetensors only "
                           "(convert them, or pick another repo)")
