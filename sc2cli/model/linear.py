"""Inference-only replacements for `nn.Linear`, chosen at load time by `prepare_for_inference`.

Decode multiplies every weight matrix by one vector per token, so its speed is how fast the weights stream from
memory. Two replacements:

- `Bf16Linear` (CPU, bfloat16, any x86 CPU with AVX2 or better: `devices.cpu_capability`): the checkpoint's own
  bf16 weights, used where they lie (no copy, no repacking). A decode step's few rows go through sc2's native
  kernel (`sc2cli.kernels`: bf16 weights widened in registers, float32 sums, AVX2 or AVX-512 code), or torch's
  matrix-vector product where the kernel was not built; more rows through oneDNN's bf16 GEMM where the CPU has
  bf16 arithmetic, else (AVX2) through the native kernel too, or the float32 GEMM on a float32 copy made for the
  call where the kernel was not built. (It replaced a prepacked oneDNN
  weight: measured on the ~180M shape's matrices on an AVX-512 BF16 / AMX Xeon, 2 threads, the bf16 `mv` streamed
  10.7-21 GB/s against the prepacked kernel's 8-10 at one row, `F.linear` matched it at 4 and 512 rows, and the
  repacking doubled the load time and the memory while it ran.)
- `Int8Linear` (`--quantize int8`, any device): symmetric per-output-channel int8 weights (scale = max|w| / 127)
  with the scales in the activation dtype. A decode step's few rows go through sc2's native int8 kernel where it
  was built (weight-only: the activations stay float32); on x86 everything else goes through fbgemm's int8
  GEMM, elsewhere up to `GEMV_ROWS` rows through torch's fused int8 kernel and longer inputs through the
  dequantized matrix.

A prepared model is for inference only (the fused q/k/v and the int8 weights no longer carry checkpoint names).
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import devices, kernels

QUANTIZE_CHOICES = ("none", "int8")
GEMV_ROWS = 16


def native_kernel_isa(device: torch.device) -> str | None:
    """The instruction set sc2's native decode kernels run here (`kernels.ISAS`: "avx2", "avx512", "avx512bf16"),
    or None where they do not (another device, a CPU below AVX2, or the kernels not built:
    `kernels.unavailable_reason`)."""
    if device.type != "cpu" or not kernels.available():
        return None
    return kernels.isa_for(devices.cpu_capability().isa)


def prompts_on_kernel(wide: str, gemv_isa: str | None) -> bool:
    """Whether `Bf16Linear` gives a prompt's rows to the native kernel too: where the CPU has no bf16 arithmetic
    (`wide` "float32": AVX2) and on AVX-512 without bf16 instructions, whose bf16 GEMM oneDNN emulates (measured
    with oneDNN capped at AVX512_CORE, a ~180M layer's four products: 149 GFLOP/s at 512 rows against the
    kernel's 289, 78 against 230 at 16). With AVX-512 BF16 or AMX, oneDNN's GEMM stays (753 GFLOP/s there)."""
    return gemv_isa is not None and (wide == "float32" or gemv_isa == "avx512")


def bf16_kernel(device: torch.device, dtype: torch.dtype) -> str | None:
    """How `Bf16Linear` multiplies more than one row here ("onednn" or "float32"), or None where it does not apply
    (another device or dtype, or a CPU below AVX2, whose bf16 `mv` has no vector code)."""
    if device.type != "cpu" or dtype != torch.bfloat16:
        return None
    products = devices.cpu_capability().bf16_products
    return "float32" if products == "onednn" and not torch.backends.mkldnn.is_available() else products


# Without the native kernel, decode steps at most this many rows wide stream the weight once per row (`torch.mv`)
# on CPUs without bf16 arithmetic; wider ones, and every prompt, go through a GEMM.
ROWS_PER_ROW_GEMV = 4
# With it, decode steps and draft checks at most this many rows wide go through it: one pass over the weight per 4
# rows (kMaxRows in gemv.cpp), each row's numbers those of a step of one row.
NATIVE_DECODE_ROWS = 16
# Rows of a float32 GEMM on CPUs without bf16 arithmetic: always a multiple of this many (the rows padded), so that
# a row's result never depends on how many rows came with it (see `Bf16Linear`).
FLOAT32_BLOCK = 16
# ... and at most this many bytes of the weight are upcast to float32 at a time.
FLOAT32_SLICE_BYTES = 8 << 20
_decoding: contextvars.ContextVar[bool] = contextvars.ContextVar("sc2_decode_step", default=False)


class LogitsHead:
    """Mixin of the lm_head's replacement (`prepare_for_inference` sets `logits_head`): its products of a few rows
    take the decode path at any time, not only in decode steps. A prompt's logits are its last row's alone
    (`logits_to_keep=1`), so that row comes alone whether the prompt is evaluated whole or after a cached prefix,
    and nothing in the model or its cache is computed from the logits. Where a prompt's rows take a GEMM, this
    turns it into one pass over the head's bf16 rows: 10.6 -> 7 ms for 3B's head with AVX-512 BF16; on AVX2,
    before its prompts took the kernel too, the float32 GEMM on a float32 copy of the head took 53 ms on the
    ~180M shape and 163 on 3B, against 3 and 7 (measured)."""

    logits_head = False

    def few_row_path(self) -> bool:
        return self.logits_head or _decoding.get()


@contextlib.contextmanager
def decode_step() -> Iterator[None]:
    """Marks the products of one decode step (one new token per row): the only place `Bf16Linear` uses `mv`."""
    token = _decoding.set(True)
    try:
        yield
    finally:
        _decoding.reset(token)


class Bf16Linear(LogitsHead, nn.Module):
    """CPU, bfloat16 weights kept as the checkpoint stores them (no copy, no repacking: loading is reading).

    A decode step multiplies the weight by one vector per sequence: that goes through sc2's native kernel
    (`gemv_isa`: AVX2 or AVX-512 code, one pass over the weight for up to `ROWS_PER_ROW_GEMV` rows; on AVX2 1.3x
    the bytes per second of torch's bf16 `mv`, measured), or, where it was not built, through torch's `mv`
    (bf16 weights, float32 sums), at 1.2-2x the bytes per second of oneDNN's GEMM for one row (measured on the
    ~180M shape). A prompt's rows go where the CPU (`wide`, from `devices.cpu_capability`) does them best:
    - "onednn": `F.linear`, oneDNN's bf16 GEMM (AVX-512 BF16, AMX, AVX-NE-CONVERT), except on AVX-512 without
      bf16 instructions, where oneDNN emulates them and the native kernel is faster (`prompts_on_kernel`);
    - "float32" (AVX2: no bf16 arithmetic): the native kernel too, every row summed as a decode step sums it
      (the kernel keeps a cache-sized block of weight rows while groups of 6 rows pass over it: 162-169
      GFLOP/s for a ~180M layer at 512 rows, where the float32 GEMM with its upcasts made 175-181; 1.25x it
      at 64 rows, 2.4x at 16, 6-9x for the 1-4 rows of a prompt's rest after a cached prefix). Where the
      kernel was not built: the float32 GEMM on a float32 copy of the weight made for that call (never kept:
      the weight stays 16-bit in memory), the rows padded to a multiple of `FLOAT32_BLOCK`; decode steps of a
      few rows: one `mv` per row.

    Why `mv` only in decode steps, and padded rows: the same prompt row must give the same numbers whether it
    is evaluated with the whole prompt or alone (a server that reuses a cached prefix evaluates only the rest,
    often a single token). The native kernel and oneDNN's bf16 GEMM give a row the same sums whatever the row
    count, `mv` sums in another order, and the float32 GEMM (MKL's) changes its kernel for small row counts:
    measured, a row's numbers differ between counts 1, 2, 3, 5, 6, 7 and 9 (two threads) and are the same for
    every multiple of 4 from 4 to 516, at 1 to 16 threads, with MKL's AVX, AVX2 and AVX-512 code
    (`test_a_prompt_row_has_the_same_numbers_alone_or_with_the_whole_prompt` checks it on each machine). So
    there a prompt's rows are padded to a multiple of 16 (a margin over 4) and multiplied in one GEMM. (The
    lm_head is the exception, see `LogitsHead`: the decode path for a prompt's last row.)"""

    def __init__(self, weight: Tensor, bias: Tensor | None, wide: str, gemv_isa: str | None = None) -> None:
        super().__init__()
        if wide not in ("onednn", "float32"):
            raise ValueError(f"wide must be onednn or float32, not {wide!r}")
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.weight = weight.detach()
        self.bias = bias.detach() if bias is not None else None
        self.wide = wide
        self.gemv_isa = gemv_isa  # sc2's native decode kernel, or None: torch's `mv`
        self.prompts_on_kernel = prompts_on_kernel(wide, gemv_isa)

    def forward(self, x: Tensor) -> Tensor:
        rows = x.reshape(-1, self.in_features)
        count = rows.shape[0]
        few_rows = self.few_row_path()
        if self.prompts_on_kernel or (few_rows and self.gemv_isa and count <= NATIVE_DECODE_ROWS):
            out = kernels.bf16_gemv(self.weight, rows, self.gemv_isa, self.bias)
        elif few_rows and (count == 1 or (self.wide == "float32" and count <= ROWS_PER_ROW_GEMV)):
            out = torch.stack([torch.mv(self.weight, row) for row in rows])
            if self.bias is not None:
                out = out + self.bias
        elif self.wide == "onednn":
            out = F.linear(rows, self.weight, self.bias)
        else:
            out = self._float32_gemm(rows).to(x.dtype)
        return out.reshape(*x.shape[:-1], self.out_features)

    def _float32_gemm(self, rows: Tensor) -> Tensor:
        count = rows.shape[0]
        padded = -(-count // FLOAT32_BLOCK) * FLOAT32_BLOCK
        if padded == count:
            inputs = rows.float()
        else:
            inputs = torch.zeros(padded, self.in_features, dtype=torch.float32)
            inputs[:count] = rows
        out = torch.empty(padded, self.out_features, dtype=torch.float32)
        # The float32 copy is made a slice of output rows at a time: a whole one (the lm_head's is 200 MB on the
        # ~180M shape) would raise the peak memory by its size at every prompt. Each slice's product is written
        # into its columns of `out` (a row-major view: the GEMM writes there, no concatenation after).
        step = max(1, FLOAT32_SLICE_BYTES // (4 * self.in_features))
        for first in range(0, self.out_features, step):
            columns = slice(first, first + step)
            weight = self.weight[columns].float().t()
            if self.bias is None:
                torch.mm(inputs, weight, out=out[:, columns])
            else:
                torch.addmm(self.bias[columns].float(), inputs, weight, out=out[:, columns])
        return out[:count]


QUANTIZABLE_NATIVELY = (torch.bfloat16, torch.float16, torch.float32)


def quantize_int8(weight: Tensor) -> tuple[Tensor, Tensor]:
    """(int8 weight, float32 per-row scale) with weight ~= q * scale[:, None]; all-zero rows get scale 1:
    scale = max |w| / 127 per row, q = w / scale rounded to the nearest integer, ties to even.

    On the CPU by sc2's native kernel where it is built (the 3B shape's weights: 11.4 s with torch's operations,
    ~1 s there), elsewhere with torch's operations; the same numbers either way."""
    if weight.device.type == "cpu" and weight.dtype in QUANTIZABLE_NATIVELY and kernels.available():
        return kernels.quantize_int8(weight.detach().contiguous(), native_kernel_isa(weight.device) or "scalar")
    return quantize_int8_with_torch(weight)


def quantize_int8_with_torch(weight: Tensor) -> tuple[Tensor, Tensor]:
    """`quantize_int8` with torch's operations, `FLOAT32_SLICE_BYTES` of float32 rows at a time: the whole matrix
    in float32, with its temporaries, was several times the lm_head's size at the load's peak."""
    q = torch.empty(weight.shape, dtype=torch.int8, device=weight.device)
    scale = torch.empty(weight.shape[0], dtype=torch.float32, device=weight.device)
    step = max(1, FLOAT32_SLICE_BYTES // (4 * weight.shape[1]))
    for start in range(0, weight.shape[0], step):
        rows = slice(start, start + step)
        w = weight[rows].detach().float()
        s = w.abs().amax(dim=1) / 127.0
        s = torch.where(s > 0, s, torch.ones_like(s))
        q[rows] = torch.round(w / s[:, None]).clamp_(-127, 127).to(torch.int8)
        scale[rows] = s
    return q, scale


def _x86_int8_engine() -> bool:
    return "x86" in torch.backends.quantized.supported_engines or "fbgemm" in torch.backends.quantized.supported_engines


def _pack_for_x86(q: Tensor, scale: Tensor, bias: Tensor | None):
    """The int8 weight in the layout of the x86 (fbgemm) int8 GEMM, which reads it at close to the memory's
    speed. (Building it goes through torch's quantized-tensor API, deprecated but still the only door to that
    kernel; its warning is not the user's business.)"""
    _hide_the_quantized_tensor_deprecation()
    engine = "x86" if "x86" in torch.backends.quantized.supported_engines else "fbgemm"
    torch.backends.quantized.engine = engine
    zero = torch.zeros(q.shape[0], dtype=torch.long)
    qweight = torch._make_per_channel_quantized_tensor(q, scale.double(), zero, 0)
    return torch.ops.quantized.linear_prepack(qweight, bias.float() if bias is not None else None)


@functools.cache
def _hide_the_quantized_tensor_deprecation() -> None:
    """A filter for that warning alone, added once, rather than all warnings set aside and restored around each
    call: layers are packed on several threads at once (`replacements`), and `warnings.catch_warnings` is not
    thread-safe."""
    warnings.filterwarnings("ignore", message="torch.quantize_per_tensor, torch.quantize_per_channel and other "
                            "quantized tensor creation functions", category=UserWarning)


class Int8Linear(LogitsHead, nn.Module):
    """On x86 CPUs every product runs on fbgemm's int8 GEMM, which also rounds the activations to int8 on the
    fly (dynamic quantization, one scale per block of `GEMV_ROWS` rows, so a long prompt rounds like decode
    does); it is also 1.7x faster than dequantizing for a 512-token prefill, and the int8 weight then exists
    once, in fbgemm's layout. Elsewhere: torch's weight-only int8 kernel for a few rows, dequantization
    beyond.

    Without VNNI (AVX2, early AVX-512) fbgemm adds pairs of u8 x s8 products in a saturating 16-bit sum, which
    8-bit activations overflow (255 * 127 * 2 > 32767; on fbgemm's AVX2 kernels, errors of 3-7 were measured on
    outputs of 11-22). There the activations are rounded to 7 bits (`reduce_range`): 127 * 127 * 2 <= 32767, so
    no sum saturates and the result is exact for 7-bit activations (the same numbers on AVX2 and VNNI kernels),
    at twice the activation rounding step of the VNNI path. The choice is `devices.cpu_capability().int8_vnni`."""

    def __init__(self, weight: Tensor, bias: Tensor | None, dtype: torch.dtype, gemv_isa: str | None = None
                 ) -> None:
        super().__init__()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        q, scale = quantize_int8(weight)
        self.x86_packed = (_pack_for_x86(q, scale, bias) if weight.device.type == "cpu" and _x86_int8_engine()
                           else None)
        # 7-bit activations where fbgemm would saturate 8-bit ones (see the class docstring).
        self.reduce_range = self.x86_packed is not None and not devices.cpu_capability().int8_vnni
        # sc2's native decode kernel reads the plain int8 weight (kept beside fbgemm's copy: one more byte per
        # weight, two in all, the size of a bf16 checkpoint) with the float32 scales.
        self.gemv_isa = gemv_isa
        plain = self.x86_packed is None or gemv_isa is not None
        self.register_buffer("weight_int8", q.contiguous() if plain else None)
        self.register_buffer("gemv_scale", scale.float().contiguous() if gemv_isa else None, persistent=False)
        self.register_buffer("scale", scale.to(dtype))
        self.register_buffer("bias", bias.detach().clone() if bias is not None else None)
        self.fused_kernel = True  # cleared the first time the int8 kernel refuses these inputs

    def dequantized(self, dtype: torch.dtype) -> Tensor:
        q = self.weight_int8
        if q is None:  # only in fbgemm's layout (slow to unpack: for checks, not for the forward)
            q = torch.ops.quantized.linear_unpack(self.x86_packed)[0].int_repr()
        return q.to(dtype) * self.scale.to(dtype)[:, None]

    def forward(self, x: Tensor) -> Tensor:
        rows = x.reshape(-1, self.in_features)
        if self.few_row_path() and self.gemv_isa and rows.shape[0] <= NATIVE_DECODE_ROWS:
            out = kernels.int8_gemv(self.weight_int8, self.gemv_scale, rows, self.gemv_isa, self.bias)
            return out.reshape(*x.shape[:-1], self.out_features)
        if self.x86_packed is not None:
            blocks = rows.float().split(GEMV_ROWS)
            dynamic = torch.ops.quantized.linear_dynamic
            out = torch.cat([dynamic(b, self.x86_packed, self.reduce_range) for b in blocks])
            return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)  # (the bias is in the packed weight)
        if rows.shape[0] <= GEMV_ROWS and self.fused_kernel and x.dtype == self.scale.dtype:
            try:
                out = torch.ops.aten._weight_int8pack_mm(rows.contiguous(), self.weight_int8, self.scale)
            except (RuntimeError, NotImplementedError):
                self.fused_kernel = False  # e.g. a device or shape the kernel does not cover
                out = F.linear(rows, self.dequantized(x.dtype))
        else:
            out = F.linear(rows, self.dequantized(x.dtype))
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.reshape(*x.shape[:-1], self.out_features)


def replacements(layers: Sequence[tuple[Tensor, Tensor | None]], quantize: str, workers: int | None = None
                 ) -> Iterator[nn.Module | None]:
    """`replacement` of each (weight, bias), in order, each yielded as soon as it is built (so that the caller can
    let go of its checkpoint weight before the next ones pile up). int8 ones are built on `workers` threads at once
    (default: torch's thread count): fbgemm's packing runs on one core, and was 19.8 s of the 3B shape's 32 s int8
    load on two cores."""
    workers = torch.get_num_threads() if workers is None else workers
    if quantize != "int8" or workers < 2:
        yield from (replacement(weight, bias, quantize) for weight, bias in layers)
        return
    with ThreadPoolExecutor(workers) as pool:
        yield from pool.map(lambda layer: replacement(*layer, quantize), layers)


def replacement(weight: Tensor, bias: Tensor | None, quantize: str) -> nn.Module | None:
    """The faster module for this weight and bias, or None where plain `F.linear` is the best there is."""
    gemv_isa = native_kernel_isa(weight.device)
    if quantize == "int8":
        return Int8Linear(weight, bias, weight.dtype, gemv_isa)
    wide = bf16_kernel(weight.device, weight.dtype)
    return Bf16Linear(weight, bias, wide, gemv_isa) if wide else None
