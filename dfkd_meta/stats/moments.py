"""Streaming per-class moments: one pass, mergeable (Chan et al.), memory independent of N.

Each batch is reduced per class in the precision it arrives in (float32 from ONNX Runtime), as
sums of values shifted by the class's running mean, so rounding stays at the level of the spread
rather than of the offset; the batch results are merged into float64 accumulators. Sorting a
batch by label first makes each class a contiguous slice, so no per-class copies are made.

Covariance is kept as a Nystrom sketch, co-moment @ Omega with a fixed random orthonormal
Omega [units, k], k = min(units, 2 * rank + 16): memory units x k per class instead of units^2,
exact when k = units, and merged like the co-moment itself (the sketch is linear in it). The
rank-R factors come from the stabilised Nystrom approximation (Tropp et al. 2017, "Fixed-rank
approximation of a positive-semidefinite matrix from streaming data").
"""
from __future__ import annotations

import numpy as np

from .. import dist


def sketch_width(units: int, rank: int) -> int:
    """Columns of the covariance sketch for factors of ``rank``."""
    return min(units, 2 * rank + 16)


def class_slices(values: np.ndarray, labels: np.ndarray):
    """(class, its rows of ``values``) for each class in the batch: sorted by label first (stable), so each class
    is one contiguous slice and no per-class copy is made."""
    labels = np.asarray(labels)
    if len(labels) > 1 and (labels[1:] < labels[:-1]).any():
        order = np.argsort(labels, kind="stable")
        values, labels = values[order], labels[order]
    classes, starts = np.unique(labels, return_index=True)
    for c, lo, hi in zip(classes, starts, [*starts[1:], len(labels)]):
        yield c, values[lo:hi]


class ClassMoments:
    """Per-class count, mean and sum of squared deviations (M2) of vectors of ``units`` values.

    With ``cov_rank`` > 0 a covariance sketch is kept too, for the rank-``cov_rank`` factors of
    SPEC §8.2 (``low_rank_factors``).
    """

    def __init__(self, num_classes: int, units: int, cov_rank: int = 0):
        self.count = np.zeros(num_classes, np.int64)
        self.mean = np.zeros((num_classes, units))
        self.m2 = np.zeros((num_classes, units))
        self.cov_rank = cov_rank
        self.omega = self.sketch = None
        if cov_rank > 0:
            k = sketch_width(units, cov_rank)
            # fixed seed: sketches of two shards of the same data merge
            q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((units, k)))
            self.omega = q  # [units, k], orthonormal columns
            self.sketch = np.zeros((num_classes, units, k))  # co-moment @ omega
        self._scratch = np.empty((0, units), np.float32)  # reused: a fresh large array per class costs page faults

    def update(self, values: np.ndarray, labels: np.ndarray) -> None:
        """Add a batch: ``values`` [B, units] (float32 or float64), ``labels`` [B]."""
        for c, v in class_slices(values, labels):
            # Shifted sums: with the shift near the class mean, float32 sums lose nothing that
            # matters, and sum(d^2) - sum(d)^2/n (in float64) has no cancellation.
            shift = (self.mean[c] if self.count[c] else v[0]).astype(v.dtype)
            if self._scratch.dtype != v.dtype or len(self._scratch) < len(v):
                self._scratch = np.empty((max(len(v), len(self._scratch)), v.shape[1]), v.dtype)
            d = np.subtract(v, shift, out=self._scratch[:len(v)])
            s1 = d.sum(axis=0).astype(np.float64)
            n_b = len(v)
            mean_b = shift + s1 / n_b
            m2_b = np.maximum(np.einsum("ij,ij->j", d, d).astype(np.float64) - s1 * s1 / n_b, 0.0)
            sk_b = None
            if self.sketch is not None:  # (D^T D - s1 s1^T / n) @ omega, for shifted values D
                d64 = d.astype(np.float64)
                sk_b = d64.T @ (d64 @ self.omega) - np.outer(s1, s1 @ self.omega) / n_b
            self._merge(int(c), n_b, mean_b, m2_b, sk_b)

    def _merge(self, c: int, n_b: int, mean_b: np.ndarray, m2_b: np.ndarray, sk_b: np.ndarray | None) -> None:
        n_a = self.count[c]
        n = n_a + n_b
        delta = mean_b - self.mean[c]
        self.mean[c] += delta * (n_b / n)
        self.m2[c] += m2_b + delta ** 2 * (n_a * n_b / n)
        if sk_b is not None:
            self.sketch[c] += sk_b + np.outer(delta, delta @ self.omega) * (n_a * n_b / n)
        self.count[c] = n

    def merge(self, other: ClassMoments) -> None:
        """Fold in moments computed elsewhere (another shard of the data)."""
        if (self.sketch is None) != (other.sketch is None) or self.cov_rank != other.cov_rank:
            raise ValueError("cannot merge moments kept with different cov_rank")
        for c in np.flatnonzero(other.count):
            self._merge(int(c), int(other.count[c]), other.mean[c], other.m2[c],
                        other.sketch[c] if other.sketch is not None else None)

    def merge_across_processes(self) -> None:
        """Fold in every other process's moments (each streamed its own shard of the data): Chan et al.'s pairwise
        merge in its parallel form, three float64 all-reduces (counts; count-weighted means; each shard's M2 and
        sketch plus its count times the outer product of its mean's offset from the merged mean), so memory stays one
        accumulator whatever the number of processes. Every process ends with the merged moments; no-op in one."""
        if dist.world_size() == 1:
            return
        n_local = self.count.astype(np.float64)
        self.count = dist.reduce_array(self.count)
        n = np.maximum(self.count, 1).astype(np.float64)[:, None]
        mean = dist.reduce_array(n_local[:, None] * self.mean) / n
        delta = self.mean - mean  # rows of classes this process never saw: mean 0, but weighted by a count of 0
        self.m2 = dist.reduce_array(self.m2 + n_local[:, None] * delta ** 2)
        if self.sketch is not None:
            self.sketch = dist.reduce_array(self.sketch + n_local[:, None, None] * delta[:, :, None]
                                            * (delta @ self.omega)[:, None, :])
        self.mean = mean

    def std(self) -> np.ndarray:
        """Population standard deviation (divisor n, SPEC §8.1); 0 for empty classes."""
        n = np.maximum(self.count, 1)[:, None]
        return np.sqrt(np.maximum(self.m2 / n, 0.0))

    def low_rank_factors(self, rank: int | None = None) -> np.ndarray:
        """[C, units, rank] factors F with F F^T the rank-R Nystrom approximation of each class covariance.

        The approximation is below the covariance in the PSD order, so diag(F F^T) <= variance holds
        up to rounding; rows are shrunk by that rounding so SPEC §8.2's psi >= 0 holds exactly.
        """
        if self.sketch is None:
            raise ValueError("covariance was not accumulated (cov_rank=0)")
        rank = self.cov_rank if rank is None else rank
        classes, units = self.mean.shape
        out = np.zeros((classes, units, rank))
        var = self.std() ** 2
        for c in range(classes):
            if self.count[c] < 2:
                continue
            f = _nystrom_factors(self.sketch[c] / self.count[c], self.omega, rank)
            rowsum = (f * f).sum(axis=1)
            shrink = np.where(rowsum > var[c], np.sqrt(var[c] / np.maximum(rowsum, 1e-300)), 1.0)
            out[c, :, :f.shape[1]] = f * shrink[:, None]
        return out


def _nystrom_factors(y: np.ndarray, omega: np.ndarray, rank: int) -> np.ndarray:
    """Top-``rank`` factors of the PSD matrix A from its sketch Y = A @ Omega (Tropp et al. 2017, Alg. 3)."""
    nu = np.sqrt(y.shape[0]) * np.spacing(np.linalg.norm(y))  # a tiny shift keeps the Cholesky factor defined
    y_nu = y + nu * omega
    b = omega.T @ y_nu
    b = (b + b.T) / 2
    try:
        chol = np.linalg.cholesky(b)  # lower: b = L L^T
        e = np.linalg.solve(chol, y_nu.T).T  # Y_nu L^-T
    except np.linalg.LinAlgError:  # numerically rank-deficient: use the pseudo-inverse square root
        vals, vecs = np.linalg.eigh(b)
        keep = vals > vals.max() * 1e-12
        e = y_nu @ (vecs[:, keep] / np.sqrt(vals[keep]))
    u, sv, _ = np.linalg.svd(e, full_matrices=False)
    lam = np.maximum(sv[:rank] ** 2 - nu, 0.0)
    return u[:, :rank] * np.sqrt(lam)


def pool_positions(moments: ClassMoments, channels: int) -> ClassMoments:
    """Per-channel moments pooled over positions (SPEC §8.3), derived exactly from per-unit ones.

    ``moments`` holds units in [channels, positions...] order. By the law of total variance a
    channel's mean is the mean of its units' means and its M2 is the units' M2 plus
    n * sum((unit mean - channel mean)^2); the count is n * positions.
    """
    classes, units = moments.mean.shape
    if units % channels:
        raise ValueError(f"{units} units do not split into {channels} channels")
    positions = units // channels
    mean_u = moments.mean.reshape(classes, channels, positions)
    pooled = ClassMoments(classes, channels)
    pooled.count = moments.count * positions
    pooled.mean = mean_u.mean(axis=2)
    pooled.m2 = (moments.m2.reshape(classes, channels, positions).sum(axis=2)
                 + moments.count[:, None] * ((mean_u - pooled.mean[:, :, None]) ** 2).sum(axis=2))
    return pooled


class ChannelMoments(ClassMoments):
    """Per-class moments of each channel pooled over its positions, accumulated directly from [B, CH * P] values
    (channels first, as ONNX lays tensors out): memory classes x channels, whatever the map's size.

    Equals ``pool_positions`` of the per-unit moments (the same law of total variance, one batch at a
    time); ``count`` counts values (examples x positions), ``examples`` the examples of each class.
    """

    def __init__(self, num_classes: int, channels: int, positions: int):
        super().__init__(num_classes, channels)
        self.positions = positions
        self.examples = np.zeros(num_classes, np.int64)

    def update(self, values: np.ndarray, labels: np.ndarray) -> None:
        channels, positions = self.mean.shape[1], self.positions
        for c, v in class_slices(values, labels):
            examples = len(v)
            v = v.reshape(examples, channels, positions)
            shift = (self.mean[c] if self.count[c] else v[0].mean(axis=1)).astype(v.dtype)
            d = v - shift[None, :, None]  # shifted, as in ClassMoments.update: no cancellation in float32
            s1 = d.sum(axis=(0, 2), dtype=np.float64)
            n_b = examples * positions
            m2_b = np.maximum(np.einsum("ncp,ncp->c", d, d).astype(np.float64) - s1 * s1 / n_b, 0.0)
            self._merge(int(c), n_b, shift + s1 / n_b, m2_b, None)
            self.examples[c] += examples

    def merge(self, other: ChannelMoments) -> None:
        super().merge(other)
        self.examples += other.examples

    def merge_across_processes(self) -> None:
        super().merge_across_processes()
        self.examples = dist.reduce_array(self.examples)


class PooledUnitMoments(ClassMoments):
    """Moments of each unit over the examples of every class together (the ``channel_unit`` layout)."""

    def __init__(self, units: int):
        super().__init__(1, units)

    def update(self, values: np.ndarray, labels: np.ndarray) -> None:
        super().update(values, np.zeros(len(values), np.int64))
