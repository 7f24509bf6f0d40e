"""Per-class targets drawn from a sidecar's statistics (SPEC §8.2, §9.2)."""
from __future__ import annotations

import numpy as np

from ..errors import DfkdError
from ..sidecar.types import LayerStats, SpectralStats


def sample_layer(layer: LayerStats, classes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Targets [B, U] for one layer: mean + std * z, or mean + F z1 + sqrt(psi) z2 with covariance factors.

    With factors F the draw has covariance F F^T + diag(psi) = Sigma (not Sigma squared). Needs the layer's
    per-unit, per-class statistics (granularity ``unit``).
    """
    if not layer.per_unit:
        raise DfkdError(f"layer {layer.key!r} is stored per channel ({layer.granularity}), so per-unit targets cannot "
                        "be drawn for it; use an objective that works from channels (all_layers, top_layer), or ask "
                        "the publisher for a sidecar exported with a larger {max_size}")
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


class JointSpectral:
    """Coefficient targets for spectral blocks that share layers (the layer pairs of a chain), drawn jointly.

    Independent draws per block contradict each other on a shared layer. Here every draw is the set of
    coefficients of one activation vector of the whole chain, ``x = mean + sum_q V_q D_q z_q`` with
    ``z_q ~ N(0, I)`` and ``V_q`` block q's basis placed on its layers' rows: block p's targets are
    ``V_p^T x``, so two pairs see the same values on the layer they share (exact, by construction).
    Block p's deviation is ``D_p z_p + sum_{q != p} G_pq D_q z_q`` with ``G_pq = V_p^T V_q`` over the
    shared rows (``V_p^T V_p = I``). The scales ``D`` are chosen per class so that every coefficient
    has its recorded std: ``(M * M) d = coef_std^2`` with ``M = [G_pq]``, solved for ``d = diag(D)^2 >= 0``
    (non-negative least squares; ``std_error`` holds each coefficient's relative std error, 0 when
    exact: on MNIST releases 97-99% of the coefficients are exact and the rest, whose recorded std is
    smaller than what the shared rows give them, too wide). The means are the recorded means. The
    sidecar stores no cross-block statistics, so the correlation
    between blocks is the one the shared layers imply.
    """

    def __init__(self, blocks: list[SpectralStats], unit_counts: dict[str, int]) -> None:
        from scipy.optimize import nnls

        self.blocks = blocks
        self.sizes = [b.k for b in blocks]
        offsets = np.cumsum([0, *self.sizes])
        self.slices = [slice(int(a), int(b)) for a, b in zip(offsets[:-1], offsets[1:])]
        rows = [self._rows(b, unit_counts) for b in blocks]
        total = int(offsets[-1])
        mix = np.zeros((total, total))
        for p, bp in enumerate(blocks):
            for q, bq in enumerate(blocks):
                if p == q:
                    mix[self.slices[p], self.slices[q]] = np.eye(bp.k)
                    continue
                for key in set(bp.layers) & set(bq.layers):
                    vp = bp.basis[rows[p][key]].astype(np.float64)
                    vq = bq.basis[rows[q][key]].astype(np.float64)
                    mix[self.slices[p], self.slices[q]] += vp.T @ vq
        self.mix = mix
        std = np.concatenate([b.coef_std.astype(np.float64) for b in blocks], axis=1)  # [C, K]
        target = std ** 2
        squared = mix * mix
        self.scales = np.empty_like(target)
        for c in range(len(target)):
            self.scales[c] = np.sqrt(nnls(squared, target[c])[0])
        # a coefficient whose recorded std is smaller than what its neighbours' shared rows already give
        # it cannot be matched by independent scales: its relative std error is reported, not hidden
        got = np.sqrt(self.scales ** 2 @ squared.T)
        self.std_error = np.abs(got - std) / np.maximum(std, 1e-12)  # [C, K]
        self.residual = float(self.std_error.max()) if self.std_error.size else 0.0
        self.mean = np.concatenate([b.coef_mean.astype(np.float64) for b in blocks], axis=1)

    @staticmethod
    def _rows(block: SpectralStats, unit_counts: dict[str, int]) -> dict[str, slice]:
        out, start = {}, 0
        for key in block.layers:
            out[key] = slice(start, start + unit_counts[key])
            start += unit_counts[key]
        if start != block.basis.shape[0]:
            raise ValueError(f"spectral block {block.key}: basis has {block.basis.shape[0]} rows, its layers "
                             f"{start} units")
        return out

    def sample(self, classes: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Targets [B, k] per block key, for the classes ``classes`` [B]."""
        return self.from_latent(classes, rng.standard_normal((len(classes), self.mix.shape[0])))

    def from_latent(self, classes: np.ndarray, z: np.ndarray) -> dict[str, np.ndarray]:
        """The targets of the latent draw ``z`` [B, K] (all blocks' coefficients side by side)."""
        draw = self.mean[classes] + (z * self.scales[classes]) @ self.mix.T
        return {b.key: draw[:, s] for b, s in zip(self.blocks, self.slices)}
