"""Bounds on reading an untrusted file (SPEC §3.4): CPU time and memory of the reading itself, and a
wall-clock limit on the whole child process.

The child process that validates a sidecar applies the reading bounds once its imports are done and
lifts them before the checks against the model file (hashing, the ONNX checker), so neither
interpreter start-up nor a large model counts against them. The CPU bound is ``RLIMIT_CPU`` (the
kernel ends the child with SIGXCPU: a busy loop in libhdf5 cannot escape it, and a loaded machine does
not trip it, since waiting for a core is not CPU time); the memory bound is ``RLIMIT_AS`` above what
the child had mapped before reading (libhdf5 and numpy then fail their allocation, which is reported).
"""
from __future__ import annotations

import math
import os
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

# The CPU bound is BASE_CPU_SECONDS plus CPU_SECONDS_PER_GB for each GB the file holds or declares
# (compressed datasets are decompressed whole). A valid file costs far less: a sidecar at the format's
# size limit (4.2 GB declared) reads and checks in 2.1 s of CPU stored plain and 8.7 s gzip-compressed,
# against a bound of 136 s; every measured size had 16x the CPU it needed or more (benchmarks/read_bounds.py,
# results/read_bounds.json). A small hostile file that makes libhdf5 spin is stopped after about 10 s.
BASE_CPU_SECONDS = 10.0
CPU_SECONDS_PER_GB = 30.0
DEFAULT_CPU_SECONDS = None  # the scaled bound above; a number given by the user is a fixed bound
DEFAULT_WALL_SECONDS = 600.0
# The memory bound is BASE_MEMORY_MIB plus half the file's size. Values are read in 16 MiB blocks, so
# a valid file needs little: a valid 1.0 GB sidecar validates within 64 MiB of added memory (measured);
# the size term leaves room for large compressed chunks, which are decompressed whole.
BASE_MEMORY_MIB = 256


@dataclass(frozen=True)
class ReadLimits:
    """How much a validation may spend. ``cpu_seconds=None``: 10 s plus 30 s per GB the file holds or declares;
    ``memory_mib=None``: 256 MiB plus half the file's size."""

    cpu_seconds: float | None = DEFAULT_CPU_SECONDS  # CPU time of the reading itself (DM114)
    memory_mib: int | None = None  # memory the reading may add to the child (DM115)
    wall_seconds: float = DEFAULT_WALL_SECONDS  # the whole child process, start-up and model checks included (DM116)

    def __post_init__(self) -> None:
        for name in ("cpu_seconds", "wall_seconds"):
            value = getattr(self, name)
            if value is None and name == "cpu_seconds":
                continue
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"ReadLimits.{name} must be a positive number of seconds, not {value!r}")
        if self.memory_mib is not None and not (isinstance(self.memory_mib, int) and self.memory_mib > 0):
            raise ValueError(f"ReadLimits.memory_mib must be a positive integer or None, not {self.memory_mib!r}")

    @property
    def cpu_seconds_per_gb(self) -> float:
        """The rate the bound grows by (0 for a fixed bound given by the user)."""
        return CPU_SECONDS_PER_GB if self.cpu_seconds is None else 0.0

    def cpu_seconds_for(self, file_size: int, declared_bytes: int = 0) -> float:
        """The CPU bound for a file of ``file_size`` bytes declaring ``declared_bytes`` of data."""
        if self.cpu_seconds is not None:
            return float(self.cpu_seconds)
        return BASE_CPU_SECONDS + CPU_SECONDS_PER_GB * max(file_size, declared_bytes, 0) / 1e9

    def memory_bytes(self, file_size: int) -> int:
        if self.memory_mib is not None:
            return self.memory_mib << 20
        return (BASE_MEMORY_MIB << 20) + max(0, file_size) // 2


def _mapped_bytes() -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class ReadBounds:
    """Applied in the child process around the reading; ``lift()`` restores what was there before."""

    def __init__(self, cpu_seconds: float | None, memory_bytes: int | None, cpu_seconds_per_byte: float = 0.0,
                 file_size: int = 0) -> None:
        self.cpu_seconds, self.memory_bytes = cpu_seconds, memory_bytes
        # the bound grows once the scan knows how much the file declares (see ``declared``)
        self.cpu_seconds_per_byte, self.file_size = cpu_seconds_per_byte, file_size
        self.saved: dict[int, tuple[int, int]] = {}

    @property
    def memory_active(self) -> bool:
        import resource

        return resource.RLIMIT_AS in self.saved

    def apply(self) -> None:
        if os.name != "posix":
            return
        import resource

        if self.cpu_seconds is not None:
            usage = resource.getrusage(resource.RUSAGE_SELF)
            used = usage.ru_utime + usage.ru_stime
            self._set(resource, resource.RLIMIT_CPU, int(math.ceil(used + self.cpu_seconds)))
        mapped = _mapped_bytes()
        if self.memory_bytes is not None and mapped is not None:
            self._set(resource, resource.RLIMIT_AS, mapped + self.memory_bytes)

    def declared(self, declared_bytes: int) -> None:
        """The scan found ``declared_bytes`` of data: extend the CPU bound by the rate for what exceeds the file."""
        extra = self.cpu_seconds_per_byte * max(0, declared_bytes - self.file_size)
        if extra <= 0 or os.name != "posix":
            return
        import resource

        if resource.RLIMIT_CPU not in self.saved:
            return
        soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
        new = int(math.ceil(soft + extra))
        resource.setrlimit(resource.RLIMIT_CPU, (new if hard == resource.RLIM_INFINITY else min(new, hard), hard))

    def _set(self, resource, which: int, soft: int) -> None:
        old_soft, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY:
            soft = min(soft, hard)
        if old_soft != resource.RLIM_INFINITY and old_soft < soft:
            return  # a tighter bound set by the caller stays
        resource.setrlimit(which, (soft, hard))
        self.saved[which] = (old_soft, hard)

    def lift(self) -> None:
        if not self.saved:
            return
        import resource

        for which, limits in self.saved.items():
            resource.setrlimit(which, limits)
        self.saved.clear()


_CURRENT: ContextVar[ReadLimits | None] = ContextVar("dfkd_meta_read_limits", default=None)


def current_limits() -> ReadLimits:
    """The bounds validate() uses when it is given none: ReadLimits() unless inside ``using_limits``."""
    return _CURRENT.get() or ReadLimits()


@contextmanager
def using_limits(limits: ReadLimits):
    """Every validation inside (read_sidecar, reconstruct, distill with a sidecar) uses ``limits``."""
    token = _CURRENT.set(limits)
    try:
        yield limits
    finally:
        _CURRENT.reset(token)
