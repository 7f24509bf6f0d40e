"""Differential-privacy accounting for released statistics: Gaussian mechanisms counted in Gaussian DP.

A noised statistic is a Gaussian mechanism: a sum that one example moves by at most its L2 sensitivity
``Δ`` (a clipping bound; neighbouring data sets differ by adding or removing one example), released with
``N(0, σ²)`` noise on every coordinate. Such a release is μ-GDP with ``μ = Δ / σ`` (Dong, Roth & Su 2022,
Theorem 2.7); several of them together are ``sqrt(Σ μ_i²)``-GDP, exactly and not as a bound (their
Corollary 3.3); and μ-GDP is (ε, δ(ε))-DP for every ε >= 0 with

    δ(ε) = Φ(-ε/μ + μ/2) - e^ε Φ(-ε/μ - μ/2)        (their Corollary 2.13)

the same curve that calibrates the analytic Gaussian mechanism (Balle & Wang 2018, Theorem 8). So a budget
(ε, δ) fixes one μ; it is split across the released statistics by shares of μ², and each statistic's noise
follows from its sensitivity. Everything here is computed in log space, so δ down to 1e-300 is exact.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from scipy.optimize import brentq
from scipy.special import log_ndtr

from .errors import UsageError

MU_MAX = 1e6  # beyond this a budget protects nothing a float can tell apart


def check_budget(epsilon: float, delta: float, clip: float | None = None) -> None:
    """Refuse a budget (and a clipping bound, when given) a private release cannot use: the one check of the
    export's dp settings."""
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise UsageError(f"{{dp_epsilon}} {epsilon}: must be a positive number")
    if not (math.isfinite(delta) and 0 < delta < 1):
        raise UsageError(f"{{dp_delta}} {delta}: must be in (0, 1)")
    if clip is not None and not (math.isfinite(clip) and clip > 0):
        raise UsageError(f"{{dp_clip}} {clip}: must be a positive number")


def log_delta_for(epsilon: float, mu: float) -> float:
    """log δ(ε) of a μ-GDP mechanism (−inf for μ = 0: no information released)."""
    if mu < 0 or epsilon < 0 or not (math.isfinite(mu) and math.isfinite(epsilon)):
        raise ValueError(f"mu {mu} and epsilon {epsilon} must be finite and >= 0")
    if mu == 0:
        return -math.inf
    a, b = -epsilon / mu + mu / 2, -epsilon / mu - mu / 2
    la, lb = float(log_ndtr(a)), float(log_ndtr(b))
    ratio = epsilon + lb - la  # log(e^ε Φ(b) / Φ(a)) < 0 for μ > 0
    return la + math.log(-math.expm1(ratio)) if ratio < 0 else -math.inf


def delta_for(epsilon: float, mu: float) -> float:
    """δ(ε) of a μ-GDP mechanism: the smallest δ for which it is (ε, δ)-DP."""
    return math.exp(log_delta_for(epsilon, mu))


def mu_for(epsilon: float, delta: float) -> float:
    """The largest μ whose mechanism is (ε, δ)-DP (δ(ε) grows with μ)."""
    check_budget(epsilon, delta)
    target = math.log(delta)
    hi = 1.0
    while log_delta_for(epsilon, hi) < target:
        hi *= 2
        if hi > MU_MAX:
            return MU_MAX
    lo = hi / 2
    while lo > 1e-300 and log_delta_for(epsilon, lo) >= target:
        lo /= 2
    mu = brentq(lambda m: log_delta_for(epsilon, m) - target, lo, hi, xtol=1e-14, rtol=1e-14, maxiter=500)
    # brentq stops within its tolerance on either side; step down until the guarantee holds, in log space and
    # after rounding back to δ itself
    while log_delta_for(epsilon, mu) > target or delta_for(epsilon, mu) > delta:
        mu = math.nextafter(mu, 0.0) * (1 - 1e-12)
    return mu


def epsilon_for(mu: float, delta: float) -> float:
    """The smallest ε >= 0 for which a μ-GDP mechanism is (ε, δ)-DP (δ(ε) falls as ε grows)."""
    if not (0 < delta < 1):
        raise ValueError(f"delta {delta} must be in (0, 1)")
    target = math.log(delta)
    if log_delta_for(0.0, mu) <= target:
        return 0.0
    hi = max(1.0, mu * mu)
    while log_delta_for(hi, mu) > target:
        hi *= 2
    eps = brentq(lambda e: log_delta_for(e, mu) - target, 0.0, hi, xtol=1e-14, rtol=1e-14, maxiter=500)
    while log_delta_for(eps, mu) > target or delta_for(eps, mu) > delta:
        eps = math.nextafter(eps, math.inf) * (1 + 1e-12)
    return eps


def compose(mus: Iterable[float]) -> float:
    """μ of several Gaussian mechanisms on the same data (Dong, Roth & Su 2022, Corollary 3.3)."""
    return math.sqrt(sum(m * m for m in mus))


def split(mu: float, shares: Mapping[str, float]) -> dict[str, float]:
    """Each statistic's μ_i when a μ-GDP budget is shared out in proportion to ``shares`` of μ²: the parts
    compose back to ``mu``."""
    total = sum(shares.values())
    if not shares or any(not (math.isfinite(s) and s > 0) for s in shares.values()):
        raise UsageError(f"budget shares {dict(shares)}: each must be a positive number")
    return {name: mu * math.sqrt(s / total) for name, s in shares.items()}


def noise_std(sensitivity: float, mu: float) -> float:
    """The Gaussian noise's standard deviation that makes a statistic of L2 ``sensitivity`` μ-GDP."""
    if not (sensitivity > 0 and mu > 0):
        raise ValueError(f"sensitivity {sensitivity} and mu {mu} must be > 0")
    return sensitivity / mu
