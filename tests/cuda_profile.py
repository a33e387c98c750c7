"""`make gpu-check`'s look inside a prompt on CUDA (not a test: it times): sc2's prefill at several chunk sizes
beside one transformers forward, on the bench's random 3B checkpoint, then torch.profiler's table of the CUDA
kernels of each, so one GPU session sees where the time goes.

    python3 tests/cuda_profile.py [--lengths 512,8192] [--chunks 512,2048,4096] [--shape 3b] [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from sc2cli.bench.checkpoints import random_checkpoint  # noqa: E402
from sc2cli.generation.engine import prefill  # noqa: E402
from sc2cli.model.cache import KVCache  # noqa: E402
from sc2cli.model.transformer import Starcoder2ForCausalLM  # noqa: E402


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def median_seconds(run, repeats: int = 5) -> tuple[float, float, float]:
    """(median, min, max) seconds of `run` after one warm-up call, each synchronised."""
    run()
    times = []
    for _ in range(repeats):
        synchronize()
        start = time.perf_counter()
        run()
        synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times), max(times)


def kernel_table(run, title: str) -> None:
    from torch.profiler import ProfilerActivity, profile

    run()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        run()
        synchronize()
    print(f"\n## {title}\n{prof.key_averages().table(sort_by='self_device_time_total', row_limit=15)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lengths", default="512,8192")
    parser.add_argument("--chunks", default="512,2048,4096")
    parser.add_argument("--shape", default="3b", help="a bench shape (tiny: to try this script on a CPU)")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    import transformers

    device = args.device
    directory, _ = random_checkpoint(args.shape, "bfloat16", progress=lambda m: print(m, file=sys.stderr))
    ours = Starcoder2ForCausalLM.from_pretrained(directory, dtype=torch.bfloat16, device=device).prepare_for_inference()
    ref = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.bfloat16).to(device).eval()
    config = ours.config
    where = torch.cuda.get_device_name() if device.startswith("cuda") else "CPU"
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {where}, {args.shape} shape")
    for length in map(int, args.lengths.split(",")):
        ids = torch.randint(0, config.vocab_size, (1, length), device=device)
        mask = torch.ones_like(ids)

        def sc2(chunk: int):
            def run():  # a fresh cache per prompt, as transformers allocates its own in the forward
                cache = KVCache(config, 1, length + 1, dtype=ours.dtype, device=device)
                return prefill(ours, ids, mask, cache, chunk)
            return run

        def reference():
            with torch.inference_mode():
                return ref(input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=1).logits

        peer, low, high = median_seconds(reference)
        print(f"\n{length} tokens: transformers {length / peer:,.0f} tok/s ({low * 1e3:.1f}-{high * 1e3:.1f} ms)")
        for chunk in sorted({min(int(c), length) for c in args.chunks.split(",")} | {length}):
            took, low, high = median_seconds(sc2(chunk))
            print(f"{length} tokens: sc2 chunk {chunk}: {length / took:,.0f} tok/s ({low * 1e3:.1f}-{high * 1e3:.1f} "
                  f"ms), {peer / took:.2f}x transformers", flush=True)
        kernel_table(sc2(512), f"sc2 prefill, {length} tokens, chunks of 512")
        kernel_table(reference, f"transformers forward, {length} tokens")


if __name__ == "__main__":
    main()
