"""The speed limit of decode: bytes of weights read per step, the machine's memory read bandwidth, their quotient.

At small batch a decode step is memory-bound: batch b can at best make b x bandwidth / bytes read per step tokens
per second. The bytes read per step are every weight of the model (all linear weights and biases, the norms, the
lm_head) except the embedding matrix, of which one row is read per token (when the lm_head is tied to the
embeddings it reads the matrix in full, so it counts once, in full). KV-cache and activation traffic is left
out, so the roofline is an upper bound. The bandwidth is the median of several `torch.sum` passes over a float32
tensor (1 GiB by default) with the benchmark's thread count, measured in a fresh process every round.
"""

from __future__ import annotations

import statistics
import time

from .checkpoints import meta_model
from .machine import synchronize


def parameter_count(config) -> int:
    """Unique parameters of the causal LM (a tied lm_head counts once)."""
    return meta_model(config).num_parameters()


def weight_bytes_per_token(config, itemsize: int) -> int:
    """Bytes of weights one decode step reads (per step, whatever the batch): every parameter, except that the
    embedding matrix contributes one row, unless the lm_head is tied to it and reads it in full."""
    model = meta_model(config)
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


def measure_bandwidth(threads: int, gib: float = 1.0, passes: int = 7, device: str = "cpu") -> dict:
    """Memory read bandwidth: `torch.sum` over a float32 tensor of `gib` GiB, `passes` timed passes."""
    import torch

    torch.set_num_threads(threads)
    n = max(1, int(gib * 2**30) // 4)
    x = torch.ones(n, dtype=torch.float32, device=device)  # written once, so every page is resident
    x.sum()
    synchronize(device)
    samples = []
    for _ in range(passes):
        t = time.perf_counter()
        x.sum()
        synchronize(device)
        samples.append(n * 4 / (time.perf_counter() - t) / 1e9)
    return {"gbps": statistics.median(samples), "samples_gbps": samples, "bytes": n * 4, "threads": threads,
            "device": device}
