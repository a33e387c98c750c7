"""Choosing the device and dtype a model runs in."""

from __future__ import annotations

import torch

from .errors import UsageError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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
        raise UsageError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("--device cuda: no CUDA GPU is available here; use --device cpu (or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present")
    elif device.type == "mps":
        if not _mps_available():
            raise UsageError("--device mps: Apple MPS is not available here; use --device cpu (or auto)")
    elif device.type != "cpu":
        raise UsageError(f"unsupported device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    return device


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """'auto': bfloat16 where the hardware does it fast (CUDA with bf16, CPUs with AVX-512), float16 on MPS
    and older GPUs, else float32. An explicit dtype must run on the device."""
    name = name.strip().lower()
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "mps":
            return torch.float16
        return torch.bfloat16 if _cpu_has_fast_bf16() else torch.float32
    if name not in DTYPES:
        raise UsageError(f"unknown dtype {name!r}; use auto, float32, bfloat16 or float16")
    dtype = DTYPES[name]
    if not _runs(dtype, device):
        raise UsageError(f"--dtype {name} does not run on {device}; use --dtype float32 (or auto)")
    return dtype


def _cpu_has_fast_bf16() -> bool:
    capability = torch.backends.cpu.get_cpu_capability()
    return capability.startswith("AVX512")


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
