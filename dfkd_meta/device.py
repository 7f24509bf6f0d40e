"""`--device auto|cpu|cuda` resolution, shared by every command."""
from __future__ import annotations

import torch

from . import dist
from .errors import UsageError


def resolve_device(spec: str = "auto") -> torch.device:
    """'auto' picks CUDA when available; asking for CUDA without it is a usage error."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"{{device}} {spec}: CUDA is not available on this machine; use {{device}} cpu or auto")
        if spec == "cuda" and dist.world_size() > 1:  # under torchrun: this process's own GPU
            return torch.device("cuda", dist.local_rank())
        return torch.device(spec)
    if spec == "cpu":
        return torch.device("cpu")
    raise UsageError(f"{{device}} {spec!r}: expected auto, cpu or cuda[:N]")


# glibc's malloc serves blocks from 32 MiB up (its largest automatic threshold) with fresh mmap pages,
# and returns them on free: each such tensor costs a page fault per 4 KiB, every step. Generators at
# batch 256 allocate maps of 33.5 MiB (ngf 16, 32 x 32 images); keeping blocks up to 256 MiB in the heap,
# and up to 512 MiB of freed memory unreturned, took their forward and backward from 158 to 130 ms
# (channels-last, 2 cores; 262 to 179 ms in the usual layout) and online synthesis loops 5-10 % faster.
_MMAP_THRESHOLD, _TRIM_THRESHOLD = 256 << 20, 512 << 20


def retain_freed_memory() -> bool:
    """Have this process's C allocator keep freed blocks of up to 256 MiB for reuse (glibc only).

    For processes that repeatedly allocate large CPU tensors (online synthesis): the freed memory,
    up to 512 MiB, stays with the process instead of going back to the system. Process-wide, so the
    CLI calls it for the commands that gain; Python users may call it themselves. Returns whether it
    took effect (False on other C libraries).
    """
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
        return bool(libc.mallopt(m_mmap_threshold, _MMAP_THRESHOLD)) and bool(libc.mallopt(m_trim_threshold,
                                                                                            _TRIM_THRESHOLD))
    except (OSError, AttributeError):
        return False
