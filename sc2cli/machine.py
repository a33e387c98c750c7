"""What this machine offers a model (CPU threads and kernel capability, CUDA GPUs, Apple MPS, what `auto` picks)
and which versions run here: `sc2 info` reports both. torch is imported on first call, not on import.
"""

from __future__ import annotations

import os
import platform

DISTRIBUTIONS = ("sc2cli", "torch", "tokenizers", "huggingface_hub", "safetensors")


def devices() -> dict:
    """{"cpu": {"threads", "cores", "capability", "onednn_bf16", "int8_vnni", "native_kernels",
    "native_kernels_missing"}, "cuda": [{"index", "name", "memory_bytes", "capability"}], "mps": bool,
    "auto": {"device", "dtype"}}.

    The CPU's `onednn_bf16` says whether oneDNN multiplies bf16 prompts here, `int8_vnni` whether int8 weights use
    full-range 8-bit activations (without VNNI they use 7 bits: see `devices.cpu_capability`), `native_kernels`
    the instruction set of sc2's decode kernels here (None: torch's kernels, `native_kernels_missing` says why)."""
    import torch

    from . import kernels
    from .devices import _mps_available, cpu_capability, resolve_device, resolve_dtype

    cuda = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            cuda.append({"index": i, "name": props.name, "memory_bytes": int(props.total_memory),
                         "capability": f"{props.major}.{props.minor}"})
    cpu = cpu_capability()
    auto = resolve_device("auto")
    return {
        "cpu": {"threads": torch.get_num_threads(), "cores": os.cpu_count(), "capability": cpu.isa,
                "onednn_bf16": cpu.onednn_bf16, "int8_vnni": cpu.int8_vnni,
                "native_kernels": kernels.isa_for(cpu.isa) if kernels.available() else None,
                "native_kernels_missing": kernels.unavailable_reason()},
        "cuda": cuda,
        "mps": _mps_available(),
        "auto": {"device": str(auto), "dtype": str(resolve_dtype("auto", auto)).removeprefix("torch.")},
    }


def versions() -> dict:
    """The versions of sc2 and the libraries it runs on (None where one is missing), and Python's."""
    from importlib import metadata

    import sc2cli

    found: dict[str, str | None] = {}
    for dist in DISTRIBUTIONS:
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = None
    found["sc2cli"] = getattr(sc2cli, "__version__", None) or found["sc2cli"]  # a source checkout wins
    found["python"] = platform.python_version()
    return found
