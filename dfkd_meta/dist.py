"""Distributed seams: rank, world size, the main-process gate and the few collectives the pipeline uses.

Everything here is a no-op in one process: a process group is used when ``torch.distributed`` has
one initialised (``init_from_env`` makes it under ``torchrun``, from the variables torchrun sets);
otherwise the process is rank 0 of 1 and no collective is ever called, so one process behaves
exactly as it would without this module.

Only the main process writes files: every writer in the package goes through ``require_main``
(``fileio.atomic_path`` and the transfer-set writer call it), so a write from another rank is a
bug that fails loudly instead of two processes racing on one file.

A failure on one rank must not leave the others waiting in their next collective: blocks that can
fail on some ranks only run inside ``together``, after which every rank knows whether any failed.
``traffic`` counts the bytes this process handed to collectives, and those the main process receives in
``gather_to_main`` (the benchmark's bytes per step; DistributedDataParallel's own gradient buckets are not
counted here).
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator

import numpy as np

from .errors import DfkdError

traffic = {"bytes": 0, "calls": 0}


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


def launched() -> bool:
    """Whether this process was started as one of several (torchrun sets WORLD_SIZE)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def init_from_env(device: str = "auto") -> bool:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT in the environment):
    NCCL when this run uses CUDA, gloo otherwise. Returns whether a group was made (False in one process)."""
    if not launched() or _group() is not None:
        return _group() is not None
    import torch
    import torch.distributed as td

    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise DfkdError(f"WORLD_SIZE is {os.environ['WORLD_SIZE']} but {', '.join(missing)} {verb} not set; start "
                        "several processes with torchrun (see the README, 'More than one process or machine')")
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda and torch.cuda.is_available():
        torch.cuda.set_device(local_rank())  # --device cuda means this process's own GPU
    td.init_process_group("nccl" if cuda and torch.cuda.is_available() else "gloo")
    return True


def shutdown() -> None:
    td = _group()
    if td is not None:
        td.destroy_process_group()


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def share(n: int, rank_: int | None = None, world: int | None = None) -> int:
    """This rank's share of ``n`` items split as evenly as possible (the first ``n % world`` ranks get one more)."""
    rank_ = rank() if rank_ is None else rank_
    world = world_size() if world is None else world
    return n // world + (rank_ < n % world)


def shard_range(n: int) -> range:
    """This rank's contiguous block of ``range(n)`` (blocks in rank order, sizes from ``share``)."""
    r, w = rank(), world_size()
    start = sum(share(n, i, w) for i in range(r))
    return range(start, start + share(n, r, w))


def _comm_device():
    import torch

    td = _group()
    if td is not None and td.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _count(tensor) -> None:
    traffic["bytes"] += tensor.numel() * tensor.element_size()
    traffic["calls"] += 1


def reduce_array(values, op: str = "sum") -> np.ndarray:
    """``values`` (numpy, any shape) reduced over processes, in float64 unless integer; a copy in one process."""
    import torch

    a = np.asarray(values)
    a = a.astype(np.int64 if np.issubdtype(a.dtype, np.integer) or a.dtype == bool else np.float64)
    if _group() is None:
        return a.copy()
    t = torch.from_numpy(np.ascontiguousarray(a).reshape(-1)).to(_comm_device())
    all_reduce(t, op)
    return t.cpu().numpy().reshape(a.shape)


def any_rank(*flags: bool) -> tuple[bool, ...]:
    """For each flag, whether it is true on any process (one small all-reduce; the flags as given in one process)."""
    if _group() is None:
        return tuple(bool(f) for f in flags)
    return tuple(bool(v) for v in reduce_array(np.array(flags, np.int64), "max"))


def from_main(value: float) -> float:
    """The main process's ``value`` on every process (clocks: one rank decides when a time budget is spent)."""
    if _group() is None:
        return value
    return float(broadcast_array(np.array([value]))[0])


def broadcast_array(values: np.ndarray) -> np.ndarray:
    """The main process's ``values`` (float64; the same shape on every process) on every process."""
    import torch

    a = np.ascontiguousarray(values, dtype=np.float64)
    td = _group()
    if td is None:
        return a
    t = torch.from_numpy(a.copy()).to(_comm_device())
    _count(t)
    td.broadcast(t, src=0)
    return t.cpu().numpy()


class OtherRankFailed(DfkdError):
    """Another process of the run failed; its own message says why."""


@contextlib.contextmanager
def together(what: str) -> Iterator[None]:
    """Run a block that may fail on some processes only; afterwards, a failure anywhere fails every process.

    The failing process re-raises its own error; the others raise ``OtherRankFailed`` instead of waiting
    in their next collective for a peer that is gone. No-op in one process.
    """
    if _group() is None:
        yield
        return
    try:
        yield
    except BaseException:
        any_rank(True)
        raise
    if any_rank(False)[0]:
        raise OtherRankFailed(f"{what}: another process of this run failed (its error is above); stopped here too, "
                              "nothing was written")


def broadcast_parameters(params: Iterable) -> None:
    """Copy the main process's values of ``params`` (tensors) to every process."""
    td = _group()
    if td is None:
        return
    for p in params:
        buf = p.data.to(_comm_device())
        _count(buf)
        td.broadcast(buf, src=0)
        if buf is not p.data:
            p.data.copy_(buf)


def average_gradients(params: Iterable) -> None:
    """Replace each parameter's gradient by its mean over processes (what DDP does for the model it wraps), in one
    flat all-reduce; a parameter without a gradient on some process counts as zero there, and one without a gradient
    on every process keeps none (an optimiser skips it, as in one process)."""
    import torch

    td = _group()
    if td is None:
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float().to(_comm_device())
                      for p in params]
                     + [torch.tensor([float(p.grad is not None) for p in params], device=_comm_device())])
    all_reduce(flat, "sum")
    had = flat[-len(params):]
    flat = flat[:-len(params)] / td.get_world_size()
    offset = 0
    for p, n_had in zip(params, had.tolist()):
        g = flat[offset:offset + p.numel()].view_as(p).to(device=p.device, dtype=p.dtype)
        offset += p.numel()
        if n_had == 0:
            continue
        if p.grad is None:
            p.grad = g.clone()
        else:
            p.grad.copy_(g)


def all_gather_rows(local: np.ndarray, total: int) -> np.ndarray:
    """Every process's contiguous block (``shard_range(total)``) of rows, concatenated in rank order, on every
    process; ``local`` in one process."""
    import torch

    td = _group()
    if td is None:
        return local
    w = td.get_world_size()
    rows = max(share(total, i, w) for i in range(w))
    padded = np.zeros((rows, *local.shape[1:]), local.dtype)
    padded[:len(local)] = local
    t = torch.from_numpy(padded).to(_comm_device())
    parts = [torch.empty_like(t) for _ in range(w)]
    _count(t)
    td.all_gather(parts, t)
    return np.concatenate([p.cpu().numpy()[:share(total, i, w)] for i, p in enumerate(parts)])


def gather_to_main(arrays: dict[str, np.ndarray] | None, shapes: list[dict[str, tuple] | None]
                   ) -> list[dict[str, np.ndarray] | None] | None:
    """Each process's ``arrays`` on the main process, in rank order (``None`` elsewhere).

    ``shapes[i]``: {name: (shape, dtype)} of what rank ``i`` sends, known to every process (None: it sends
    nothing). Point-to-point sends, so only the main process holds every rank's arrays.
    """
    import torch

    td = _group()
    if td is None:
        return [arrays]
    if not is_main_process():
        for name, (shape, dtype) in (shapes[rank()] or {}).items():  # in the order the main process receives
            t = torch.from_numpy(np.ascontiguousarray(arrays[name], dtype=dtype).reshape(shape)).to(_comm_device())
            _count(t)
            td.send(t, dst=0)
        return None
    out = [arrays]
    for src in range(1, td.get_world_size()):
        if shapes[src] is None:
            out.append(None)
            continue
        got = {}
        for name, (shape, dtype) in shapes[src].items():
            buf = torch.empty(shape, dtype=getattr(torch, np.dtype(dtype).name), device=_comm_device())
            _count(buf)  # received: the main process's traffic is what the others send it
            td.recv(buf, src=src)
            got[name] = buf.cpu().numpy()
        out.append(got)
    return out


def all_reduce(tensor, op: str = "sum"):
    """Reduce ``tensor`` across processes in place (sum, mean, max or min); returns it. No-op in one process."""
    if op not in ("sum", "mean", "max", "min"):
        raise ValueError(f"all_reduce op {op!r}: expected sum, mean, max or min")
    td = _group()
    if td is None:
        return tensor
    ops = {"sum": td.ReduceOp.SUM, "mean": td.ReduceOp.SUM, "max": td.ReduceOp.MAX, "min": td.ReduceOp.MIN}
    _count(tensor)
    td.all_reduce(tensor, op=ops[op])
    if op == "mean":
        tensor /= td.get_world_size()
    return tensor


def barrier() -> None:
    td = _group()
    if td is not None:
        td.barrier()
