"""Differentially private statistics (SPEC §10.1): every example's values clipped during the pass, Gaussian noise
on the sums and counts after it, and the accounting that lets a reader recompute the budget.

Neighbouring data sets differ by one example added or removed. In each layer an example's vector of U values
(the logits divided by the temperature, as recorded) is scaled down to L2 norm ``clip``·√U at most (a per-unit
root-mean-square bound, so one setting fits layers of any width). The released statistics are then sums over
examples with a known sensitivity each (``sidecar.accounting.released_statistics``); the budget (ε, δ) fixes one
μ of Gaussian DP, shared equally over them (each gets μ/√S), so each statistic's noise is its sensitivity over
its share. Means and variances are formed from the noised sums over the noised class counts (rounded, at least
1); the teacher check is released exactly, and the privacy block says so.

The noise comes from a generator seeded by the operating system's entropy, never from a seed a reader could
know. Floating-point noise does not achieve the guarantee exactly (Mironov 2012): the budget is that of the
ideal mechanism, as in every DP library that adds float noise.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass

import numpy as np

from .. import privacy
from ..config import ExportConfig
from ..data import DataSource
from ..errors import DfkdError
from ..sidecar.accounting import released_statistics
from ..sidecar.types import PrivacyAccounting, PrivacyBlock
from .moments import ChannelMoments, ClassMoments, PooledUnitMoments

CLIP_MARGIN = 1 - 1e-6  # clipped vectors stay strictly inside the bound after float32 rounding


@dataclass(frozen=True)
class PrivateRelease:
    """The budget and the clipping of a private export, and the noise each statistic gets."""

    epsilon: float
    delta: float
    clip: float  # per-unit root mean square bound
    noise: dict[str, float]  # statistic -> noise standard deviation
    sensitivity: dict[str, float]
    applies_to: tuple[str, ...]

    @classmethod
    def plan(cls, epsilon: float, delta: float, clip: float, layers, spectral, applies_to) -> PrivateRelease:
        """``layers``: (key, per-example shape, granularity); ``spectral``: (key, its layer keys)."""
        privacy.check_budget(epsilon, delta, clip)
        sensitivity = released_statistics(layers, spectral, applies_to, clip)
        mu = privacy.mu_for(epsilon, delta)
        shares = privacy.split(mu, {name: 1.0 for name in sensitivity})
        return cls(epsilon, delta, clip, {n: privacy.noise_std(s, shares[n]) for n, s in sensitivity.items()},
                   sensitivity, tuple(applies_to))

    @classmethod
    def for_export(cls, cfg: ExportConfig, layers, spectral) -> PrivateRelease | None:
        """The noise plan of an export (None without ``cfg.dp_epsilon``), known before the pass: it covers the
        class counts, every layer, and the spectral blocks where there are any."""
        if cfg.dp_epsilon is None:
            return None
        spectral = list(spectral)
        return cls.plan(cfg.dp_epsilon, cfg.dp_delta, cfg.dp_clip, layers, spectral,
                        ["dataset", "layers", *(["spectral"] if spectral else [])])

    def noise_everything(self, class_counts: np.ndarray, moments: dict[str, tuple[ClassMoments, ...]],
                         coefficients: dict[str, ClassMoments], rng: np.random.Generator) -> np.ndarray:
        """Noise the class counts, then every layer's and spectral block's accumulators over them (in place);
        returns the noised counts."""
        counts = noised_counts(class_counts, self.noise["class_counts"], rng)
        for key, accumulators in moments.items():
            noise_layer(self, key, accumulators, counts, rng)
        for key, m in coefficients.items():
            noise_moments(m, self.noise[f"spectral/{key}/sums"], self.noise[f"spectral/{key}/squares"], counts, rng)
        return counts

    def block(self) -> PrivacyBlock:
        names = list(self.noise)
        return PrivacyBlock(
            mechanism="gaussian", epsilon=float(self.epsilon), delta=float(self.delta), clip_norm=float(self.clip),
            applies_to=list(self.applies_to),
            description=(f"analytic Gaussian mechanism, Gaussian DP composition (Dong, Roth & Su 2022) over "
                         f"{len(names)} statistics sharing the budget equally; each example's values clipped to a "
                         f"root mean square of {self.clip:g} per layer; the teacher check is released exactly"),
            accounting=PrivacyAccounting(statistics=names,
                                         sensitivity=np.array([self.sensitivity[n] for n in names], np.float64),
                                         noise_std=np.array([self.noise[n] for n in names], np.float64),
                                         exact=["teacher_check"]))


def noise_generator() -> np.random.Generator:
    """A generator seeded from the operating system's entropy (128 bits)."""
    return np.random.default_rng(secrets.randbits(128))


def clip_rows(values: np.ndarray, bound: float) -> np.ndarray:
    """Each row of ``values`` [B, U] scaled down to L2 norm at most ``bound`` (rows within it are unchanged)."""
    norms = np.sqrt(np.einsum("ij,ij->i", values, values, dtype=np.float64))
    scale = np.minimum(1.0, bound * CLIP_MARGIN / np.maximum(norms, 1e-300))
    if (scale >= 1.0).all():
        return values
    return values * scale[:, None].astype(values.dtype)


def noised_counts(counts: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    """Class counts with Gaussian noise, rounded, at least 1 (the denominators of every released mean)."""
    return np.maximum(np.rint(counts + std * rng.standard_normal(counts.shape)), 1).astype(np.int64)


def noise_moments(m: ClassMoments, sums_std: float, squares_std: float, counts: np.ndarray,
                  rng: np.random.Generator) -> None:
    """Replace ``m``'s statistics, in place, by those formed from its noised sums and squares over ``counts``
    (per class: the number of values each mean divides by). The true counts never leave."""
    n = m.count.astype(np.float64)[:, None]
    sums = m.mean * n + sums_std * rng.standard_normal(m.mean.shape)
    squares = m.m2 + n * m.mean ** 2 + squares_std * rng.standard_normal(m.mean.shape)
    d = counts.astype(np.float64)[:, None]
    m.mean = sums / d
    m.m2 = np.maximum(squares - d * m.mean ** 2, 0.0)
    m.count = counts.astype(np.int64).copy()


def noise_layer(release: PrivateRelease, key: str, moments: tuple[ClassMoments, ...], counts: np.ndarray,
                rng: np.random.Generator) -> None:
    """Noise one layer's accumulators (per unit; per channel; per channel plus pooled units)."""
    first = moments[0]
    if isinstance(first, ChannelMoments):
        positions = first.positions
        noise_moments(first, release.noise[f"layers/{key}/channel_sums"],
                      release.noise[f"layers/{key}/channel_squares"], counts * positions, rng)
        first.examples = counts.copy()
    else:
        noise_moments(first, release.noise[f"layers/{key}/sums"], release.noise[f"layers/{key}/squares"], counts, rng)
    for extra in moments[1:]:
        if isinstance(extra, PooledUnitMoments):
            noise_moments(extra, release.noise[f"layers/{key}/pooled_sums"],
                          release.noise[f"layers/{key}/pooled_squares"], np.array([counts.sum()]), rng)


def require_class_counts(data: DataSource, cfg: ExportConfig, classes: int) -> None:
    """Refuse a class with fewer than ``cfg.min_class_count`` examples: its per-class statistics would describe a
    handful of individuals rather than a class (with or without differential privacy)."""
    if cfg.min_class_count == 0:
        return
    labels = data.labels(cfg.split)
    counts = np.bincount(labels[:cfg.limit] if cfg.limit else labels, minlength=classes)
    few = [(c, int(n)) for c, n in enumerate(counts) if n < cfg.min_class_count]
    if few:
        names = data.class_names if len(data.class_names) == classes else [str(c) for c in range(classes)]
        listed = ", ".join(f"{names[c]!r} ({n})" for c, n in few[:5]) + (f" and {len(few) - 5} more" if len(few) > 5
                                                                          else "")
        raise DfkdError(f"{data.spec or data.name}: {len(few)} class(es) with fewer than {cfg.min_class_count} examples "
                        f"in the {cfg.split!r} split{' (first ' + str(cfg.limit) + ')' if cfg.limit else ''}: {listed}; "
                        "statistics of so few examples describe the individuals rather than the class. Add examples, "
                        "leave the class out of the data, or lower {min_class_count} (0 turns the guard off)")
