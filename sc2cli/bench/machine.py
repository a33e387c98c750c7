"""Facts about the machine and this process that the speed benchmark records: CPU and GPU names, peak RSS.

Also `synchronize`, so that a clock read after GPU work waits for the work itself, not just its launch.
"""

from __future__ import annotations

import platform
import resource
import sys
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def gpu_name(device: str) -> str | None:
    if not device.startswith("cuda"):
        return None
    import torch

    return torch.cuda.get_device_name(torch.device(device))


def peak_rss_bytes() -> int:
    """`ru_maxrss` of this process, in bytes."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB, macOS bytes


def synchronize(device: str) -> None:
    """Wait for the device's queued work (CUDA); nothing to wait for on the CPU."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_capability_label() -> str:
    """What the CPU's vector units can do, in the words the README's tables use (x86; elsewhere the machine)."""
    flags = cpu_flags()
    if not flags:
        return platform.machine() or "unknown"
    if "avx512_bf16" in flags:
        label = "AVX-512 with bf16"
    elif "avx512f" in flags:
        label = "AVX-512 without bf16"
    elif "avx2" in flags:
        label = "AVX2 only (no AVX-512)"
    else:
        label = "no AVX2"
    return label + (", AMX" if "amx_bf16" in flags else "")
