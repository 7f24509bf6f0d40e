"""Online synthesis: inputs generated with the student in the loop, alternating with its updates.

A method is one class registered here by name (``@method("dafl")``); the CLI's choices and their
one-line help come from this registry. Each method gets the teacher (an ``OnnxModule``), the
student, the sidecar when one is given (its statistics as a prior), and a budget; it yields
batches of inputs with the teacher's outputs on them for the distillation step. The registry is
empty until the methods land (DAFL, DFAD, DeepInversion, CMI, FastDFKD, each with and without a
sidecar prior).
"""
from __future__ import annotations

from ..errors import UsageError

METHODS: dict[str, type] = {}


def method(name: str):
    """Register a synthesis method class under ``name``."""
    def register(cls: type) -> type:
        METHODS[name] = cls
        return cls
    return register


def get_method(name: str) -> type:
    if name not in METHODS:
        known = ", ".join(sorted(METHODS)) or "none yet"
        raise UsageError(f"{{method}} {name!r}: expected one of: {known}")
    return METHODS[name]
