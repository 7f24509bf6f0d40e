"""ONNX operators as torch functions: one small function per op, in a registry.

Each op takes ``(inputs, attrs)``: the node's input tensors in order (``None`` for an omitted
optional input) and its attributes as Python values, and returns one tensor or a tuple of
tensors (one per node output). Adding an op is adding one decorated function to the module of
its family: ``elementwise`` (arithmetic, activations, casts, softmax), ``nn`` (linear algebra,
convolution, normalisation, pooling) or ``shape`` (reductions and shape manipulation).

Semantics follow the ONNX operator specification for default-domain opsets 13 and later
(older attribute forms are accepted where an op moved an attribute to an input).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..op_names import DEFAULT_DOMAINS

Tensor = torch.Tensor
OpFn = Callable[[list, dict[str, Any]], Any]
OPS: dict[str, OpFn] = {}


class OnnxOpError(ValueError):
    """An op was used with attributes or inputs this implementation does not support."""


def op(*names: str):
    def register(fn: OpFn) -> OpFn:
        for name in names:
            OPS[name] = fn
        return fn
    return register


def ints(t: Tensor | None) -> list[int] | None:
    return None if t is None else [int(v) for v in t.reshape(-1).tolist()]


def scalar(t: Tensor | None, default=None):
    return default if t is None else t.reshape(-1)[0].item()


def norm_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def is_supported(op_type: str, domain: str = "") -> bool:
    return domain in DEFAULT_DOMAINS and op_type in OPS


from . import elementwise, nn, shape  # noqa: E402  (registers the ops)
from .elementwise import identity  # noqa: E402
from .nn import average_pool, global_average_pool  # noqa: E402

__all__ = ["OPS", "DEFAULT_DOMAINS", "OnnxOpError", "OpFn", "Tensor", "op", "ints", "scalar", "norm_axis",
           "is_supported", "elementwise", "nn", "shape", "identity", "average_pool", "global_average_pool"]
