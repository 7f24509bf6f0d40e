"""Graph-spectral statistics (SPEC §9): the bases come from the weights, the coefficients from the data."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx

from ..onnx.linearize import (
    adjacency,
    jacobian_block,
    linearised_module,
    lowest_eigenpairs,
    normalized_laplacian,
    path_initializers,
)
from ..progress import progress as progress_bar

DEFAULT_K_ALL, DEFAULT_K_PAIR = 64, 32
# units of one block at most: today's MNIST-size networks (LeNet-5 at 32 px: 6,518 units) plan every block; a
# ResNet's maps are left out (a block's graph costs a pass over its path per 256 of its units, its basis N x k floats)
MAX_NODES = 1 << 13


@dataclass
class LayerRef:
    key: str
    tensor: str
    shape: tuple[int, ...]

    @property
    def units(self) -> int:
        return math.prod(self.shape)


@dataclass
class SpectralPlan:
    """One spectral block before the data pass: its layers, basis and eigenvalues."""

    key: str
    scope: str
    layers: list[LayerRef]
    eigenvalues: np.ndarray  # float64 [k]
    basis: np.ndarray  # float64 [N, k]
    weight_tensors: list[str]

    @property
    def k(self) -> int:
        return self.basis.shape[1]


def plan_spectral(model: onnx.ModelProto, layers: list[LayerRef], input_shape: tuple[int, ...],
                  k_all: int | None = None, k_pair: int | None = None, progress: bool = True,
                  omitted: list[str] | None = None, max_nodes: int = MAX_NODES) -> list[SpectralPlan]:
    """The all_layers block and one block per consecutive layer pair, for layers in network order.

    A pair whose layers no weight connects (parallel branches joined by Concat or Mul, a layer read after a
    reshape of the other) has no weight graph: its pair block is left out (all_layers keeps the coupling the
    linearised graph gives, as the validator recomputes it, while some pair has weights).
    A block of more than ``max_nodes`` units is left out before any work: its graph costs a forward pass
    per block of its units to build, and its basis N x k floats in the sidecar.
    Each block left out is appended to ``omitted`` with the reason (SPEC §9 needs weight_tensors for every
    block over several layers).
    """
    if len(layers) < 2:
        return []
    pairs = list(zip(layers, layers[1:]))
    sizes = [x.units for x in layers]
    weights = [path_initializers(model, a.tensor, b.tensor) for a, b in pairs]
    plan_all = sum(sizes) <= max_nodes and any(weights)
    # all_layers couples every pair the linearised graph couples (as the validator recomputes it), weights or not
    todo = [i for i, ((a, b), w) in enumerate(zip(pairs, weights))
            if plan_all or (w and a.units + b.units <= max_nodes)]
    blocks: list = [None] * len(pairs)
    module = linearised_module(model) if todo else None
    for i in progress_bar(todo, desc="spectral graph", unit="pair", enabled=progress):
        a, b = pairs[i]
        blocks[i] = jacobian_block(module, a.tensor, b.tensor, a.shape, input_shape)
    plans = []
    skipped = [f"{_pair_key(a, b)}: no weight connects {a.key} to {b.key}"
               for (a, b), w in zip(pairs, weights) if not w]
    if not any(weights):
        skipped.insert(0, "all_layers: no weight connects any two consecutive layers")
    elif not plan_all:
        skipped.insert(0, f"all_layers: {sum(sizes):,} units, over the planning limit of {max_nodes:,}")
    else:
        k = min(k_all or DEFAULT_K_ALL, sum(sizes))
        vals, vecs = lowest_eigenpairs(normalized_laplacian(adjacency(blocks, sizes)), k)
        plans.append(SpectralPlan("all_layers", "all_layers", layers, vals, vecs,
                                  sorted({w for ws in weights for w in ws})))
    for i, (a, b) in enumerate(pairs):
        if not weights[i]:
            continue
        name = _pair_key(a, b)
        if a.units + b.units > max_nodes:
            skipped.append(f"{name}: {a.units + b.units:,} units, over the planning limit of {max_nodes:,}")
            continue
        k = min(k_pair or DEFAULT_K_PAIR, a.units + b.units)
        vals, vecs = lowest_eigenpairs(normalized_laplacian(adjacency([blocks[i]], sizes[i:i + 2])), k)
        plans.append(SpectralPlan(name, "layer_pair", [a, b], vals, vecs, weights[i]))
    if omitted is not None:
        omitted.extend(skipped)
    return plans


def _pair_key(a: LayerRef, b: LayerRef) -> str:
    return f"pair_{a.key}__{b.key}"[:64]
