"""`sc2 bench speed`: the worker's JSON record, the roofline arithmetic, the table, --json, the random checkpoint cache.

Everything runs on a tiny random shape, one round, a few tokens, so the subprocesses dominate (a few seconds each).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from cli_helpers import assert_one_line_error, isolated_env, run_sc2

from sc2cli import devices, kernels
from sc2cli.bench import checkpoints, roofline, speed, tables, workers
from sc2cli.model.config import Starcoder2Config

FAST = ["--shape", "tiny", "--repeats", "1", "--prompt-tokens", "16", "--new-tokens", "4", "--threads", "1",
        "--bandwidth-gib", "0.01"]
METRIC_KEYS = [key for key, *_ in tables.METRICS]
ABOVE_AVX2 = devices.cpu_capability().isa.startswith("AVX512")


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("bench-home")


@pytest.fixture(scope="module")
def json_run(home):
    """One `--json` run against transformers on the tiny shape (writes the random checkpoint into the cache)."""
    result = run_sc2(["bench", "speed", *FAST, "--peers", "transformers", "--json"], home,
                     XDG_CACHE_HOME=str(home / "cache"))
    assert result.returncode == 0, result.stderr.decode()
    return json.loads(result.stdout), result.stderr.decode()


def _tiny_checkpoint(home):
    return home / "cache" / "sc2" / "bench" / "tiny-bfloat16"


# ---- arithmetic ------------------------------------------------------------------------------------------------------

def _config(**overrides) -> Starcoder2Config:
    shape = dict(vocab_size=512, hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, use_bias=True, tie_word_embeddings=True)
    return Starcoder2Config(**{**shape, **overrides})


def test_bytes_per_token_tied():
    h, i, layers, kv, vocab = 64, 256, 2, 2 * 16, 512
    attention = h * h + h + 2 * (h * kv + kv) + h * h + h  # q, k, v, o with biases
    mlp = h * i + i + i * h + h  # c_fc, c_proj with biases
    norms = 2 * 2 * h  # two LayerNorms, weight and bias
    per_layer = attention + mlp + norms
    expected = layers * per_layer + 2 * h + vocab * h  # final norm; the tied head reads the embeddings in full
    config = _config()
    assert roofline.parameter_count(config) == expected
    assert roofline.weight_bytes_per_token(config, 2) == 2 * expected
    assert roofline.weight_bytes_per_token(config, 4) == 4 * expected


def test_bytes_per_token_untied_reads_one_embedding_row():
    tied = roofline.weight_bytes_per_token(_config(), 2)
    untied = roofline.weight_bytes_per_token(_config(tie_word_embeddings=False), 2)
    assert untied == tied + 2 * 64  # the separate lm_head is read in full, the embedding one row per token
    untied_params = roofline.parameter_count(_config(tie_word_embeddings=False))
    assert untied_params == roofline.parameter_count(_config()) + 512 * 64


def test_roofline_of_the_s_shape_matches_the_peer_measurements():
    config = checkpoints.shape_config("s")
    assert abs(roofline.parameter_count(config) / 1e6 - 182.6) < 0.1  # perf-peers.md: 182.6M params, 365 MB in bf16
    per_token = roofline.weight_bytes_per_token(config, 2)
    assert abs(per_token / 1e6 - 365.2) < 0.5
    assert abs(roofline.roofline_tok_s(74.0, per_token) - 203) < 1  # perf-peers.md: ~199 at ~74 GB/s
    assert roofline.roofline_tok_s(100.0, 10**9, batch=4) == pytest.approx(400.0)
    assert checkpoints.shape_config("3b").hidden_size == 3072


# ---- the random checkpoint cache ---------------------------------------------------------------------------------

def test_random_checkpoint_is_written_once_and_loads(tmp_path):
    import torch

    from sc2cli.model.transformer import Starcoder2ForCausalLM

    path, written = checkpoints.random_checkpoint("tiny", "bfloat16", root=tmp_path)
    assert written and (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    mtime = (path / "model.safetensors").stat().st_mtime_ns
    again, written_again = checkpoints.random_checkpoint("tiny", "bfloat16", root=tmp_path)
    assert again == path and not written_again
    assert (path / "model.safetensors").stat().st_mtime_ns == mtime
    model = Starcoder2ForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    norm = model.model.layers[0].input_layernorm
    assert torch.equal(norm.weight, torch.ones_like(norm.weight))
    std = model.model.layers[0].mlp.c_fc.weight.float().std().item()
    assert 0.018 < std < 0.022
    # seeded: a second folder holds the same bytes
    other, _ = checkpoints.random_checkpoint("tiny", "bfloat16", root=tmp_path / "other")
    assert (other / "model.safetensors").read_bytes() == (path / "model.safetensors").read_bytes()
    # float32 is a separate folder
    f32, written_f32 = checkpoints.random_checkpoint("tiny", "float32", root=tmp_path)
    assert written_f32 and f32 != path


def test_random_checkpoint_loads_in_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    import torch

    path, _ = checkpoints.random_checkpoint("tiny", "float32", root=tmp_path)
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    assert model.num_parameters() == roofline.parameter_count(checkpoints.shape_config("tiny"))


# ---- the worker --------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_worker_prints_one_json_record(tmp_path):
    path, _ = checkpoints.random_checkpoint("tiny", "float32", root=tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "sc2cli.bench.workers", "worker", "--engine", "sc2", "--checkpoint", str(path),
         "--dtype", "float32", "--threads", "1", "--prompt-tokens", "12", "--new-tokens", "3"],
        capture_output=True, text=True, timeout=300, env=isolated_env(tmp_path))
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert set(record) == set(workers.WORKER_KEYS)
    assert record["engine"] == "sc2" and record["dtype"] == "float32" and record["threads"] == 1
    assert record["prompt_tokens"] == 12 and record["new_tokens"] == 3
    for key in ("load_s", "ttft_cold_s", "ttft_s", "prefill_s", "prefill_tok_s", "tail_s", "decode_b1_tok_s",
                "decode_b4_tok_s"):
        assert isinstance(record[key], float) and record[key] > 0, key
    assert record["prefill_tok_s"] == pytest.approx(12 / record["prefill_s"])
    assert record["decode_b4_tok_s"] == pytest.approx(4 * 2 / record["decode_b4_s"])  # 2 timed steps, 4 rows
    assert 0 < record["rss_start_bytes"] <= record["rss_load_bytes"] <= record["rss_peak_bytes"]


@pytest.mark.slow
def test_bandwidth_process(tmp_path):
    result = subprocess.run([sys.executable, "-m", "sc2cli.bench.workers", "bandwidth", "--gib", "0.01",
                             "--passes", "3"], capture_output=True, text=True, timeout=120, env=isolated_env(tmp_path))
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert len(record["samples_gbps"]) == 3 and record["gbps"] > 0 and record["bytes"] == (2**30 // 100) // 4 * 4


# ---- the command ------------------------------------------------------------------------------------------------

def test_json_schema(json_run):
    doc, stderr = json_run
    assert set(doc) >= {"machine", "settings", "model", "bandwidth", "roofline", "engines", "metrics"}
    assert doc["machine"]["threads"] == 1 and doc["machine"]["cpu"] and doc["machine"]["torch"]
    variants = {"sc2": {"quantize": "none", "decode": "auto"}, "sc2-int8": {"quantize": "int8", "decode": "auto"}}
    if ABOVE_AVX2:  # what an AVX2 machine runs is measured too
        variants["sc2-avx2"] = {"quantize": "none", "decode": "auto", "cpu": "avx2"}
    assert doc["settings"] == {"dtype": "bfloat16", "repeats": 1, "prompt_tokens": 16, "new_tokens": 4, "seed": 0,
                               "peers": ["transformers"], "bandwidth_gib": 0.01, "variants": variants}
    model = doc["model"]
    assert model["parameters"] == roofline.parameter_count(checkpoints.shape_config("tiny"))
    assert model["weight_bytes"] == 2 * model["parameters"]
    assert model["bytes_per_token"] == roofline.weight_bytes_per_token(checkpoints.shape_config("tiny"), 2)
    assert model["checkpoint_written"] is True and "writing random tiny weights" in stderr
    # a bandwidth measurement before each engine's and one after the last; each engine's roofline fractions use
    # the higher of the two around it
    probes = [b["gbps"] for b in doc["bandwidth"]["samples"]]
    assert len(probes) == len(doc["engines"]) + 1 and doc["bandwidth"]["gbps"] > 0
    around = sorted((e["samples"][0]["bandwidth_before_gbps"], e["samples"][0]["bandwidth_after_gbps"])
                    for e in doc["engines"].values())
    assert around == sorted(zip(probes, probes[1:]))
    for engine in doc["engines"].values():
        (sample,) = engine["samples"]
        assert sample["bandwidth_gbps"] == max(sample["bandwidth_before_gbps"], sample["bandwidth_after_gbps"])
    assert doc["roofline"]["batch4_tok_s"] == pytest.approx(4 * doc["roofline"]["batch1_tok_s"])
    assert [m["key"] for m in doc["metrics"]] == METRIC_KEYS
    capped = {"sc2-avx2", "transformers-avx2"} if ABOVE_AVX2 else set()
    assert set(doc["engines"]) == {"sc2", "sc2-int8", "transformers"} | capped  # int8 is measured by default
    for name, engine in doc["engines"].items():
        assert engine["available"] and not engine["errors"], (name, engine["errors"])
        (sample,) = engine["samples"]
        assert set(workers.WORKER_KEYS) <= set(sample) and sample["engine"] == name
        # int8: one byte per weight; transformers on AVX2 runs in float32: four
        read = model["bytes_per_token"] * {"sc2-int8": 1, "transformers-avx2": 4}.get(name, 2) // 2
        assert sample["roofline_b1"] == pytest.approx(
            sample["decode_b1_tok_s"] / roofline.roofline_tok_s(sample["bandwidth_gbps"], read))
        assert sample["rss_ratio"] == pytest.approx(sample["rss_peak_bytes"] / model["weight_bytes"])
        assert set(engine["summary"]) == set(METRIC_KEYS)
        for key in METRIC_KEYS:
            stats = engine["summary"][key]
            assert stats["median"] == stats["min"] == stats["max"] == sample[key] and stats["n"] == 1


def test_a_decode_is_set_against_the_higher_bandwidth_measured_around_it():
    """A phase change of a shared machine's memory during an engine's run shows in the measurement after it: the
    roofline is the machine's best around the run, never the slow phase's lower figure."""
    sample = {"decode_b1_tok_s": 7.0, "decode_b4_tok_s": None, "engine_bytes_per_token": 6_000_000_000}
    speed.set_roofline(sample, 40.0, 70.0)
    assert (sample["bandwidth_before_gbps"], sample["bandwidth_after_gbps"], sample["bandwidth_gbps"]) == (40, 70, 70)
    assert sample["roofline_b1"] == pytest.approx(7.0 / (70e9 / 6e9)) and sample["roofline_b4"] is None
    speed.set_roofline(sample, 70.0, 40.0)
    assert sample["bandwidth_gbps"] == 70.0


def test_table_has_every_metric_row():
    doc = {
        "machine": {"cpu": "Test CPU", "threads": 2, "torch": "2.x", "device": "cpu", "gpu": None},
        "settings": {"dtype": "bfloat16", "repeats": 3, "prompt_tokens": 512, "new_tokens": 128},
        "model": {"label": "shape s", "parameters": 182_600_000, "weight_bytes": 365_200_000,
                  "bytes_per_token": 365_200_000},
        "bandwidth": {"gbps": 70.0, "min_gbps": 65.0, "max_gbps": 74.0, "samples": [{}, {}, {}]},
        "roofline": {"batch1_tok_s": 191.7, "batch4_tok_s": 766.8},
    }
    samples = [{**{k: 1.0 + r for k in METRIC_KEYS}, "version": "5.0"} for r in range(3)]
    doc["engines"] = {
        "sc2": {"available": True, "reason": None, "samples": samples, "summary": speed.summarize(samples)},
        "transformers": {"available": True, "reason": None, "samples": samples, "summary": speed.summarize(samples)},
        "llama.cpp": {"available": False, "reason": "not installed", "samples": [], "summary": speed.summarize([])},
    }
    table = tables.render_table(doc)
    assert "Test CPU" in table and "2 threads" in table and "bfloat16" in table and "182.6M parameters" in table
    assert "70.0 GB/s (65.0–74.0)" in table
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    assert header == ["metric", "sc2", "transformers", "llama.cpp", "sc2/transformers", "sc2/llama.cpp"]
    labels = [c.strip("|").split("|")[0].strip() for c in rows[1:]]
    assert labels == ["available"] + [label.strip() for _, label, *_ in tables.METRICS]
    assert "not installed" in rows[1]
    decode = next(r for r in rows if "decode, batch 1" in r)
    assert "2.0 (1.0–3.0)" in decode and "1.00x" in decode

    faster = [{**s, "decode_b1_tok_s": 2 * s["decode_b1_tok_s"]} for s in samples]
    doc["engines"] = {"sc2": doc["engines"]["sc2"],
                      "sc2-int8": {"available": True, "reason": None, "samples": faster,
                                   "summary": speed.summarize(faster)},
                      "transformers": doc["engines"]["transformers"]}
    rows = [line for line in tables.render_table(doc).splitlines() if line.startswith("| ")]
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    assert header == ["metric", "sc2", "sc2-int8", "transformers", "sc2/transformers", "sc2-int8/sc2"]
    decode = [c.strip() for c in next(r for r in rows if "decode, batch 1" in r).strip("|").split("|")]
    assert decode[2] == "4.0 (2.0–6.0)" and decode[-1] == "2.00x"
    assert len({len(r) for r in rows}) == 1  # aligned


@pytest.mark.slow
def test_table_run_reuses_the_cached_checkpoint(json_run, home):
    checkpoint = _tiny_checkpoint(home) / "model.safetensors"
    mtime = checkpoint.stat().st_mtime_ns
    result = run_sc2(["bench", "speed", *FAST, "--peers", "llama.cpp"], home, XDG_CACHE_HOME=str(home / "cache"))
    assert result.returncode == 0, result.stderr.decode()
    stderr, table = result.stderr.decode(), result.stdout.decode()
    assert "writing random" not in stderr
    assert checkpoint.stat().st_mtime_ns == mtime
    for _, label, *_ in tables.METRICS:
        assert f"| {label.strip()}" in table or f"|   {label.strip()}" in table, label
    assert "sc2/llama.cpp" in table
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        assert "not installed" in table


@pytest.mark.slow
def test_usage_errors(tmp_path):
    assert_one_line_error(run_sc2(["bench", "speed", "--shape", "s", "-m", "x"], tmp_path), 2, "not both")
    assert_one_line_error(run_sc2(["bench", "speed", "--peers", "vllm"], tmp_path), 2, "unknown peer")
    assert_one_line_error(run_sc2(["bench", "speed", "--shape", "7b"], tmp_path), 2, "unknown shape")
    assert_one_line_error(run_sc2(["bench", "speed", *FAST, "--prompt-tokens", "5000"], tmp_path,
                                  XDG_CACHE_HOME=str(tmp_path / "cache")), 2, "exceed")


def test_speed_module_offers_what_the_command_uses():
    """`sc2 bench speed` reaches everything through `sc2cli.bench.speed`, whichever module defines it."""
    assert speed.render_table is tables.render_table and speed.shape_config is checkpoints.shape_config
    assert speed.PEERS is workers.PEERS and speed.SC2_VARIANTS is workers.SC2_VARIANTS
    for name in speed.__all__:
        assert hasattr(speed, name), name


@pytest.mark.slow
def test_help_does_not_import_torch(tmp_path):
    code = ("import sys; from sc2cli.cli import main\n"
            "try:\n    main(['bench', 'speed', '--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, env=isolated_env(tmp_path), timeout=60)
    assert result.returncode == 0, result.stderr.decode()


# ---- the request, resolved in the core (sc2cli/bench/plan.py) ---------------------------------------------------
def test_peers_variants_and_dtype_are_parsed_in_the_core():
    from sc2cli.bench import plan
    from sc2cli.errors import InputError

    assert plan.parse_peers("llama-cpp, Transformers,llamacpp") == ["llama.cpp", "transformers"]
    assert plan.parse_peers(" none ") == [] and plan.parse_peers("") == []
    assert plan.parse_variants(None, "cpu") == ["sc2-int8"]
    assert plan.parse_variants(None, " CUDA:1") == ["sc2-int8", "sc2-eager"]
    assert plan.parse_variants("none", "cuda") == [] and plan.parse_variants("SC2-compile", "cpu") == ["sc2-compile"]
    assert plan.parse_dtype(" Float16 ") == "float16"
    for call, needle in ((lambda: plan.parse_peers("vllm"), "unknown peer 'vllm'"),
                         (lambda: plan.parse_variants("sc2-fast", "cpu"), "unknown variant 'sc2-fast'"),
                         (lambda: plan.parse_dtype("int4"), "unknown dtype 'int4'")):
        with pytest.raises(InputError, match=needle) as refused:
            call()
        assert "--" not in str(refused.value)  # the core names no flag


def test_a_request_is_resolved_before_anything_is_written(tmp_path, monkeypatch):
    from sc2cli.bench import plan
    from sc2cli.errors import InputError

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    prepared = speed.prepare(speed.SpeedRequest(shape="Tiny", dtype="float32", peers="none", variants="none",
                                                threads=1, prompt_tokens=16, new_tokens=4))
    assert (prepared.shape, prepared.dtype, prepared.peers, prepared.variants) == ("tiny", "float32", [], [])
    assert prepared.config.max_position_embeddings == checkpoints.shape_config("tiny").max_position_embeddings
    assert prepared.checkpoint is None and not (tmp_path / "cache").exists()  # a caller can still refuse it
    bench_plan = speed.make_plan(prepared)
    assert bench_plan.checkpoint == tmp_path / "cache" / "sc2" / "bench" / "tiny-float32" and bench_plan.written
    assert bench_plan.label == f"shape tiny (random weights, {bench_plan.checkpoint})"
    assert (bench_plan.threads, bench_plan.prompt_tokens, bench_plan.device, bench_plan.peers) == (1, 16, "cpu", [])
    again = speed.make_plan(speed.prepare(speed.SpeedRequest(model=str(bench_plan.checkpoint), peers="none")))
    assert again.checkpoint == bench_plan.checkpoint and again.label == str(bench_plan.checkpoint)
    assert again.written is None and again.variants == ["sc2-int8"] + (["sc2-avx2"] if ABOVE_AVX2 else [])
    with pytest.raises(InputError, match="unknown shape '7B'"):
        plan.prepare(plan.SpeedRequest(shape="7B"))
    monkeypatch.setattr("sc2cli.hub.shipped_model_dir", lambda: tmp_path / "no-shipped-model")
    with pytest.raises(InputError, match="shipped model is not installed") as missing:
        plan.prepare(plan.SpeedRequest(shape="shipped"))
    assert missing.value.field == "shape" and "--" not in str(missing.value)


# ---- the llama.cpp peers: GGUFs exported by the bench, Q8_0 against sc2-int8 --------------------------------------

def test_llama_cpp_q8_0_is_set_against_sc2_int8_and_its_build_is_named():
    doc = {
        "machine": {"cpu": "Test CPU", "threads": 2, "torch": "2.x", "device": "cpu", "gpu": None},
        "settings": {"dtype": "bfloat16", "repeats": 1, "prompt_tokens": 512, "new_tokens": 128},
        "model": {"label": "shape s", "parameters": 1e6, "weight_bytes": 2e6, "bytes_per_token": 2e6},
        "bandwidth": {"gbps": 20.0, "min_gbps": 20.0, "max_gbps": 20.0, "samples": [{}]},
        "roofline": {"batch1_tok_s": 10.0, "batch4_tok_s": 40.0},
    }

    def engine(rate, build=None):
        samples = [{**{k: 1.0 for k in METRIC_KEYS}, "decode_b1_tok_s": rate, "version": "0.3", "build": build}]
        return {"available": True, "reason": None, "samples": samples, "summary": speed.summarize(samples)}

    build = "CPU : SSE3 = 1 | AVX2 = 1 | AVX512 = 0 | AVX512_BF16 = 0 | REPACK = 1 | "
    doc["engines"] = {"sc2": engine(30.0), "sc2-int8": engine(60.0), "llama.cpp": engine(40.0, build),
                      "llama.cpp-q8_0": engine(50.0, build)}
    table = tables.render_table(doc)
    assert "llama.cpp built with: SSE3 AVX2 REPACK\n" in table  # the features that are on, once
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    assert header == ["metric", "sc2", "sc2-int8", "llama.cpp", "llama.cpp-q8_0", "sc2/llama.cpp",
                      "sc2-int8/llama.cpp-q8_0", "sc2-int8/sc2"]
    decode = [c.strip() for c in next(r for r in rows if "decode, batch 1" in r).strip("|").split("|")]
    assert decode[5:] == ["0.75x", "1.20x", "2.00x"]


def test_peer_engines_follow_the_variants():
    from sc2cli.bench.plan import BenchPlan

    plan = BenchPlan(checkpoint=None, label="x", peers=["llama.cpp", "transformers"], variants=["sc2-int8"])
    assert speed.peer_engines(plan) == ["llama.cpp", "llama.cpp-q8_0", "transformers"]
    plan.variants = []
    assert speed.peer_engines(plan) == ["llama.cpp", "transformers"]
    assert speed.gguf_kind("llama.cpp", "bfloat16") == "bf16" and speed.gguf_kind("llama.cpp-q8_0", "float32") == "q8_0"


def test_peer_gguf_is_exported_once_and_again_when_the_weights_change(tmp_path, monkeypatch):
    pytest.importorskip("gguf", reason="the gguf extra is not installed")
    import os
    import shutil

    from sc2cli.hub import shipped_model_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    model = shutil.copytree(shipped_model_dir(), tmp_path / "my-model")
    said: list[str] = []
    path = checkpoints.peer_gguf(model, "org/my-model", "q8_0", said.append)
    assert path == tmp_path / "cache" / "sc2" / "bench" / "gguf" / "org--my-model" / "model-q8_0.gguf"
    assert path.is_file() and len(said) == 1 and "Q8_0" in said[0]
    first = path.stat().st_mtime_ns
    assert checkpoints.peer_gguf(model, "org/my-model", "q8_0", said.append) == path and len(said) == 1
    assert path.stat().st_mtime_ns == first
    later = path.stat().st_mtime + 10
    os.utime(model / "model.safetensors", (later, later))  # new weights: the export is stale
    checkpoints.peer_gguf(model, "org/my-model", "q8_0", said.append)
    assert len(said) == 2 and path.stat().st_mtime_ns != first


def test_random_weights_get_a_tokenizer_or_the_reason_they_cannot(tmp_path, monkeypatch):
    pytest.importorskip("gguf", reason="the gguf extra is not installed")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    tiny, _ = checkpoints.random_checkpoint("tiny", "bfloat16")
    with pytest.raises(checkpoints.NoGGUF, match=r"vocabulary \(512\) is smaller"):
        checkpoints.peer_gguf(tiny, "tiny", "bf16")
    assert not list(tiny.glob("*.gguf")) and not (tiny / "tokenizer.json").exists()


@pytest.mark.slow
def test_llama_cpp_columns_on_the_shipped_model(tmp_path):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (it could not be built)")
    result = run_sc2(["bench", "speed", "--shape", "shipped", "--repeats", "1", "--prompt-tokens", "16",
                      "--new-tokens", "4", "--threads", "1", "--bandwidth-gib", "0.01", "--peers", "llama.cpp",
                      "--json"], tmp_path, XDG_CACHE_HOME=str(tmp_path / "cache"))
    assert result.returncode == 0, result.stderr.decode()
    doc = json.loads(result.stdout)
    assert set(doc["engines"]) - {"sc2-avx2"} == {"sc2", "sc2-int8", "llama.cpp", "llama.cpp-q8_0"}
    for name in ("llama.cpp", "llama.cpp-q8_0"):
        (sample,) = doc["engines"][name]["samples"]
        assert sample["decode_b1_tok_s"] > 0 and sample["prefill_tok_s"] > 0 and "AVX" in sample["build"]
        assert sample["tail_s"] > 0
    gguf = doc["model"]["gguf"]
    assert gguf["llama.cpp"].endswith("shipped/model-bf16.gguf") and gguf["llama.cpp-q8_0"].endswith("model-q8_0.gguf")


def test_the_avx2_columns_run_what_an_avx2_cpu_runs(json_run):
    """On a CPU above AVX2 the capped workers must really run AVX2 code: torch's dispatch level and the float32
    branch of the bf16 kernel (what an AVX2 CPU picks), and transformers in float32."""
    doc, _ = json_run
    if not ABOVE_AVX2:
        assert "sc2-avx2" not in doc["engines"]  # this CPU is the AVX2 case itself
        assert "on AVX2" in doc["engines"]["sc2"]["samples"][0]["kernels"]
        return
    (capped,) = doc["engines"]["sc2-avx2"]["samples"]
    (native,) = doc["engines"]["sc2"]["samples"]
    native_kernels = kernels.available()
    assert capped["kernels"] == (f"Bf16Linear(float32{', native avx2' if native_kernels else ''}) on AVX2"
                                 ) and capped["dtype"] == "bfloat16"
    native_isa = f", native {kernels.isa_for('AVX512')}" if native_kernels else ""  # avx512 or avx512bf16
    assert native["kernels"].startswith(f"Bf16Linear(onednn{native_isa}) on AVX512")
    assert doc["engines"]["transformers-avx2"]["samples"][0]["dtype"] == "float32"
    for sample in (capped, native):
        assert sample["cold_start_s"] == pytest.approx(sample["import_s"] + sample["load_s"] + sample["ttft_cold_s"])
        assert 0 <= sample["rss_added_ratio"] < sample["rss_ratio"]  # (the tiny model may not raise the peak)


def test_variants_add_the_avx2_column_only_above_avx2():
    from sc2cli.bench import plan

    assert plan.parse_variants(None, "cpu", above_avx2=True) == ["sc2-int8", "sc2-avx2"]
    assert plan.parse_variants(None, "cuda", above_avx2=True) == ["sc2-int8", "sc2-eager"]
    assert plan.parse_variants(None, "cpu", above_avx2=False) == ["sc2-int8"]
    bench_plan = plan.BenchPlan(checkpoint=None, label="x", peers=["transformers"], variants=["sc2-avx2"])
    assert speed.peer_engines(bench_plan) == ["transformers", "transformers-avx2"]
    env = speed._worker_env(2, "sc2-avx2")
    assert env["ATEN_CPU_CAPABILITY"] == "avx2" and env["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    import os

    assert speed._worker_env(2, "sc2").get("ATEN_CPU_CAPABILITY") == os.environ.get("ATEN_CPU_CAPABILITY")
