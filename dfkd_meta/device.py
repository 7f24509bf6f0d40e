"""`--device auto|cpu|cuda` resolution, shared by every command."""
from __future__ import annotations

import torch

from .errors import UsageError


def resolve_device(spec: str = "auto") -> torch.device:
    """'auto' picks CUDA when available; asking for CUDA without it is a usage error."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"{{device}} {spec}: CUDA is not available on this machine; use {{device}} cpu or auto")
        return torch.device(spec)
    if spec == "cpu":
        return torch.device("cpu")
    raise UsageError(f"{{device}} {spec!r}: expected auto, cpu or cuda[:N]")
