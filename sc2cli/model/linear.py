"""Inference-only replacements for `nn.Linear`, chosen at load time by `prepare_for_inference`.

Decode multiplies every weight matrix by one vector per token, so its speed is how fast the weights stream
from memory. A plain bf16 `F.linear` streams them at well under half the machine's bandwidth on CPU; two
replacements do better (measured on the ~180M shape, 2 threads: prepacked 1.7x, int8 2.4x the weights per
second of `F.linear`):

- `PackedLinear` (CPU, bfloat16, where oneDNN has bf16 kernels: AVX-512 or AVX-NE-CONVERT, see
  `devices.cpu_capability`): the weight reordered once into oneDNN's blocked layout, so each product reads it in
  the order the kernel wants. Same arithmetic as `F.linear` (the outputs compare equal); any number of rows.
  Other CPUs run bf16 on plain `F.linear` (slower, same numbers).
- `Int8Linear` (`--quantize int8`, any device): symmetric per-output-channel int8 weights (scale = max|w| / 127)
  with the scales in the activation dtype. Up to `GEMV_ROWS` rows (decode) go through the fused int8 kernel,
  which reads one byte per weight; longer inputs (prefill, compute-bound) dequantize the matrix and use the
  regular GEMM, which is faster there than the int8 kernel.

Both drop the original weight, so a prepared model is for inference only (the checkpoint keys are gone).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import devices

QUANTIZE_CHOICES = ("none", "int8")
GEMV_ROWS = 16


def packing_supported(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether `PackedLinear` runs here: bf16 on a CPU whose oneDNN has bf16 kernels (elsewhere the reorder
    raises "bf16 path needs the cpu support avx_ne_convert or avx512bw, avx512vl and avx512dq")."""
    return (device.type == "cpu" and dtype == torch.bfloat16 and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight") and devices.cpu_capability().onednn_bf16)


class PackedLinear(nn.Module):
    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), 1)
        self.bias = bias.detach().clone() if bias is not None else None

    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


def quantize_int8(weight: Tensor) -> tuple[Tensor, Tensor]:
    """(int8 weight, float32 per-row scale) with weight ~= q * scale[:, None]; all-zero rows get scale 1."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1) / 127.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def _x86_int8_engine() -> bool:
    return "x86" in torch.backends.quantized.supported_engines or "fbgemm" in torch.backends.quantized.supported_engines


def _pack_for_x86(q: Tensor, scale: Tensor, bias: Tensor | None):
    """The int8 weight in the layout of the x86 (fbgemm) int8 GEMM, which reads it at close to the memory's
    speed. (Building it goes through torch's quantized-tensor API, deprecated but still the only door to that
    kernel; its warning is not the user's business.)"""
    import warnings

    engine = "x86" if "x86" in torch.backends.quantized.supported_engines else "fbgemm"
    torch.backends.quantized.engine = engine
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zero = torch.zeros(q.shape[0], dtype=torch.long)
        qweight = torch._make_per_channel_quantized_tensor(q, scale.double(), zero, 0)
        return torch.ops.quantized.linear_prepack(qweight, bias.float() if bias is not None else None)


class Int8Linear(nn.Module):
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

    def __init__(self, weight: Tensor, bias: Tensor | None, dtype: torch.dtype) -> None:
        super().__init__()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        q, scale = quantize_int8(weight)
        self.x86_packed = (_pack_for_x86(q, scale, bias) if weight.device.type == "cpu" and _x86_int8_engine()
                           else None)
        # 7-bit activations where fbgemm would saturate 8-bit ones (see the class docstring).
        self.reduce_range = self.x86_packed is not None and not devices.cpu_capability().int8_vnni
        self.register_buffer("weight_int8", q.contiguous() if self.x86_packed is None else None)
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


def replacement(weight: Tensor, bias: Tensor | None, quantize: str) -> nn.Module | None:
    """The faster module for this weight and bias, or None where plain `F.linear` is the best there is."""
    if quantize == "int8":
        return Int8Linear(weight, bias, weight.dtype)
    if packing_supported(weight.device, weight.dtype):
        return PackedLinear(weight, bias)
    return None
