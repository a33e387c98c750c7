"""`sc2 bench speed`: sc2 against its peers on the same weights, same dtype, same thread count, in one run.

This module runs the comparison (`run_bench`) and collects its samples into one JSON document with a summary per
engine. Rounds alternate sc2 and each peer, because memory bandwidth on a shared machine drifts from minute to
minute; every figure is measured in a fresh process (`python -m sc2cli.bench.workers worker ...`, which prints one
JSON line). Beside it: plan.py (the request resolved into a `BenchPlan`), checkpoints.py (the random-weight
shapes, the GGUF of the llama.cpp peer), roofline.py (bandwidth and the decode roofline), workers.py (the
measurements), tables.py (the table). The names the command (sc2cli/cli/bench.py) uses are importable from here.

What is measured:

- load time: the engine's own loader, from the safetensors (or the GGUF) to a model ready to run;
- time to first token, cold: the first call after loading (pays the page-in of the weights and the kernels'
  first-use set-up), prompt -> first generated token;
- time to first token: the same, warm (the prompt is fresh random ids, so no prefix cache can help);
- prefill tokens/s: the prompt through one call of the engine's cached forward (sc2: `engine.prefill`, chunks of
  512; transformers: one forward with `use_cache=True, logits_to_keep=1`; llama.cpp: `Llama.eval`, n_batch 512);
- prompt tail after its cached prefix: the last 16 tokens of a prompt (a quarter of a shorter one) evaluated after
  the rest is in the engine's cache, as a server that reuses a prompt's prefix does for an editor's next request
  (sc2: `engine.prefill` from the prefix's end; transformers: a forward on its `past_key_values`; llama.cpp: a
  second `Llama.eval`);
- decode tokens/s at batch 1 and batch 4: greedy, EOS ignored, `new_tokens` per row; the clock runs from the
  first generated token to the last, so the figure counts `new_tokens - 1` decode steps per row and no prefill
  (batch 4 is the aggregate over the rows);
- peak RSS: `ru_maxrss` right after loading and at the end of the worker, raw (the interpreter, torch and the
  peer library included), and its ratio to the weight bytes (parameters x bytes per element);
- the machine's memory read bandwidth, in its own fresh process before every engine's measurement and once after
  the last, with the same thread count; each decode sample is also given as a fraction of the roofline of the
  higher of the two measurements around it (the machine gave at least that much then; a phase change during
  the engine's run shows in the one after): batch b can at best make b x bandwidth / bytes of weights read per
  step tokens per second (roofline.py says what is counted).

The llama.cpp peers run through `llama-cpp-python` when it is importable, on GGUFs of the same weights that the
bench exports once (checkpoints.py): `llama.cpp` at the benchmark's precision (BF16 against sc2 bfloat16), and
`llama.cpp-q8_0` against sc2-int8. Which CPU code the bindings were built with goes into the table (an AVX2 build
runs on an AVX-512 machine too). llama-cpp-python's high-level API runs one sequence, so its batch-4 decode is
reported as not measured.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from ..kernels import SWITCH as NATIVE_KERNELS_SWITCH
from .checkpoints import (DTYPE_NAMES, GGUF_SUFFIX, SHAPES, NoGGUF, peer_gguf, random_checkpoint, shape_config,
                          torch_dtype)
from .machine import cpu_model, gpu_name
from .plan import BenchPlan, SpeedRequest, make_plan, prepare
from .roofline import parameter_count, roofline_tok_s, weight_bytes_per_token
from .tables import METRICS, format_value, render_table
from .workers import AVX2_ENV, CAPPED_AT_AVX2, LLAMA_CPP_ENGINES, PEERS, SC2_VARIANTS

# What `sc2 bench speed` (sc2cli/cli/bench.py) uses, besides what is defined here.
__all__ = ["DTYPE_NAMES", "PEERS", "SC2_VARIANTS", "SHAPES", "BenchPlan", "SpeedRequest", "WorkerFailed",
           "make_plan", "prepare", "random_checkpoint", "render_table", "run_bench", "shape_config", "summarize"]

WORKER_MODULE = "sc2cli.bench.workers"  # run with `python -m`: the measuring subprocesses


class WorkerFailed(RuntimeError):
    """A measuring subprocess exited with an error or printed no JSON line."""


def _worker_env(threads: int, engine: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    if engine in CAPPED_AT_AVX2:
        env.update(AVX2_ENV)
    if SC2_VARIANTS.get(engine, {}).get("native_kernels") is False:
        env[NATIVE_KERNELS_SWITCH] = "off"
    root = str(Path(__file__).resolve().parents[2])  # the folder that holds the sc2cli package
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[key] = str(threads)
    env.setdefault("TRANSFORMERS_VERBOSITY", "error")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def _subprocess_json(argv: list[str], threads: int, engine: str | None = None) -> dict:
    command = [sys.executable, "-m", WORKER_MODULE, *argv]
    proc = subprocess.run(command, capture_output=True, text=True, env=_worker_env(threads, engine))
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0 or not lines:
        tail = " ".join((proc.stderr.strip().splitlines() or ["(no output)"])[-1:])
        raise WorkerFailed(f"exit {proc.returncode}: {tail}")
    return json.loads(lines[-1])


def engine_dtype(engine: str, dtype: str) -> str:
    """The dtype an engine runs in: the benchmark's, but float32 for transformers on AVX2 (its best there)."""
    return "float32" if engine == "transformers-avx2" else dtype


def engine_itemsize(engine: str, dtype: str) -> int:
    """Bytes an engine reads per weight: one for int8 and Q8_0, else its dtype's."""
    if engine in ("sc2-int8", "llama.cpp-q8_0"):
        return 1
    return torch_dtype(engine_dtype(engine, dtype)).itemsize


def worker_argv(plan: BenchPlan, engine: str, gguf: Path | None = None) -> list[str]:
    argv = ["worker", "--engine", engine, "--checkpoint", str(plan.checkpoint),
            "--dtype", engine_dtype(engine, plan.dtype),
            "--threads", str(plan.threads), "--prompt-tokens", str(plan.prompt_tokens),
            "--new-tokens", str(plan.new_tokens), "--seed", str(plan.seed), "--device", plan.device]
    if gguf is not None:
        argv += ["--gguf", str(gguf)]
    return argv


def peer_engines(plan: BenchPlan) -> list[str]:
    """The peer columns: each peer asked for; llama.cpp also as Q8_0 when sc2-int8 is measured (its counterpart)."""
    names = []
    for peer in plan.peers:
        if peer == "llama.cpp":
            names += [e for e in LLAMA_CPP_ENGINES if e == "llama.cpp" or "sc2-int8" in plan.variants]
        else:
            names.append(peer)
            if peer == "transformers" and any(v in CAPPED_AT_AVX2 for v in plan.variants):
                names.append("transformers-avx2")
    return names


def gguf_kind(engine: str, dtype: str) -> str:
    return "q8_0" if engine == "llama.cpp-q8_0" else GGUF_SUFFIX[dtype]


def peer_status(peer: str, plan: BenchPlan, ggufs: dict[str, Path],
                progress: Callable[[str], None] = lambda message: None) -> str | None:
    """None when the peer can run here (a llama.cpp peer's GGUF is then in `ggufs`, exported first if needed),
    else why not (shown in the table)."""
    if peer.startswith("transformers"):
        return None if importlib.util.find_spec("transformers") else "not installed"
    if peer in LLAMA_CPP_ENGINES:
        if importlib.util.find_spec("llama_cpp") is None:
            return "not installed"
        if peer == "llama.cpp" and plan.gguf is not None:
            ggufs[peer] = Path(plan.gguf)
            return None
        try:
            ggufs[peer] = peer_gguf(plan.checkpoint, plan.key, gguf_kind(peer, plan.dtype), progress)
        except NoGGUF as err:
            return f"no GGUF: {err}"
        return None
    raise ValueError(f"unknown peer {peer!r}")


def run_bench(plan: BenchPlan, progress: Callable[[str], None] = lambda message: None) -> dict:
    """Run the whole comparison; returns the JSON document (raw samples and summaries)."""
    import torch

    from ..model.config import Starcoder2Config

    config = Starcoder2Config.from_pretrained(plan.checkpoint)
    itemsize = torch.empty((), dtype=torch_dtype(plan.dtype)).element_size()
    params = parameter_count(config)
    weight_bytes = params * itemsize
    per_token = weight_bytes_per_token(config, itemsize)
    engines: dict[str, dict] = {
        v: {"available": True, "reason": None, "samples": [], "errors": []} for v in dict.fromkeys(["sc2", *plan.variants])
    }
    ggufs: dict[str, Path] = {}
    for peer in peer_engines(plan):
        reason = peer_status(peer, plan, ggufs, progress)
        engines[peer] = {"available": reason is None, "reason": reason, "samples": [], "errors": []}
        if reason:
            progress(f"{peer}: {reason}")
    bandwidth: list[dict] = []
    measured: list[tuple[dict, int]] = []  # (a sample, the index of the bandwidth measured just before it)

    def measure_bandwidth() -> dict:
        bw = _subprocess_json(["bandwidth", "--threads", str(plan.threads), "--gib", str(plan.bandwidth_gib),
                               "--device", plan.device], plan.threads)
        bandwidth.append(bw)
        return bw

    for round_index in range(plan.repeats):
        tag = f"round {round_index + 1}/{plan.repeats}"
        for engine, entry in engines.items():
            if not entry["available"]:
                continue
            # Measured between engines, not once a round: a shared machine's bandwidth can move by half between
            # phases minutes apart (40 and 74 GB/s in one 3B run), and a round lasts minutes.
            bw = measure_bandwidth()
            try:
                sample = _subprocess_json(worker_argv(plan, engine, ggufs.get(engine)), plan.threads, engine)
            except WorkerFailed as err:
                entry["errors"].append(str(err))
                progress(f"{tag}: {engine} failed: {err}")
                continue
            sample["round"] = round_index
            sample["engine_bytes_per_token"] = per_token // itemsize * engine_itemsize(engine, plan.dtype)
            measured.append((sample, len(bandwidth) - 1))
            sample["rss_ratio"] = sample["rss_peak_bytes"] / weight_bytes if sample.get("rss_peak_bytes") else None
            if sample.get("rss_peak_bytes") and sample.get("rss_start_bytes"):  # what the model added to the process
                sample["rss_added_ratio"] = (sample["rss_peak_bytes"] - sample["rss_start_bytes"]) / weight_bytes
            parts = [sample.get(k) for k in ("import_s", "load_s", "ttft_cold_s")]
            sample["cold_start_s"] = sum(parts) if None not in parts else None
            entry["samples"].append(sample)
            progress(f"{tag}: {engine}: prefill {format_value(sample.get('prefill_tok_s'), 'rate')} tok/s, decode "
                     f"{format_value(sample.get('decode_b1_tok_s'), 'rate')} tok/s (batch 1), "
                     f"{format_value(sample.get('decode_b4_tok_s'), 'rate')} tok/s (batch 4); bandwidth just "
                     f"before {bw['gbps']:.1f} GB/s")
    if measured:
        measure_bandwidth()  # after the last engine
    for sample, before in measured:
        set_roofline(sample, bandwidth[before]["gbps"], bandwidth[before + 1]["gbps"])
    for entry in engines.values():
        entry["summary"] = summarize(entry["samples"])
        if entry["available"] and not entry["samples"] and entry["errors"]:
            entry["available"], entry["reason"] = False, "failed: " + entry["errors"][0][:80]
    gbps = [b["gbps"] for b in bandwidth]
    bw_median = statistics.median(gbps)
    return {
        "machine": {"cpu": cpu_model(), "threads": plan.threads, "logical_cpus": os.cpu_count(),
                    "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
                    "device": plan.device, "gpu": gpu_name(plan.device)},
        "settings": {"dtype": plan.dtype, "repeats": plan.repeats, "prompt_tokens": plan.prompt_tokens,
                     "new_tokens": plan.new_tokens, "seed": plan.seed, "peers": list(plan.peers),
                     "variants": {v: SC2_VARIANTS[v] for v in engines if v in SC2_VARIANTS},
                     "bandwidth_gib": plan.bandwidth_gib},
        "model": {"label": plan.label, "checkpoint": str(plan.checkpoint), "parameters": params,
                  "weight_bytes": weight_bytes, "bytes_per_token": per_token, "checkpoint_written": plan.written,
                  "gguf": {engine: str(path) for engine, path in ggufs.items()}, **plan.extra},
        "bandwidth": {"gbps": bw_median, "min_gbps": min(gbps), "max_gbps": max(gbps), "samples": bandwidth,
                      "method": "median of torch.sum passes over a float32 tensor, in a fresh process before each "
                                "engine's measurement and after the last"},
        "roofline": {"batch1_tok_s": roofline_tok_s(bw_median, per_token, 1),
                     "batch4_tok_s": roofline_tok_s(bw_median, per_token, 4)},
        "engines": engines,
        "metrics": [{"key": k, "label": label.strip(), "kind": kind, "better": better}
                    for k, label, kind, better in METRICS],
    }


def set_roofline(sample: dict, before_gbps: float, after_gbps: float) -> None:
    """The sample's decode rates as fractions of the roofline at the higher bandwidth measured around it. (int8
    and Q8_0 weights read about one byte per parameter, plus scales; float32 four: engine_bytes_per_token.)"""
    sample["bandwidth_before_gbps"], sample["bandwidth_after_gbps"] = before_gbps, after_gbps
    sample["bandwidth_gbps"] = max(before_gbps, after_gbps)
    for batch in (1, 4):
        rate = sample.get(f"decode_b{batch}_tok_s")
        sample[f"roofline_b{batch}"] = (
            rate / roofline_tok_s(sample["bandwidth_gbps"], sample["engine_bytes_per_token"], batch) if rate else None)


def summarize(samples: list[dict]) -> dict:
    """Per metric, median, min, max and count over an engine's samples (None when no sample has the metric)."""
    out = {}
    for key, *_ in METRICS:
        values = [s[key] for s in samples if s.get(key) is not None]
        out[key] = ({"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}
                    if values else None)
    return out
