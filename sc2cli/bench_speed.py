"""`sc2 bench speed`: sc2 against its peers on the same weights, same dtype, same thread count, in one run.

What is measured (every figure in a fresh process, `python -m sc2cli.bench_speed worker ...`, which prints one
JSON line; rounds alternate sc2 and each peer, because memory bandwidth on a shared machine drifts from minute
to minute):

- load time: the engine's own loader, from the safetensors (or the GGUF) to a model ready to run;
- time to first token, cold: the first call after loading (pays the page-in of the weights and the kernels'
  first-use set-up), prompt -> first generated token;
- time to first token: the same, warm (the prompt is fresh random ids, so no prefix cache can help);
- prefill tokens/s: the prompt through one call of the engine's cached forward (sc2: `engine.prefill`, chunks of
  512; transformers: one forward with `use_cache=True, logits_to_keep=1`; llama.cpp: `Llama.eval`, n_batch 512);
- decode tokens/s at batch 1 and batch 4: greedy, EOS ignored, `new_tokens` per row; the clock runs from the
  first generated token to the last, so the figure counts `new_tokens - 1` decode steps per row and no prefill
  (batch 4 is the aggregate over the rows);
- peak RSS: `ru_maxrss` right after loading and at the end of the worker, raw (the interpreter, torch and the
  peer library included), and its ratio to the weight bytes (parameters x bytes per element);
- the machine's memory read bandwidth, in its own fresh process at the start of every round: median of several
  `torch.sum` passes over a float32 tensor (1 GiB by default) with the same thread count. Each decode sample is
  also given as a fraction of the roofline of its round: batch b can at best make b x bandwidth / bytes read per
  step tokens per second, where the bytes read per step are every weight of the model (all linear weights and
  biases, the norms, the lm_head) except the embedding matrix, of which one row is read per token (when the
  lm_head is tied to the embeddings it reads the matrix in full, so it counts once, in full). KV-cache and
  activation traffic is left out, so the roofline is an upper bound.

Shapes with random weights (no tokenizer is needed: prompts are random token ids): `s` (~183M parameters, the
"S" shape of the peer measurements), `3b` (the starcoder2-3b shape), `tiny` (for smoke tests). Their checkpoints
are written once per dtype to `$XDG_CACHE_HOME/sc2/bench/<shape>-<dtype>/` (or `~/.cache/sc2/bench/...`) in the
reference layout (config.json + model.safetensors, which transformers loads unchanged), tensor by tensor from a
model built on the meta device, so writing the 3B shape holds one tensor chunk in memory, never the model.

The llama.cpp peer runs through `llama-cpp-python` when it is importable, on a GGUF of the same weights: pass it
with `--gguf`, or put it in the checkpoint folder as `model-bf16.gguf` / `model-f32.gguf` / `model-f16.gguf`.
A GGUF of a checkpoint folder is made with the converter that ships in llama.cpp's source tree (the
llama-cpp-python sdist vendors it under `vendor/llama.cpp/`, with its `gguf-py`; `pip install gguf` also works):

    python vendor/llama.cpp/convert_hf_to_gguf.py ~/.cache/sc2/bench/s-bfloat16 --outtype bf16 \
        --outfile ~/.cache/sc2/bench/s-bfloat16/model-bf16.gguf

The converter needs a tokenizer: copy the tokenizer files of bigcode/starcoder2-3b (tokenizer.json,
tokenizer_config.json) into the folder first; for a tokenizer llama.cpp does not recognise, declare the
pre-tokenizer as `starcoder` (the one llama.cpp uses for bigcode/starcoder2-3b). `--outtype q8_0` gives the int8
peer. llama-cpp-python's high-level API runs one sequence, so its batch-4 decode is reported as not measured.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# sc2 as shipped ("sc2": prepacked weights on CPU, CUDA-graph decode on CUDA) and variants of it.
SC2_VARIANTS = {
    "sc2": {"quantize": "none", "decode": "auto"},
    "sc2-int8": {"quantize": "int8", "decode": "auto"},
    "sc2-eager": {"quantize": "none", "decode": "eager"},
    "sc2-compile": {"quantize": "none", "decode": "compile"},
}
ENGINES = (*SC2_VARIANTS, "transformers", "llama.cpp")
PEERS = ("transformers", "llama.cpp")
SHAPES = ("shipped", "s", "3b", "tiny")
DTYPE_NAMES = ("bfloat16", "float32", "float16")
GGUF_SUFFIX = {"bfloat16": "bf16", "float32": "f32", "float16": "f16"}
INIT_STD = 0.02
CHECKPOINT_FORMAT = 1  # bump to rewrite cached random checkpoints when their recipe changes
_CHUNK_ELEMENTS = 1 << 24  # random weights are drawn and written in chunks of at most this many elements

# (key, label, kind, better): kind picks the number format; better says which way is good (for the reader).
METRICS: tuple[tuple[str, str, str, str], ...] = (
    ("load_s", "load time (s)", "seconds", "lower"),
    ("ttft_cold_s", "time to first token, first call (s)", "seconds", "lower"),
    ("ttft_s", "time to first token (s)", "seconds", "lower"),
    ("prefill_tok_s", "prefill (tok/s)", "rate", "higher"),
    ("decode_b1_tok_s", "decode, batch 1 (tok/s)", "rate", "higher"),
    ("roofline_b1", "  of bandwidth roofline", "percent", "higher"),
    ("decode_b4_tok_s", "decode, batch 4 (tok/s, all rows)", "rate", "higher"),
    ("roofline_b4", "  of bandwidth roofline", "percent", "higher"),
    ("rss_load_bytes", "peak RSS after load (MB)", "megabytes", "lower"),
    ("rss_peak_bytes", "peak RSS at end (MB)", "megabytes", "lower"),
    ("rss_ratio", "peak RSS / weight bytes", "ratio", "lower"),
)
WORKER_KEYS = ("engine", "version", "device", "dtype", "threads", "prompt_tokens", "new_tokens", "import_s",
               "load_s", "ttft_cold_s", "ttft_s", "prefill_s", "prefill_tok_s", "decode_b1_s", "decode_b1_tok_s",
               "decode_b4_s", "decode_b4_tok_s", "rss_start_bytes", "rss_load_bytes", "rss_peak_bytes", "notes")


# ---- shapes and random checkpoints -------------------------------------------------------------------------------

def shape_config(name: str):
    """The config of a named random-weight shape."""
    from .presets import preset_config

    base = preset_config("3b")
    if name == "3b":
        return base
    if name == "s":
        return base.copy(hidden_size=1024, intermediate_size=4096, num_hidden_layers=12, num_attention_heads=16,
                         num_key_value_heads=4, vocab_size=49152, sliding_window=4096,
                         max_position_embeddings=16384)
    if name == "tiny":
        return base.copy(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=512, sliding_window=4096, max_position_embeddings=4096)
    raise ValueError(f"unknown shape {name!r}; known: s, 3b, tiny")


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sc2" / "bench"


def _torch_dtype(name: str):
    import torch

    return {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}[name]


def _meta_model(config):
    import torch

    from .model import Starcoder2ForCausalLM

    with torch.device("meta"):
        return Starcoder2ForCausalLM(config)


def random_checkpoint(shape: str, dtype: str, root: Path | None = None, seed: int = 0,
                      progress: Callable[[str], None] | None = None) -> tuple[Path, bool]:
    """The cached random checkpoint of `shape` in `dtype`: (folder, whether it was written now).

    A folder whose `bench.json` matches the recipe (shape, config, dtype, seed, format) is reused untouched."""
    config = shape_config(shape)
    directory = (root or cache_root()) / f"{shape}-{dtype}"
    recipe = {"format": CHECKPOINT_FORMAT, "shape": shape, "dtype": dtype, "seed": seed, "std": INIT_STD,
              "config": config.to_dict()}
    marker = directory / "bench.json"
    try:
        if json.loads(marker.read_text(encoding="utf-8")) == recipe and (directory / "model.safetensors").is_file():
            return directory, False
    except (OSError, ValueError):
        pass
    if progress:
        progress(f"writing random {shape} weights ({dtype}) once to {directory}")
    write_random_checkpoint(config, dtype, directory, seed=seed, progress=progress)
    marker.write_text(json.dumps(recipe, indent=2) + "\n", encoding="utf-8")
    return directory, True


def _init_value(name: str) -> float | None:
    """A constant for norms and biases (None: random normal)."""
    if "norm" in name:
        return 1.0 if name.endswith(".weight") else 0.0
    if name.endswith(".bias"):
        return 0.0
    return None


def write_random_checkpoint(config, dtype: str, directory: Path, seed: int = 0,
                            progress: Callable[[str], None] | None = None) -> Path:
    """Write config.json + model.safetensors of random weights (normal(0, 0.02); norms 1; biases 0).

    The names and shapes come from a model built on the meta device; the safetensors file is written by hand,
    tensor by tensor and chunk by chunk, so memory stays at one chunk whatever the model size."""
    import torch

    from .weights import SINGLE_FILE, _expected_names

    torch_dtype = _torch_dtype(dtype)
    model = _meta_model(config)
    params = _expected_names(model)
    safetensors_dtype = {torch.bfloat16: "BF16", torch.float32: "F32", torch.float16: "F16"}[torch_dtype]
    itemsize = torch.empty((), dtype=torch_dtype).element_size()
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, p in params.items():
        nbytes = p.numel() * itemsize
        header[name] = {"dtype": safetensors_dtype, "shape": list(p.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    header_bytes += b" " * (-len(header_bytes) % 8)

    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / (SINGLE_FILE + ".tmp")
    started = time.perf_counter()
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(header_bytes)))
        f.write(header_bytes)
        for index, (name, p) in enumerate(params.items()):
            constant = _init_value(name)
            generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
            flat = p.numel()
            for start in range(0, flat, _CHUNK_ELEMENTS):
                count = min(_CHUNK_ELEMENTS, flat - start)
                if constant is None:
                    chunk = torch.randn(count, generator=generator, dtype=torch.float32).mul_(INIT_STD)
                else:
                    chunk = torch.full((count,), constant, dtype=torch.float32)
                f.write(chunk.to(torch_dtype).view(torch.uint8).numpy())
            if progress and (index + 1) % 50 == 0:
                progress(f"  {index + 1}/{len(params)} tensors ({time.perf_counter() - started:.0f}s)")
    os.replace(tmp, directory / SINGLE_FILE)

    saved = config.copy()
    saved.architectures = ["Starcoder2ForCausalLM"]
    saved.dtype = dtype
    for key in ("architectures", "dtype"):
        if key not in saved.extra_keys:
            saved.extra_keys.append(key)
    saved.save_pretrained(directory)
    return directory


# ---- arithmetic ----------------------------------------------------------------------------------------------------

def parameter_count(config) -> int:
    """Unique parameters of the causal LM (a tied lm_head counts once)."""
    return _meta_model(config).num_parameters()


def weight_bytes_per_token(config, itemsize: int) -> int:
    """Bytes of weights one decode step reads (per step, whatever the batch): every parameter, except that the
    embedding matrix contributes one row, unless the lm_head is tied to it and reads it in full."""
    model = _meta_model(config)
    embed = model.model.embed_tokens.weight
    tied = model.lm_head.weight is embed
    total = 0
    for p in {id(p): p for p in model.parameters()}.values():
        if p is embed and not tied:
            total += p.shape[1]
        else:
            total += p.numel()
    return total * itemsize


def roofline_tok_s(bandwidth_gbps: float, bytes_per_token: int, batch: int = 1) -> float:
    """The most tokens/s a memory-bound decode can make: each step reads the weights once for `batch` tokens."""
    return batch * bandwidth_gbps * 1e9 / bytes_per_token


# ---- machine ---------------------------------------------------------------------------------------------------------

def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _maxrss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB, macOS bytes


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def measure_bandwidth(threads: int, gib: float = 1.0, passes: int = 7, device: str = "cpu") -> dict:
    """Memory read bandwidth: `torch.sum` over a float32 tensor of `gib` GiB, `passes` timed passes."""
    import torch

    torch.set_num_threads(threads)
    n = max(1, int(gib * 2**30) // 4)
    x = torch.ones(n, dtype=torch.float32, device=device)  # written once, so every page is resident
    x.sum()
    _sync(device)
    samples = []
    for _ in range(passes):
        t = time.perf_counter()
        x.sum()
        _sync(device)
        samples.append(n * 4 / (time.perf_counter() - t) / 1e9)
    return {"gbps": statistics.median(samples), "samples_gbps": samples, "bytes": n * 4, "threads": threads,
            "device": device}


# ---- workers (each runs in its own process) ------------------------------------------------------------------------

@dataclass
class WorkerArgs:
    engine: str
    checkpoint: str
    dtype: str = "bfloat16"
    threads: int = 1
    prompt_tokens: int = 512
    new_tokens: int = 128
    seed: int = 0
    device: str = "cpu"
    gguf: str | None = None


def _random_prompts(rows: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    import random

    rng = random.Random(seed)
    return [[rng.randrange(1, vocab) for _ in range(length)] for _ in range(rows)]


def _decode_rate(times: list[float], rows: int) -> tuple[float, float | None]:
    """(seconds, tokens/s) from per-step timestamps: the first step is the prefill's token, not timed."""
    if len(times) < 2:
        return 0.0, None
    seconds = times[-1] - times[0]
    return seconds, rows * (len(times) - 1) / seconds if seconds > 0 else None


def _worker_sc2(a: WorkerArgs, result: dict) -> None:
    import torch

    from .cache import KVCache
    from .engine import StopConditions, prefill, stream
    from .model import Starcoder2ForCausalLM
    from .sampling import SamplingParams

    torch.set_num_threads(a.threads)
    result["version"] = _package_version()
    result["import_s"] = time.perf_counter() - result.pop("_started")
    result["rss_start_bytes"] = _maxrss_bytes()

    t = time.perf_counter()
    variant = SC2_VARIANTS[a.engine]
    model = Starcoder2ForCausalLM.from_pretrained(a.checkpoint, dtype=_torch_dtype(a.dtype), device=a.device)
    model.prepare_for_inference(variant["quantize"])
    _sync(a.device)
    result["load_s"] = time.perf_counter() - t
    result["rss_load_bytes"] = _maxrss_bytes()
    config = model.config
    greedy = SamplingParams(temperature=0.0)
    no_eos = StopConditions(token_ids=frozenset(), max_new_tokens=a.new_tokens)

    def run(prompts, stop) -> tuple[float, list[float]]:
        """(time to the first step, a timestamp per decode step); every row must run to the end."""
        step_times: list[float] = []
        rows = len(prompts)
        count = 0
        started = time.perf_counter()
        # Prompt lookup off: random prompts share no code, and a random model's own repeats would draft.
        for _step in stream(model, None, prompts, greedy, stop, prompt_lookup=False, decode=variant["decode"]):
            now = time.perf_counter()
            if count % rows == 0:
                step_times.append(now)
            count += 1
        if count != rows * stop.max_new_tokens:
            raise RuntimeError(f"sc2 generated {count} tokens, expected {rows * stop.max_new_tokens}")
        return step_times[0] - started, step_times

    prompts = _random_prompts(6, a.prompt_tokens, config.vocab_size, a.seed)
    result["ttft_cold_s"], _ = run(prompts[:1], StopConditions(token_ids=frozenset(), max_new_tokens=2))

    ids = torch.tensor(prompts[1:2], dtype=torch.long, device=a.device)
    mask = torch.ones_like(ids)
    cache = KVCache(config, 1, a.prompt_tokens + 1, dtype=model.dtype, device=a.device)
    _sync(a.device)
    t = time.perf_counter()
    logits = prefill(model, ids, mask, cache)
    logits.sum().item()
    _sync(a.device)
    result["prefill_s"] = time.perf_counter() - t
    result["prefill_tok_s"] = a.prompt_tokens / result["prefill_s"]
    del cache, logits

    result["ttft_s"], times = run(prompts[2:3], no_eos)
    result["decode_b1_s"], result["decode_b1_tok_s"] = _decode_rate(times, 1)
    _, times = run(prompts[2:6], no_eos)
    result["decode_b4_s"], result["decode_b4_tok_s"] = _decode_rate(times, 4)


def _worker_transformers(a: WorkerArgs, result: dict) -> None:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM
    from transformers.generation.streamers import BaseStreamer

    torch.set_num_threads(a.threads)
    transformers.logging.set_verbosity_error()
    result["version"] = transformers.__version__
    result["import_s"] = time.perf_counter() - result.pop("_started")
    result["rss_start_bytes"] = _maxrss_bytes()

    t = time.perf_counter()
    placement = {} if a.device == "cpu" else {"device_map": a.device}
    model = AutoModelForCausalLM.from_pretrained(a.checkpoint, dtype=_torch_dtype(a.dtype), **placement)
    model.eval()
    _sync(a.device)
    result["load_s"] = time.perf_counter() - t
    result["rss_load_bytes"] = _maxrss_bytes()
    vocab = model.config.vocab_size
    eos = model.config.eos_token_id
    pad = eos[0] if isinstance(eos, list) else (eos if eos is not None else 0)

    class Clock(BaseStreamer):
        """A timestamp per generated step (generate first hands the streamer the prompt: skipped)."""

        def __init__(self):
            self.times: list[float] = []
            self.prompt_seen = False

        def put(self, value):
            if not self.prompt_seen:
                self.prompt_seen = True
                return
            self.times.append(time.perf_counter())

        def end(self):
            pass

    def run(prompts, new_tokens) -> tuple[float, list[float]]:
        ids = torch.tensor(prompts, dtype=torch.long, device=a.device)
        clock = Clock()
        started = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                 min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad, streamer=clock)
        if out.shape[1] != ids.shape[1] + new_tokens or len(clock.times) != new_tokens:
            raise RuntimeError(f"transformers generated {out.shape[1] - ids.shape[1]} tokens, expected {new_tokens}")
        return clock.times[0] - started, clock.times

    prompts = _random_prompts(6, a.prompt_tokens, vocab, a.seed)
    result["ttft_cold_s"], _ = run(prompts[:1], 2)

    ids = torch.tensor(prompts[1:2], dtype=torch.long, device=a.device)
    _sync(a.device)
    t = time.perf_counter()
    with torch.inference_mode():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, logits_to_keep=1).logits
        logits.sum().item()
    _sync(a.device)
    result["prefill_s"] = time.perf_counter() - t
    result["prefill_tok_s"] = a.prompt_tokens / result["prefill_s"]
    del logits

    result["ttft_s"], times = run(prompts[2:3], a.new_tokens)
    result["decode_b1_s"], result["decode_b1_tok_s"] = _decode_rate(times, 1)
    _, times = run(prompts[2:6], a.new_tokens)
    result["decode_b4_s"], result["decode_b4_tok_s"] = _decode_rate(times, 4)


def _worker_llama_cpp(a: WorkerArgs, result: dict) -> None:
    """llama-cpp-python on a GGUF of the same weights; its high-level API runs one sequence (no batch 4)."""
    import llama_cpp
    from llama_cpp import Llama

    result["version"] = getattr(llama_cpp, "__version__", "?")
    result["import_s"] = time.perf_counter() - result.pop("_started")
    result["rss_start_bytes"] = _maxrss_bytes()
    if not a.gguf:
        raise RuntimeError("no GGUF given")
    t = time.perf_counter()
    llm = Llama(model_path=a.gguf, n_ctx=a.prompt_tokens + a.new_tokens + 8, n_batch=512, n_ubatch=512,
                n_threads=a.threads, n_threads_batch=a.threads, n_gpu_layers=-1 if a.device != "cpu" else 0,
                verbose=False)
    result["load_s"] = time.perf_counter() - t
    result["rss_load_bytes"] = _maxrss_bytes()
    prompts = _random_prompts(3, a.prompt_tokens, llm.n_vocab(), a.seed)

    def run(prompt, new_tokens) -> tuple[float, list[float]]:
        llm.reset()  # n_tokens = 0: no prefix of an earlier prompt is reused
        times: list[float] = []
        started = time.perf_counter()
        generator = llm.generate(prompt, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True)
        for _token in generator:  # llama-cpp-python's generate never stops at EOS by itself
            times.append(time.perf_counter())
            if len(times) == new_tokens:
                break
        generator.close()
        return times[0] - started, times

    result["ttft_cold_s"], _ = run(prompts[0], 2)
    llm.reset()
    t = time.perf_counter()
    llm.eval(prompts[1])
    result["prefill_s"] = time.perf_counter() - t
    result["prefill_tok_s"] = a.prompt_tokens / result["prefill_s"]
    result["ttft_s"], times = run(prompts[2], a.new_tokens)
    result["decode_b1_s"], result["decode_b1_tok_s"] = _decode_rate(times, 1)
    result["decode_b4_s"] = result["decode_b4_tok_s"] = None
    result["notes"].append("batch 4 not measured: llama-cpp-python's Llama runs one sequence")


def run_worker(a: WorkerArgs, started: float | None = None) -> dict:
    """Measure one engine once, in this process; returns the worker's JSON record (see WORKER_KEYS)."""
    result: dict = {key: None for key in WORKER_KEYS}
    result.update(engine=a.engine, device=a.device, dtype=a.dtype, threads=a.threads,
                  prompt_tokens=a.prompt_tokens, new_tokens=a.new_tokens, notes=[])
    result["_started"] = started if started is not None else time.perf_counter()
    worker = _worker_sc2 if a.engine in SC2_VARIANTS else {
        "transformers": _worker_transformers, "llama.cpp": _worker_llama_cpp}[a.engine]
    worker(a, result)
    result["rss_peak_bytes"] = _maxrss_bytes()
    return result


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("sc2cli")
    except Exception:  # noqa: BLE001 - a source checkout without metadata
        return "dev"


# ---- the run: subprocesses, alternating --------------------------------------------------------------------------

@dataclass
class BenchPlan:
    checkpoint: Path
    label: str  # "shape s", "shipped model", or the --model ref
    dtype: str = "bfloat16"
    threads: int = 1
    repeats: int = 3
    prompt_tokens: int = 512
    new_tokens: int = 128
    peers: Sequence[str] = PEERS
    variants: Sequence[str] = ("sc2",)  # sc2 engines measured; "sc2" always
    device: str = "cpu"
    gguf: Path | None = None
    bandwidth_gib: float = 1.0
    seed: int = 0
    written: bool | None = None  # for named shapes: whether the random checkpoint was written by this run
    extra: dict = field(default_factory=dict)


class WorkerFailed(RuntimeError):
    pass


def _worker_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[key] = str(threads)
    env.setdefault("TRANSFORMERS_VERBOSITY", "error")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def _subprocess_json(argv: list[str], threads: int) -> dict:
    command = [sys.executable, "-m", "sc2cli.bench_speed", *argv]
    proc = subprocess.run(command, capture_output=True, text=True, env=_worker_env(threads))
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0 or not lines:
        tail = " ".join((proc.stderr.strip().splitlines() or ["(no output)"])[-1:])
        raise WorkerFailed(f"exit {proc.returncode}: {tail}")
    return json.loads(lines[-1])


def worker_argv(plan: BenchPlan, engine: str) -> list[str]:
    argv = ["worker", "--engine", engine, "--checkpoint", str(plan.checkpoint), "--dtype", plan.dtype,
            "--threads", str(plan.threads), "--prompt-tokens", str(plan.prompt_tokens),
            "--new-tokens", str(plan.new_tokens), "--seed", str(plan.seed), "--device", plan.device]
    if plan.gguf is not None:
        argv += ["--gguf", str(plan.gguf)]
    return argv


def peer_status(peer: str, plan: BenchPlan) -> str | None:
    """None when the peer can run here, else why not (shown in the table)."""
    if peer == "transformers":
        return None if importlib.util.find_spec("transformers") else "not installed"
    if peer == "llama.cpp":
        if importlib.util.find_spec("llama_cpp") is None:
            return "not installed"
        if plan.gguf is None or not Path(plan.gguf).is_file():
            return "no GGUF (see --gguf)"
        return None
    raise ValueError(f"unknown peer {peer!r}")


def default_gguf(checkpoint: Path, dtype: str) -> Path | None:
    path = checkpoint / f"model-{GGUF_SUFFIX[dtype]}.gguf"
    return path if path.is_file() else None


def run_bench(plan: BenchPlan, progress: Callable[[str], None] = lambda message: None) -> dict:
    """Run the whole comparison; returns the JSON document (raw samples and summaries)."""
    import torch

    from .config import Starcoder2Config

    config = Starcoder2Config.from_pretrained(plan.checkpoint)
    itemsize = torch.empty((), dtype=_torch_dtype(plan.dtype)).element_size()
    params = parameter_count(config)
    weight_bytes = params * itemsize
    per_token = weight_bytes_per_token(config, itemsize)
    if plan.gguf is None:
        plan.gguf = default_gguf(plan.checkpoint, plan.dtype)
    engines: dict[str, dict] = {
        v: {"available": True, "reason": None, "samples": [], "errors": []} for v in dict.fromkeys(["sc2", *plan.variants])
    }
    for peer in plan.peers:
        reason = peer_status(peer, plan)
        engines[peer] = {"available": reason is None, "reason": reason, "samples": [], "errors": []}
        if reason:
            progress(f"{peer}: {reason}")
    bandwidth: list[dict] = []
    for round_index in range(plan.repeats):
        tag = f"round {round_index + 1}/{plan.repeats}"
        bw = _subprocess_json(["bandwidth", "--threads", str(plan.threads), "--gib", str(plan.bandwidth_gib),
                               "--device", plan.device], plan.threads)
        bandwidth.append(bw)
        progress(f"{tag}: memory read bandwidth {bw['gbps']:.1f} GB/s")
        for engine, entry in engines.items():
            if not entry["available"]:
                continue
            try:
                sample = _subprocess_json(worker_argv(plan, engine), plan.threads)
            except WorkerFailed as err:
                entry["errors"].append(str(err))
                progress(f"{tag}: {engine} failed: {err}")
                continue
            sample["round"] = round_index
            sample["bandwidth_gbps"] = bw["gbps"]
            # int8 weights read one byte per parameter (plus a scale per row) instead of `itemsize`.
            engine_bytes = per_token // itemsize if "int8" in engine else per_token
            for batch in (1, 4):
                rate = sample.get(f"decode_b{batch}_tok_s")
                sample[f"roofline_b{batch}"] = (rate / roofline_tok_s(bw["gbps"], engine_bytes, batch)
                                                if rate else None)
            sample["rss_ratio"] = sample["rss_peak_bytes"] / weight_bytes if sample.get("rss_peak_bytes") else None
            entry["samples"].append(sample)
            progress(f"{tag}: {engine}: prefill {_fmt(sample.get('prefill_tok_s'), 'rate')} tok/s, decode "
                     f"{_fmt(sample.get('decode_b1_tok_s'), 'rate')} tok/s (batch 1), "
                     f"{_fmt(sample.get('decode_b4_tok_s'), 'rate')} tok/s (batch 4)")
    for entry in engines.values():
        entry["summary"] = summarize(entry["samples"])
        if entry["available"] and not entry["samples"] and entry["errors"]:
            entry["available"], entry["reason"] = False, "failed: " + entry["errors"][0][:80]
    gbps = [b["gbps"] for b in bandwidth]
    bw_median = statistics.median(gbps)
    return {
        "machine": {"cpu": cpu_model(), "threads": plan.threads, "logical_cpus": os.cpu_count(),
                    "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
                    "device": plan.device, "gpu": _gpu_name(plan.device)},
        "settings": {"dtype": plan.dtype, "repeats": plan.repeats, "prompt_tokens": plan.prompt_tokens,
                     "new_tokens": plan.new_tokens, "seed": plan.seed, "peers": list(plan.peers),
                     "variants": {v: SC2_VARIANTS[v] for v in engines if v in SC2_VARIANTS},
                     "bandwidth_gib": plan.bandwidth_gib},
        "model": {"label": plan.label, "checkpoint": str(plan.checkpoint), "parameters": params,
                  "weight_bytes": weight_bytes, "bytes_per_token": per_token, "checkpoint_written": plan.written,
                  "gguf": str(plan.gguf) if plan.gguf else None, **plan.extra},
        "bandwidth": {"gbps": bw_median, "min_gbps": min(gbps), "max_gbps": max(gbps), "samples": bandwidth,
                      "method": "median of torch.sum passes over a float32 tensor, fresh process per round"},
        "roofline": {"batch1_tok_s": roofline_tok_s(bw_median, per_token, 1),
                     "batch4_tok_s": roofline_tok_s(bw_median, per_token, 4)},
        "engines": engines,
        "metrics": [{"key": k, "label": label.strip(), "kind": kind, "better": better}
                    for k, label, kind, better in METRICS],
    }


def _gpu_name(device: str) -> str | None:
    if not device.startswith("cuda"):
        return None
    import torch

    return torch.cuda.get_device_name(torch.device(device))


def summarize(samples: list[dict]) -> dict:
    out = {}
    for key, *_ in METRICS:
        values = [s[key] for s in samples if s.get(key) is not None]
        out[key] = ({"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}
                    if values else None)
    return out


# ---- the table -----------------------------------------------------------------------------------------------------

def _fmt(value: float | None, kind: str) -> str:
    if value is None:
        return "–"
    if kind == "seconds":
        return f"{value:.3f}" if value < 10 else f"{value:.1f}"
    if kind == "rate":
        return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"
    if kind == "percent":
        return f"{value:.0%}" if value >= 0.1 else f"{value:.1%}"
    if kind == "megabytes":
        return f"{value / 1e6:,.0f}"
    return f"{value:.2f}"


def _cell(stats: dict | None, kind: str) -> str:
    if not stats:
        return "–"
    median = _fmt(stats["median"], kind)
    if stats["n"] < 2:
        return median
    return f"{median} ({_fmt(stats['min'], kind)}–{_fmt(stats['max'], kind)})"


def render_table(doc: dict) -> str:
    """Header lines naming the machine, then a Markdown table: rows = metrics, columns = engines + sc2/peer."""
    machine, settings, model, bw = doc["machine"], doc["settings"], doc["model"], doc["bandwidth"]
    engines = doc["engines"]
    variants = [v for v in engines if v in SC2_VARIANTS and v != "sc2"]
    peers = [p for p in engines if p not in SC2_VARIANTS]
    versions = [f"torch {machine['torch']}"]
    for name, entry in engines.items():
        if entry["samples"] and name not in SC2_VARIANTS:
            versions.append(f"{name} {entry['samples'][0].get('version')}")
    where = machine["cpu"] + (f", GPU {machine['gpu']}" if machine.get("gpu") else "")
    bw_range = f" ({bw['min_gbps']:.1f}–{bw['max_gbps']:.1f})" if len(bw["samples"]) > 1 else ""
    lines = [
        f"machine: {where}; {machine['threads']} thread{'s' if machine['threads'] != 1 else ''}; "
        f"{', '.join(versions)}; device {machine['device']}",
        f"model: {model['label']}, {model['parameters'] / 1e6:,.1f}M parameters, {settings['dtype']}, "
        f"{model['weight_bytes'] / 1e6:,.1f} MB of weights",
        f"run: {settings['prompt_tokens']}-token random prompt, {settings['new_tokens']} new tokens (greedy, EOS "
        f"ignored), {settings['repeats']} round(s) alternating engines, each measurement in a fresh process",
        f"memory read bandwidth: {bw['gbps']:.1f} GB/s{bw_range}; weights read per decode step "
        f"{model['bytes_per_token'] / 1e6:,.1f} MB -> roofline {doc['roofline']['batch1_tok_s']:,.0f} tok/s at "
        f"batch 1, {doc['roofline']['batch4_tok_s']:,.0f} at batch 4",
        "cells: median (min–max); ratio = sc2 median / peer median (tok/s: higher is better; s, MB: lower); "
        "sc2 = prepacked bf16 weights on CPU, CUDA-graph decode on CUDA; sc2-int8 = --quantize int8; "
        "sc2-eager = no CUDA graph; sc2-compile = torch.compile + CUDA graph",
        "",
    ]
    columns = ["sc2", *variants, *peers]
    ratios = [("sc2", p) for p in peers] + [(v, "sc2") for v in variants]
    header = ["metric", *columns, *[f"{a}/{b}" for a, b in ratios]]
    rows = [["available", *[("yes" if engines[c]["available"] else engines[c]["reason"]) for c in columns],
             *["" for _ in ratios]]]
    for key, label, kind, _better in METRICS:
        row = [label, *[_cell(engines[c]["summary"].get(key), kind) for c in columns]]
        for a_name, b_name in ratios:
            a, b = engines[a_name]["summary"].get(key), engines[b_name]["summary"].get(key)
            row.append(f"{a['median'] / b['median']:.2f}x" if a and b and b["median"] else "–")
        rows.append(row)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells):
        padded = (c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        return "| " + " | ".join(padded) + " |"

    lines.append(line(header))
    lines.append("|" + "|".join("-" * (w + 2) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|")
    lines.extend(line(r) for r in rows)
    return "\n".join(lines) + "\n"


# ---- entry point of the subprocesses ---------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    started = time.perf_counter()
    parser = argparse.ArgumentParser(prog="python -m sc2cli.bench_speed",
                                     description="Subprocesses of `sc2 bench speed`: each prints one JSON line.")
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("worker", help="measure one engine once")
    w.add_argument("--engine", choices=ENGINES, required=True)
    w.add_argument("--checkpoint", required=True)
    w.add_argument("--dtype", choices=DTYPE_NAMES, default="bfloat16")
    w.add_argument("--threads", type=int, default=1)
    w.add_argument("--prompt-tokens", type=int, default=512)
    w.add_argument("--new-tokens", type=int, default=128)
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--device", default="cpu")
    w.add_argument("--gguf", default=None)
    b = sub.add_parser("bandwidth", help="measure the memory read bandwidth")
    b.add_argument("--threads", type=int, default=1)
    b.add_argument("--gib", type=float, default=1.0)
    b.add_argument("--passes", type=int, default=7)
    b.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.command == "bandwidth":
        record = measure_bandwidth(args.threads, args.gib, args.passes, args.device)
    else:
        record = run_worker(WorkerArgs(engine=args.engine, checkpoint=args.checkpoint, dtype=args.dtype,
                                       threads=args.threads, prompt_tokens=args.prompt_tokens,
                                       new_tokens=args.new_tokens, seed=args.seed, device=args.device,
                                       gguf=args.gguf), started=started)
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
