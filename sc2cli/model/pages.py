"""Giving the pages of a memory-mapped checkpoint back to the OS once their tensors have been copied.

Weights load as views of the mmapped safetensors file, so reading them makes their pages resident. When
`prepare_for_inference` copies a weight into another layout (fused q/k/v, prepacked, int8), the original's
pages would stay resident for as long as any tensor of the same file is alive (the embeddings always are),
doubling the process's memory. Dropping them (madvise MADV_DONTNEED) on a private file mapping makes a page
that is touched again come back from the file, as it was on disk (an in-place edit of it would be lost), so
it is only for tensors that are about to be dropped, and only for those that lie inside a private mapping of
a `.safetensors` file, as /proc/self/maps says; anywhere else (other OSes, copies made while loading, GPU
memory) this does nothing.
"""

from __future__ import annotations

import ctypes
import mmap
import sys
from collections.abc import Iterable

from torch import Tensor

MADV_DONTNEED = 4


def _checkpoint_mappings() -> list[tuple[int, int]]:
    ranges = []
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and fields[5].strip().endswith(".safetensors") and fields[1].endswith("p"):
                    lo, hi = (int(x, 16) for x in fields[0].split("-"))
                    ranges.append((lo, hi))
    except OSError:
        return []
    return ranges


def release_checkpoint_pages(tensors: Iterable[Tensor]) -> int:
    """Drop the resident pages that lie wholly inside each tensor, where it is a view of a mapped checkpoint
    file. Only for tensors nothing will read again. Returns the bytes released."""
    if not sys.platform.startswith("linux"):
        return 0
    mappings = _checkpoint_mappings()
    if not mappings:
        return 0
    madvise = ctypes.CDLL(None, use_errno=True).madvise
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    page = mmap.PAGESIZE
    released = 0
    for t in tensors:
        if t is None or t.device.type != "cpu" or not t.is_contiguous() or t.numel() == 0:
            continue
        start = t.data_ptr()
        end = start + t.numel() * t.element_size()
        if not any(lo <= start and end <= hi for lo, hi in mappings):
            continue
        lo, hi = -(-start // page) * page, end // page * page
        if hi > lo and madvise(lo, hi - lo, MADV_DONTNEED) == 0:
            released += hi - lo
    return released
