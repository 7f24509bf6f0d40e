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
                  k_all: int | None = None, k_pair: int | None = None, progress: bool = True) -> list[SpectralPlan]:
    """The all_layers block and one block per consecutive layer pair, for layers in network order."""
    if len(layers) < 2:
        return []
    module = linearised_module(model)
    blocks, weights = [], []
    for a, b in progress_bar(list(zip(layers, layers[1:])), desc="spectral graph", unit="pair", enabled=progress):
        blocks.append(jacobian_block(module, a.tensor, b.tensor, a.shape, input_shape))
        weights.append(path_initializers(model, a.tensor, b.tensor))
    sizes = [x.units for x in layers]
    plans = []
    k = min(k_all or DEFAULT_K_ALL, sum(sizes))
    vals, vecs = lowest_eigenpairs(normalized_laplacian(adjacency(blocks, sizes)), k)
    plans.append(SpectralPlan("all_layers", "all_layers", layers, vals, vecs, sorted({w for ws in weights for w in ws})))
    for i, (a, b) in enumerate(zip(layers, layers[1:])):
        k = min(k_pair or DEFAULT_K_PAIR, a.units + b.units)
        vals, vecs = lowest_eigenpairs(normalized_laplacian(adjacency([blocks[i]], sizes[i:i + 2])), k)
        plans.append(SpectralPlan(f"pair_{a.key}__{b.key}"[:64], "layer_pair", [a, b], vals, vecs, weights[i]))
    return plans
