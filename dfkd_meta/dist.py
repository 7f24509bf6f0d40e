"""Distributed seams: rank, world size, the main-process gate, all-reduce and barrier.

Everything here is a no-op in one process, which is all dfkd-meta runs today; multi-process work
plugs in through these functions only. A process group is used when ``torch.distributed`` has one
initialised (for example under ``torchrun``); otherwise the process is rank 0 of 1.

Only the main process writes files: every writer in the package goes through ``require_main``
(``fileio.atomic_path`` and the transfer-set writer call it), so a write from another rank is a
bug that fails loudly instead of two processes racing on one file.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator


def _group():
    try:
        import torch.distributed as td
    except ImportError:  # pragma: no cover - torch is a dependency, but this module must not need it
        return None
    return td if td.is_available() and td.is_initialized() else None


def rank() -> int:
    td = _group()
    return td.get_rank() if td is not None else 0


def world_size() -> int:
    td = _group()
    return td.get_world_size() if td is not None else 1


def is_main_process() -> bool:
    return rank() == 0


def require_main(what: str = "write files") -> None:
    """Raise unless this is the main process (a programming error: only rank 0 may ``what``)."""
    if not is_main_process():
        raise RuntimeError(f"rank {rank()} tried to {what}; only the main process (rank 0) may")


@contextlib.contextmanager
def main_process_first() -> Iterator[bool]:
    """Run the block on the main process, then on the others (e.g. build a cache once). Yields is_main."""
    main = is_main_process()
    if not main:
        barrier()
    try:
        yield main
    finally:
        if main:
            barrier()


def all_reduce(tensor, op: str = "sum"):
    """Reduce ``tensor`` across processes in place (sum, mean, max or min); returns it. No-op in one process."""
    if op not in ("sum", "mean", "max", "min"):
        raise ValueError(f"all_reduce op {op!r}: expected sum, mean, max or min")
    td = _group()
    if td is None:
        return tensor
    ops = {"sum": td.ReduceOp.SUM, "mean": td.ReduceOp.SUM, "max": td.ReduceOp.MAX, "min": td.ReduceOp.MIN}
    td.all_reduce(tensor, op=ops[op])
    if op == "mean":
        tensor /= td.get_world_size()
    return tensor


def barrier() -> None:
    td = _group()
    if td is not None:
        td.barrier()
