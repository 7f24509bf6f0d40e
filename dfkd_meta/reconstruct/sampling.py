"""Per-class targets drawn from a sidecar's statistics (SPEC §8.2, §9.2)."""
from __future__ import annotations

import numpy as np

from ..sidecar.types import LayerStats, SpectralStats


def sample_layer(layer: LayerStats, classes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Targets [B, U] for one layer: mean + std * z, or mean + F z1 + sqrt(psi) z2 with covariance factors.

    With factors F the draw has covariance F F^T + diag(psi) = Sigma (not Sigma squared).
    """
    mean = layer.mean[classes].astype(np.float64)
    std = layer.std[classes].astype(np.float64)
    if layer.cov_factors is None:
        return mean + std * rng.standard_normal(mean.shape)
    f = layer.cov_factors[classes].astype(np.float64)  # [B, U, R]
    psi = np.maximum(std ** 2 - (f * f).sum(-1), 0.0)
    z1 = rng.standard_normal((len(classes), f.shape[2]))
    return mean + np.einsum("bur,br->bu", f, z1) + np.sqrt(psi) * rng.standard_normal(mean.shape)


def sample_spectral(block: SpectralStats, classes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Coefficient targets [B, k]: coef_mean + coef_std * z."""
    mean = block.coef_mean[classes].astype(np.float64)
    return mean + block.coef_std[classes].astype(np.float64) * rng.standard_normal(mean.shape)


def zskd_soft_targets(last_weight: np.ndarray, classes: np.ndarray, rng: np.random.Generator,
                      betas: tuple[float, ...] = (1.0, 0.1)) -> np.ndarray:
    """ZSKD (Nayak et al. 2019): soft labels ~ Dirichlet(beta * class similarity of the final weights).

    ``last_weight`` is [C, H]. Similarities are cosine similarities of its rows, min-max scaled
    to [0, 1] per class; samples alternate between the concentration scales ``betas``.
    """
    w = last_weight / np.maximum(np.linalg.norm(last_weight, axis=1, keepdims=True), 1e-12)
    sim = w @ w.T
    lo, hi = sim.min(axis=1, keepdims=True), sim.max(axis=1, keepdims=True)
    sim = (sim - lo) / np.maximum(hi - lo, 1e-12)
    out = np.empty((len(classes), len(sim)))
    for i, c in enumerate(classes):
        alpha = np.maximum(betas[i % len(betas)] * sim[c], 1e-3)
        out[i] = rng.dirichlet(alpha)
    return out
