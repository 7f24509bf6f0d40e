"""Starting inputs for reconstruction: uniform noise, or a per-class Gaussian read off the first layer.

When the first stored layer is an affine function of the input, h = J x + h0 (a Gemm/MatMul or a
Conv, before its activation), its recorded per-class mean and low-rank covariance factors pin
down a class-conditional Gaussian over inputs by least squares: mean J^+ (mu - h0), directions
J^+ F, plus isotropic noise carrying the variance the factors leave out, sized so that its image
has the residual variance per unit on average. Samples are clipped to the recorded input domain.
"""
from __future__ import annotations

import math

import numpy as np
import onnx
import torch

from ..errors import DfkdError
from ..onnx.graph import OnnxModule
from ..sidecar.types import LayerStats, Sidecar

MAX_JACOBIAN_ENTRIES = 2 ** 24  # units x inputs; above this the pullback is too large to build (128 MiB float64)


class FirstLayerGaussian:
    """Class-conditional Gaussian over inputs whose image under the first stored layer has its moments."""

    def __init__(self, sidecar: Sidecar, model: onnx.ModelProto, source: str = "sidecar"):
        first = sidecar.layers_in_order()[0]
        if not first.per_unit:
            raise DfkdError(f"{source}: {{init}} first-layer needs per-unit statistics on the first stored layer, and "
                            f"{first.key!r} is stored per channel ({first.granularity}, to fit the sidecar's size "
                            "budget); use {init} uniform")
        self.input_shape = tuple(sidecar.model.input_shape[1:])
        d, units = math.prod(self.input_shape), math.prod(first.shape)
        if d * units > MAX_JACOBIAN_ENTRIES:
            raise DfkdError(f"{source}: {{init}} first-layer needs the {units} x {d} Jacobian of layer {first.key!r}, "
                            f"over the {MAX_JACOBIAN_ENTRIES:,}-entry limit; use {{init}} uniform")
        self.source = source
        h0, jac = self._jacobian(OnnxModule(model, source=source).double().eval(), first, d)
        self.has_directions = first.cov_factors is not None
        pinv = np.linalg.pinv(jac, rcond=1e-6)  # [d, units]
        mean = first.mean.astype(np.float64)
        self.mean = (mean - h0) @ pinv.T  # [C, d]
        var = first.std.astype(np.float64) ** 2
        if self.has_directions:
            f = first.cov_factors.astype(np.float64)  # [C, units, R]
            self.directions = np.einsum("du,cur->cdr", pinv, f)  # [C, d, R]
            var = np.maximum(var - (f * f).sum(-1), 0.0)
        gain = max(float((jac * jac).sum(1).mean()), 1e-12)  # mean squared row norm: input noise -> unit variance
        self.sigma = np.sqrt(var.mean(1) / gain)  # [C]

    def _jacobian(self, module: OnnxModule, layer: LayerStats, d: int) -> tuple[np.ndarray, np.ndarray]:
        """h0 [units] and J [units, d] of the input -> layer map (float64, CPU), after checking it is affine."""

        def f(x: torch.Tensor) -> torch.Tensor:
            return module.run(x.reshape(-1, *self.input_shape), [layer.tensor_name])[layer.tensor_name].reshape(len(x), -1)

        with torch.no_grad():
            h0 = f(torch.zeros(1, d, dtype=torch.float64))[0]
            cols = []
            for i in range(0, d, 256):  # column j is f(e_j) - f(0)
                basis = torch.zeros(min(256, d - i), d, dtype=torch.float64)
                basis[torch.arange(len(basis)), torch.arange(i, i + len(basis))] = 1.0
                cols.append(f(basis) - h0)
            jac = torch.cat(cols).T  # [units, d]
            probe = torch.randn(4, d, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
            got, want = f(probe), probe @ jac.T + h0
        if not torch.allclose(got, want, rtol=1e-6, atol=1e-6 * float(want.abs().max()) + 1e-9):
            raise DfkdError(f"{self.source}: layer {layer.key!r} (the first stored layer) is not an affine function "
                            "of the input, so {init} first-layer cannot pull its statistics back; use {init} uniform")
        return h0.numpy(), jac.numpy()

    def sample(self, classes: np.ndarray, gen: torch.Generator) -> torch.Tensor:
        """[B, *input_shape] float32 draws for ``classes`` (deterministic given ``gen``)."""
        x = torch.from_numpy(self.mean[classes])
        if self.has_directions:
            z = torch.randn(len(classes), self.directions.shape[2], generator=gen, dtype=torch.float64)
            for c in np.unique(classes):  # per class: a [B, d, R] gather would be large
                sel = torch.from_numpy(classes == c)
                x[sel] += z[sel] @ torch.from_numpy(self.directions[c]).T
        noise = torch.randn(x.shape, generator=gen, dtype=torch.float64)
        x = x + torch.from_numpy(self.sigma[classes])[:, None] * noise
        return x.float().reshape(len(classes), *self.input_shape)
