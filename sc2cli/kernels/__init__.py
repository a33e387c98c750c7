"""sc2's native decode kernels: a few rows times bf16 or int8 weights at the memory's speed (`gemv.cpp`), one query
per row over the KV cache (`attention.cpp`) and the rotary embeddings of a step's q and k (`rotary.cpp`); and,
at load, the int8 quantization of a weight (`quantize.cpp`).

They are built with the package when a C++ compiler and torch are there (setup.py) and are optional: where the
library is missing, does not load (built against another torch) or is turned off (SC2_KERNELS=off),
`available()` is False, `unavailable_reason()` says why, and the model layer keeps torch's own kernels.

The instruction set is the caller's choice (`isa_for`, from `devices.cpu_capability`), so that a test can force
each branch and a capped benchmark (ATEN_CPU_CAPABILITY=avx2) runs the AVX2 code on an AVX-512 CPU.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

# The codes the library takes: 0, 1, 2, 3. Levels: "avx512bf16" is the AVX-512 code plus the bf16 dot product,
# which multiplies bf16 weights by rows that come in bf16 (rows in float32 are widened as on "avx512").
ISAS = ("scalar", "avx2", "avx512", "avx512bf16")
ISA_NAMES = {"scalar": "scalar", "avx2": "AVX2", "avx512": "AVX-512", "avx512bf16": "AVX-512 BF16"}
LIBRARY = Path(__file__).with_name("_kernels.so")
_ops = None  # torch.ops.sc2, once the library is loaded
SWITCH = "SC2_KERNELS"  # "off": torch's kernels only (to compare, or to rule the native ones out)


@functools.cache
def _load() -> str | None:
    """None once the library is loaded, else why it is not."""
    if os.environ.get(SWITCH, "").strip().lower() in ("off", "0", "no", "false"):
        return f"turned off by {SWITCH}={os.environ[SWITCH]}"
    if not LIBRARY.exists():
        return "not built (no C++ compiler, or the package was built without torch: see setup.py)"
    import torch  # (here, not at import: the benchmark's parent process names SWITCH without loading torch)

    try:
        torch.ops.load_library(str(LIBRARY))
    except (OSError, RuntimeError) as err:  # e.g. built against another torch: undefined symbols
        return f"{LIBRARY.name} does not load: {str(err).splitlines()[0]}"
    global _ops
    _ops = torch.ops.sc2
    return None


def available() -> bool:
    return _load() is None


def unavailable_reason() -> str | None:
    return _load()


def isa_for(cpu_isa: str) -> str | None:
    """The kernels' instruction set for torch's CPU dispatch level ("AVX512", "AVX2", ...), or None where they have
    no vector code (below AVX2, or not x86): torch's kernels serve there. torch's level says nothing of bf16
    arithmetic, so at "AVX512" the CPU is asked for it. Never one this CPU cannot run (a test that pretends to be
    on a bigger CPU gets the biggest this one has)."""
    wanted = "avx512" if cpu_isa.startswith("AVX512") else "avx2" if cpu_isa.startswith("AVX2") else None
    if wanted == "avx512" and runs_here("avx512bf16"):
        wanted = "avx512bf16"
    if wanted == "avx512" and not runs_here("avx512"):
        wanted = "avx2"
    return wanted if wanted and runs_here(wanted) else None


@functools.cache
def runs_here(isa: str) -> bool:
    """Whether this CPU has the instructions of `isa` (asked of the library, which asks the CPU)."""
    return available() and bool(_ops.isa_supported(ISAS.index(isa)))


def bf16_gemv(weight: Tensor, x: Tensor, isa: str, bias: Tensor | None = None) -> Tensor:
    """x [M, K] times weight [N, K] (bf16) transposed, plus bias [N]: summed in float32, rounded once to x's dtype."""
    return _ops.bf16_gemv(weight, x, bias, ISAS.index(isa))


def int8_gemv(weight: Tensor, scale: Tensor, x: Tensor, isa: str, bias: Tensor | None = None) -> Tensor:
    """x [M, K] times (weight [N, K] int8 * scale [N, 1]) transposed, plus bias [N]: as `bf16_gemv`."""
    return _ops.int8_gemv(weight, scale, x, bias, ISAS.index(isa))


def quantize_int8(weight: Tensor, isa: str) -> tuple[Tensor, Tensor]:
    """(int8 weight, float32 per-row scale) of a bf16, float16 or float32 weight [N, K]: the numbers of
    `linear.quantize_int8_with_torch`, bit for bit (see quantize.cpp)."""
    return _ops.quantize_int8(weight, ISAS.index(isa))


def decode_attention(q: Tensor, keys: Tensor, values: Tensor, mask: Tensor | None, scale: float, isa: str) -> Tensor:
    """One query per row and head, q [B, H, D], over a bf16 or float32 cache [B, KV, L, D] (H a multiple of KV),
    with an additive mask [B or 1, L] or None, in float32: [B, H, D] in q's dtype (see attention.cpp)."""
    return _ops.decode_attention(q, keys, values, mask, scale, ISAS.index(isa))


def rotary_qkv(qkv: Tensor, cos: Tensor, sin: Tensor, heads: int, kv_heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """The fused q/k/v projection [B, S, (H + 2 KV) * D] (bf16 or float32) -> q [B, H, S, D] and k [B, KV, S, D]
    rotated by cos and sin [B or 1, S, D] with torch's numbers (see rotary.cpp), and v [B, KV, S, D], a view."""
    q, k = _ops.rotary_qkv(qkv, cos, sin, heads, kv_heads)
    batch, length, _ = qkv.shape
    v = qkv[..., (heads + kv_heads) * q.shape[-1]:].view(batch, length, kv_heads, q.shape[-1]).transpose(1, 2)
    return q, k, v
