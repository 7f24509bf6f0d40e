"""Online synthesis: inputs generated with the student in the loop, alternating with its updates.

A method is one class registered here by name (``@method("dafl")``, base.Method is the interface);
the CLI's choices and their one-line help come from this registry. Each method gets a
``SynthesisContext`` (the teacher as a differentiable module, its input space, and the priors:
metadata-free ones from the teacher file, and the sidecar's when one is given) and supplies the
batches of inputs, with the teacher's outputs on them, that the distillation loop
(``distill.online``) trains the student on. The methods: ``dafl``, ``dfad``, ``deepinversion``,
``cmi``, ``fast``; each runs with and without a sidecar.
"""
from __future__ import annotations

from ..errors import UsageError

METHODS: dict[str, type] = {}


def method(name: str):
    """Register a synthesis method class under ``name``."""
    def register(cls: type) -> type:
        cls.name = name
        METHODS[name] = cls
        return cls
    return register


def get_method(name: str) -> type:
    """The method class registered as ``name`` (a clear usage error otherwise)."""
    if name not in METHODS:
        known = ", ".join(sorted(METHODS)) or "none yet"
        raise UsageError(f"{{method}} {name!r}: expected one of: {known}")
    return METHODS[name]


from . import cmi, dafl, deepinversion, dfad, fast  # noqa: E402,F401  (registers the methods)
