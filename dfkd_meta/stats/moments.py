"""Streaming per-class moments: one pass, float64, mergeable (Chan et al.), memory independent of N."""
from __future__ import annotations

import numpy as np


class ClassMoments:
    """Per-class count, mean and sum of squared deviations (M2) of vectors of ``units`` values.

    With ``cov=True`` the full per-class co-moment matrix is kept too (units x units per class),
    for the low-rank covariance factors of SPEC §8.2.
    """

    def __init__(self, num_classes: int, units: int, cov: bool = False):
        self.count = np.zeros(num_classes, np.int64)
        self.mean = np.zeros((num_classes, units))
        self.m2 = np.zeros((num_classes, units))
        self.comoment = np.zeros((num_classes, units, units)) if cov else None

    def update(self, values: np.ndarray, labels: np.ndarray) -> None:
        """Add a batch: ``values`` [B, units], ``labels`` [B]."""
        values = values.astype(np.float64, copy=False)
        for c in np.unique(labels):
            v = values[labels == c]
            mean_b = v.mean(axis=0)
            dev = v - mean_b
            self._merge(int(c), len(v), mean_b, np.einsum("ij,ij->j", dev, dev),
                        dev.T @ dev if self.comoment is not None else None)

    def _merge(self, c: int, n_b: int, mean_b: np.ndarray, m2_b: np.ndarray, co_b: np.ndarray | None) -> None:
        n_a = self.count[c]
        n = n_a + n_b
        delta = mean_b - self.mean[c]
        self.mean[c] += delta * (n_b / n)
        self.m2[c] += m2_b + delta ** 2 * (n_a * n_b / n)
        if co_b is not None:
            self.comoment[c] += co_b + np.outer(delta, delta) * (n_a * n_b / n)
        self.count[c] = n

    def merge(self, other: ClassMoments) -> None:
        """Fold in moments computed elsewhere (another shard of the data)."""
        for c in np.flatnonzero(other.count):
            self._merge(int(c), int(other.count[c]), other.mean[c], other.m2[c],
                        other.comoment[c] if self.comoment is not None and other.comoment is not None else None)

    def std(self) -> np.ndarray:
        """Population standard deviation (divisor n, SPEC §8.1); 0 for empty classes."""
        n = np.maximum(self.count, 1)[:, None]
        return np.sqrt(np.maximum(self.m2 / n, 0.0))

    def low_rank_factors(self, rank: int) -> np.ndarray:
        """[C, units, rank] factors F with F F^T the best rank-R part of each class covariance.

        Since the covariance minus F F^T is positive semi-definite, diag(F F^T) <= variance holds
        up to rounding; rows are shrunk by that rounding so SPEC §8.2's psi >= 0 holds exactly.
        """
        if self.comoment is None:
            raise ValueError("covariance was not accumulated (cov=False)")
        classes, units = self.mean.shape
        out = np.zeros((classes, units, rank))
        var = self.std() ** 2
        for c in range(classes):
            if self.count[c] < 2:
                continue
            cov = self.comoment[c] / self.count[c]
            vals, vecs = np.linalg.eigh(cov)
            top = np.argsort(vals)[::-1][:rank]
            f = vecs[:, top] * np.sqrt(np.maximum(vals[top], 0.0))
            rowsum = (f * f).sum(axis=1)
            shrink = np.where(rowsum > var[c], np.sqrt(var[c] / np.maximum(rowsum, 1e-300)), 1.0)
            out[c, :, :len(top)] = f * shrink[:, None]
        return out


def update_channels(moments: ClassMoments, values: np.ndarray, labels: np.ndarray) -> None:
    """Per-channel statistics pooled over positions (SPEC §8.3), from [B, CH, positions...] activations.

    Exact: each example contributes P positions with mean m_e and within-example M2 w_e, so a class
    has mean mean(m_e) and M2 = sum(w_e) + P * sum((m_e - mean)^2), merged as in ClassMoments.
    """
    v = values.reshape(values.shape[0], values.shape[1], -1)
    positions = v.shape[2]
    m = v.mean(axis=2, dtype=np.float64)
    dev = v - m[:, :, None]
    within = np.einsum("bcp,bcp->bc", dev, dev, dtype=np.float64)
    for c in np.unique(labels):
        sel = labels == c
        mean_b = m[sel].mean(axis=0)
        m2_b = within[sel].sum(axis=0) + positions * ((m[sel] - mean_b) ** 2).sum(axis=0)
        moments._merge(int(c), int(sel.sum()) * positions, mean_b, m2_b, None)
