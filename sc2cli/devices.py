"""Choosing the device and dtype a model runs in, and what the CPU's kernels can do there.

Errors here describe the problem in the request's terms (`InputError(..., field="device" | "dtype")`); the edge
names its own flag or field.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .errors import InputError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class CpuCapability:
    """What this CPU's kernels can do, as far as sc2's choices go (see `cpu_capability`)."""

    isa: str  # torch's dispatch level: "AVX512", "AVX2", "DEFAULT", ... (`torch.backends.cpu.get_cpu_capability`)
    onednn_bf16: bool  # oneDNN has bf16 GEMM kernels (`linear.Bf16Linear` multiplies several rows there)
    int8_vnni: bool  # fbgemm's int8 GEMM sums u8 x s8 products in 32 bits (AVX-512 VNNI), never in 16

    @property
    def bf16_products(self) -> str | None:
        """How `linear.Bf16Linear` multiplies several rows of bf16 weights here: "onednn" (bf16 arithmetic),
        "float32" (AVX2, no bf16 arithmetic: float32 sums, in sc2's native kernel or, without it, a float32 GEMM),
        or None below AVX2, where bf16 `mv` has no vector code (plain F.linear)."""
        if not self.isa.startswith(("AVX2", "AVX512")):
            return None
        return "onednn" if self.onednn_bf16 else "float32"


# Typical machines, for tests that force a branch and for reading the code.
AVX512_VNNI_CPU = CpuCapability("AVX512", onednn_bf16=True, int8_vnni=True)  # Cascade Lake and later Xeons, Zen 4
AVX512_CPU = CpuCapability("AVX512", onednn_bf16=True, int8_vnni=False)  # Skylake-SP
AVX2_CPU = CpuCapability("AVX2", onednn_bf16=False, int8_vnni=False)  # Haswell to Comet Lake, Zen 1-3
BASELINE_CPU = CpuCapability("DEFAULT", onednn_bf16=False, int8_vnni=False)  # no AVX2 (or not x86)

# fbgemm's FBGEMM_ENABLE_INSTRUCTIONS values that cap it below its VNNI kernels.
_FBGEMM_WITHOUT_VNNI = ("AVX2", "AVX512", "AVX512_256")
# oneDNN's ONEDNN_MAX_CPU_ISA values that cap it below its bf16 kernels.
_ONEDNN_WITHOUT_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI")


def cpu_capability() -> CpuCapability:
    """The one probe of the CPU's features: every kernel choice that depends on them asks here (and a test
    forces a branch by replacing this function).

    - oneDNN's bf16 linear needs AVX-512 BW+VL+DQ or AVX-NE-CONVERT on x86 (elsewhere it raises "bf16 path
      needs the cpu support avx_ne_convert or avx512bw, avx512vl and avx512dq"). Other architectures are not
      claimed: bf16 runs there on plain `F.linear`.
      oneDNN honours ONEDNN_MAX_CPU_ISA, so a value below its bf16 kernels means no bf16 there either (with
      ATEN_CPU_CAPABILITY=avx2 for torch's own kernels, the whole AVX2 path can be measured on an AVX-512 CPU).
    - fbgemm's int8 GEMM multiplies u8 activations by s8 weights. With AVX-512 VNNI each product is summed in
      32 bits; without it (AVX2, or AVX-512 before Cascade Lake) pairs of products are first added into a
      saturating 16-bit sum, which 8-bit activations overflow (255 * 127 * 2 > 32767). fbgemm honours
      FBGEMM_ENABLE_INSTRUCTIONS, so a value below AVX512_E1 there means no VNNI either.
    """
    isa = torch.backends.cpu.get_cpu_capability()
    caps = _cpu_features()
    x86 = caps.get("architecture", "x86_64") in ("x86_64", "x86", "i386", "i686", "AMD64")
    onednn_bf16 = x86 and bool(caps.get("avx_ne_convert") or (
        caps.get("avx512_bw") and caps.get("avx512_vl") and caps.get("avx512_dq")))
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper() in _ONEDNN_WITHOUT_BF16:
        onednn_bf16 = False
    vnni = x86 and bool(caps.get("avx512_vnni"))
    if os.environ.get("FBGEMM_ENABLE_INSTRUCTIONS", "").strip().upper() in _FBGEMM_WITHOUT_VNNI:
        vnni = False
    return CpuCapability(isa, onednn_bf16=onednn_bf16, int8_vnni=vnni)


def _cpu_features() -> dict:
    """cpuinfo's feature flags (`torch.cpu.get_capabilities`, torch >= 2.9); on an older torch, the few this
    module reads, from torch's private probes (AVX-NE-CONVERT is then not known, so not claimed)."""
    get = getattr(torch.cpu, "get_capabilities", None)
    if get is not None:
        return dict(get())
    avx512 = bool(getattr(torch.cpu, "_is_avx512_supported", lambda: False)())
    vnni = bool(getattr(torch.cpu, "_is_vnni_supported", lambda: False)())
    return {"avx512_bw": avx512, "avx512_vl": avx512, "avx512_dq": avx512, "avx512_vnni": vnni}


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA, then MPS, then the CPU; an explicit device must exist."""
    name = name.strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps", field="device") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError("no CUDA GPU is available here; use cpu (or auto)", field="device")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise InputError(f"there is no {name}: only {count} CUDA device(s) present (cuda:0 to cuda:{count - 1})",
                             field="device")
    elif device.type == "mps":
        if not _mps_available():
            raise InputError("Apple MPS is not available here; use cpu (or auto)", field="device")
    elif device.type != "cpu":
        raise InputError(f"unsupported device {name!r}; use auto, cpu, cuda, cuda:N or mps", field="device")
    return device


def configured(device: str | None, dtype: str | None) -> tuple[str, str]:
    """The device and dtype a command was given, else the user's settings (environment, then config file). A
    setting that cannot run here is an error naming where it came from (and no field: the user gave none)."""
    from . import settings

    if device is None:
        device, source = settings.get("device")
        if source != "default":
            try:
                resolve_device(device)
            except InputError as err:
                raise InputError(f"the device {device!r} from {source} cannot be used here: {err}") from None
    if dtype is None:
        dtype, source = settings.get("dtype")
        if source != "default" and dtype != "auto":
            try:
                resolve_dtype(dtype, resolve_device(device))
            except InputError as err:
                if err.field != "dtype":  # the given device's own problem
                    raise
                raise InputError(f"the dtype {dtype!r} from {source} cannot be used here: {err}") from None
    return device, dtype


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """'auto': bfloat16 on CUDA with bf16 and on x86 CPUs with AVX2 or better (weights stay 16-bit in memory; where
    the CPU has no bf16 arithmetic, products sum in float32: `linear.Bf16Linear`), float16 on MPS and older
    GPUs, else float32. An explicit dtype must run on the device."""
    name = name.strip().lower()
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "mps":
            return torch.float16
        return torch.bfloat16 if _cpu_streams_bf16() else torch.float32
    if name not in DTYPES:
        raise InputError(f"unknown dtype {name!r}; use auto, float32, bfloat16 or float16", field="dtype")
    dtype = DTYPES[name]
    if not _runs(dtype, device):
        raise InputError(f"{name} does not run on {device}; use float32 (or auto)", field="dtype")
    return dtype


def _cpu_streams_bf16() -> bool:
    """Whether this CPU has vector code for bf16 weights (`Bf16Linear`): x86 with AVX2 or AVX-512."""
    return cpu_capability().bf16_products is not None


def _runs(dtype: torch.dtype, device: torch.device) -> bool:
    """Probe with a tiny matmul: the cheapest honest answer to 'can this device compute in this dtype'."""
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        return False
    try:
        x = torch.ones(2, 2, dtype=dtype, device=device)
        (x @ x).sum().item()
        return True
    except (RuntimeError, TypeError):
        return False
