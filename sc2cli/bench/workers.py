"""The measuring workers of `sc2 bench speed`: one engine measured once, in a process of its own.

`python -m sc2cli.bench.workers worker --engine ENGINE ...` measures one engine (`measure_sc2`,
`measure_transformers`, `measure_llama_cpp`) and `python -m sc2cli.bench.workers bandwidth ...` the machine's
memory read bandwidth; either prints one JSON line. The orchestration (speed.py) spawns a fresh process for every
figure so that no measurement inherits another's imports, page-ins or allocator state; what each figure means is
described there.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass

from .checkpoints import DTYPE_NAMES, torch_dtype
from .machine import peak_rss_bytes, synchronize
from .roofline import measure_bandwidth

# sc2 as shipped ("sc2": prepacked weights on CPU, CUDA-graph decode on CUDA) and variants of it.
SC2_VARIANTS = {
    "sc2": {"quantize": "none", "decode": "auto"},
    "sc2-int8": {"quantize": "int8", "decode": "auto"},
    "sc2-eager": {"quantize": "none", "decode": "eager"},
    "sc2-compile": {"quantize": "none", "decode": "compile"},
    "sc2-avx2": {"quantize": "none", "decode": "auto", "cpu": "avx2"},
    # The same without sc2's native decode kernels (SC2_KERNELS=off: torch's `mv`), to measure what they add.
    "sc2-mv": {"quantize": "none", "decode": "auto", "native_kernels": False},
    "sc2-avx2-mv": {"quantize": "none", "decode": "auto", "cpu": "avx2", "native_kernels": False},
    "sc2-avx2-int8": {"quantize": "int8", "decode": "auto", "cpu": "avx2"},
}
PEERS = ("transformers", "llama.cpp")
# What an AVX2 CPU would run, on a CPU above it: every library the engines use capped at AVX2 by its own switch
# (torch's kernels, oneDNN, MKL, fbgemm). transformers runs there at float32, its best dtype without bf16 arithmetic.
AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
            "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2"}
CAPPED_AT_AVX2 = ("sc2-avx2", "sc2-avx2-mv", "sc2-avx2-int8", "transformers-avx2")
# The llama.cpp peers: the GGUF at the benchmark's precision, and Q8_0 (set against sc2-int8) when that variant runs.
LLAMA_CPP_ENGINES = ("llama.cpp", "llama.cpp-q8_0")
ENGINES = (*SC2_VARIANTS, "transformers", "transformers-avx2", *LLAMA_CPP_ENGINES)
WORKER_KEYS = ("engine", "version", "device", "dtype", "threads", "prompt_tokens", "new_tokens", "import_s",
               "load_s", "ttft_cold_s", "ttft_s", "prefill_s", "prefill_tok_s", "tail_s", "decode_b1_s",
               "decode_b1_tok_s", "decode_b4_s", "decode_b4_tok_s", "rss_start_bytes", "rss_load_bytes",
               "rss_peak_bytes", "build", "kernels", "notes")


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


# The tail of a prompt evaluated after its cached prefix: what an editor's request after a keystroke costs a server
# that reuses the prefix (sc2 serve; llama.cpp's server; transformers' past_key_values).
TAIL_TOKENS = 16


def tail_tokens(prompt_tokens: int) -> int:
    """The tail's length: TAIL_TOKENS, or a quarter of a shorter prompt."""
    return max(1, min(TAIL_TOKENS, prompt_tokens // 4))


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


def measure_sc2(a: WorkerArgs, result: dict) -> None:
    """sc2 (one of SC2_VARIANTS) through its own engine: `stream` to generate, `prefill` for the prompt alone."""
    import torch

    from ..model.cache import KVCache
    from ..generation.engine import StopConditions, prefill, stream
    from ..model.transformer import Starcoder2ForCausalLM
    from ..generation.sampling import SamplingParams

    torch.set_num_threads(a.threads)
    result["version"] = _package_version()
    result["import_s"] = time.perf_counter() - result.pop("_started")
    result["rss_start_bytes"] = peak_rss_bytes()

    t = time.perf_counter()
    variant = SC2_VARIANTS[a.engine]
    model = Starcoder2ForCausalLM.from_pretrained(a.checkpoint, dtype=torch_dtype(a.dtype), device=a.device)
    model.prepare_for_inference(variant["quantize"])
    result["kernels"] = _kernels(model)
    synchronize(a.device)
    result["load_s"] = time.perf_counter() - t
    result["rss_load_bytes"] = peak_rss_bytes()
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
    synchronize(a.device)
    t = time.perf_counter()
    logits = prefill(model, ids, mask, cache)
    logits.sum().item()
    synchronize(a.device)
    result["prefill_s"] = time.perf_counter() - t
    result["prefill_tok_s"] = a.prompt_tokens / result["prefill_s"]
    del cache, logits

    split = a.prompt_tokens - tail_tokens(a.prompt_tokens)
    cache = KVCache(config, 1, a.prompt_tokens + 1, dtype=model.dtype, device=a.device)
    prefill(model, ids[:, :split], mask[:, :split], cache)
    synchronize(a.device)
    t = time.perf_counter()
    prefill(model, ids[:, split:], mask[:, split:], cache, start=split).sum().item()
    synchronize(a.device)
    result["tail_s"] = time.perf_counter() - t
    del cache

    result["ttft_s"], times = run(prompts[2:3], no_eos)
    result["decode_b1_s"], result["decode_b1_tok_s"] = _decode_rate(times, 1)
    _, times = run(prompts[2:6], no_eos)
    result["decode_b4_s"], result["decode_b4_tok_s"] = _decode_rate(times, 4)


def _kernels(model) -> str:
    """Which linear kernels the model runs, and the CPU dispatch level torch uses (what a capped run must show)."""
    import torch

    names = sorted({type(m).__name__ + _kernel_detail(m)
                    for m in model.modules() if type(m).__name__ in ("Bf16Linear", "Int8Linear", "Linear")})
    return f"{', '.join(names)} on {torch.backends.cpu.get_cpu_capability()}"


def _kernel_detail(module) -> str:
    """"(float32, native avx2)": the GEMM branch and sc2's decode kernel, where the module has them."""
    parts = [getattr(module, "wide", None), getattr(module, "gemv_isa", None) and f"native {module.gemv_isa}"]
    return f"({', '.join(p for p in parts if p)})" if any(parts) else ""


def measure_transformers(a: WorkerArgs, result: dict) -> None:
    """transformers' AutoModelForCausalLM on the same safetensors: `generate`, with a streamer as the clock."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM
    from transformers.generation.streamers import BaseStreamer

    torch.set_num_threads(a.threads)
    transformers.logging.set_verbosity_error()
    result["version"] = transformers.__version__
    result["import_s"] = time.perf_counter() - result.pop("_started")
    result["rss_start_bytes"] = peak_rss_bytes()

    t = time.perf_counter()
    placement = {} if a.device == "cpu" else {"device_map": a.device}
    model = AutoModelForCausalLM.from_pretrained(a.checkpoint, dtype=torch_dtype(a.dtype), **placement)
    model.eval()
    synchronize(a.device)
    result["load_s"] = time.perf_counter() - t
    result["rss_load_bytes"] = peak_rss_bytes()
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
    synchronize(a.device)
    t = time.perf_counter()
    with torch.inference_mode():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, logits_to_keep=1).logits
        logits.sum().item()
    synchronize(a.device)
    result["prefill_s"] = time.perf_counter() - t
    result["prefill_tok_s"] = a.prompt_tokens / result["prefill_s"]
    del logits

    split = a.prompt_tokens - tail_tokens(a.prompt_tokens)
    with torch.inference_mode():
        cached = model(input_ids=ids[:, :split], use_cache=True, logits_to_keep=1).past_key_values
        synchronize(a.device)
        t = time.perf_counter()
        model(input_ids=ids[:, split:], attention_mask=torch.ones_like(ids), past_key_values=cached, use_cache=True,
              logits_to_keep=1).logits.sum().item()
    synchronize(a.device)
    result["tail_s"] = time.perf_counter() - t
    del cached

    result["ttft_s"], times = run(prompts[2:3], a.new_tokens)
    result["decode_b1_s"], result["decode_b1_tok_s"] = _decode_rate(times, 1)
    _, times = run(prompts[2:6], a.new_tokens)
    result["decode_b4_s"], result["decode_b4_tok_s"] = _decode_rate(times, 4)


def measure_llama_cpp(a: WorkerArgs, result: dict) -> None:
    """llama-cpp-python on a GGUF of the same weights; its high-level API runs one sequence (no batch 4)."""
    import llama_cpp
    from llama_cpp import Llama

    result["version"] = getattr(llama_cpp, "__version__", "?")
    # The CPU code the library was built with (an AVX2 build runs on an AVX-512 machine too, but slower).
    result["build"] = llama_cpp.llama_print_system_info().decode(errors="replace").strip()
    result["import_s"] = time.perf_counter() - result.pop("_started")
    result["rss_start_bytes"] = peak_rss_bytes()
    if not a.gguf:
        raise RuntimeError("no GGUF given")
    t = time.perf_counter()
    llm = Llama(model_path=a.gguf, n_ctx=a.prompt_tokens + a.new_tokens + 8, n_batch=512, n_ubatch=512,
                n_threads=a.threads, n_threads_batch=a.threads, n_gpu_layers=-1 if a.device != "cpu" else 0,
                verbose=False)
    result["load_s"] = time.perf_counter() - t
    result["rss_load_bytes"] = peak_rss_bytes()
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
    split = a.prompt_tokens - tail_tokens(a.prompt_tokens)
    llm.reset()
    llm.eval(prompts[1][:split])
    t = time.perf_counter()
    llm.eval(prompts[1][split:])  # continues the context: the prefix stays in llama.cpp's KV cache
    result["tail_s"] = time.perf_counter() - t
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
    measure = (measure_sc2 if a.engine in SC2_VARIANTS else
               measure_transformers if a.engine.startswith("transformers") else measure_llama_cpp)
    measure(a, result)
    result["rss_peak_bytes"] = peak_rss_bytes()
    return result


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("sc2cli")
    except Exception:  # noqa: BLE001 - a source checkout without metadata
        return "dev"


# ---- entry point of the subprocesses ---------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    started = time.perf_counter()
    parser = argparse.ArgumentParser(prog="python -m sc2cli.bench.workers",
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
