"""SPEC §10: the privacy block."""
from __future__ import annotations

import math
from collections import Counter

import numpy as np

from ... import privacy
from .. import values
from ..accounting import released_statistics
from ..state import GroupContext
from . import rule


@rule("DM804", on="privacy")
def laplace_has_no_delta(ctx: GroupContext) -> None:
    """The laplace mechanism has delta = 0."""
    a = ctx.attrs
    if a.get("mechanism") == "laplace" and a.get("delta") not in (None, 0.0):
        ctx.report(f"{ctx.path}@delta", f"delta must be 0 for the laplace mechanism, got {a['delta']}")


ACCOUNTING = "accounting"
TOLERANCE = 1e-6  # relative: the writer's float64 arithmetic, not a margin a forger could use


def _accounting(ctx: GroupContext) -> tuple[list[str], np.ndarray, np.ndarray] | None:
    """(statistics, sensitivity, noise_std) of the accounting group, when all three passed their structure checks
    and have the same length; None otherwise (their own rules report why)."""
    base = f"{ctx.path}/{ACCOUNTING}"
    found = [ctx.state.datasets.get(f"{base}/{name}") for name in ("statistics", "sensitivity", "noise_std")]
    if any(ds is None for ds in found):
        return None
    try:
        names = [values.as_str(v) for v in np.asarray(found[0][()]).reshape(-1)]
    except (TypeError, UnicodeDecodeError):
        ctx.state.add("DM807", f"{base}/statistics", "statistic names are not UTF-8 text")
        return None
    sens, noise = (np.asarray(ds[()], dtype=np.float64).reshape(-1) for ds in found[1:])
    if not len(names) == len(sens) == len(noise):
        return None
    return names, sens, noise


@rule("DM804", on="privacy")
def accounting_values_are_positive(ctx: GroupContext) -> None:
    """Every sensitivity and noise standard deviation of the accounting is > 0."""
    acc = _accounting(ctx)
    if acc is None:
        return
    for name, arr in zip(("sensitivity", "noise_std"), acc[1:]):
        bad = np.flatnonzero(~(arr > 0))
        if len(bad):
            ctx.report(f"{ctx.path}/{ACCOUNTING}/{name}", f"{acc[0][bad[0]]!r}: {arr[bad[0]]!r}; must be > 0")


@rule("DM806", on="privacy")
def budget_can_be_checked(ctx: GroupContext) -> None:
    """A privacy block carries an accounting group (warning): without one its epsilon is a claim."""
    if ACCOUNTING not in ctx.groups:
        ctx.report(ctx.path, f"epsilon {ctx.attrs.get('epsilon')} is stated without the noise it rests on "
                             "(no accounting group, SPEC §10.1): it cannot be checked")


def _released(ctx: GroupContext, clip: float, applies_to: list[str]) -> dict[str, float] | None:
    """The statistics this file's layers and spectral blocks release (SPEC §10.1), or None when a layer or block
    did not pass its own checks (their rules report it)."""
    state = ctx.state
    layers = []
    for key, path in state.children_of_type("/layers", "layer_stats").items():
        v = state.group_values(path)
        if v.get("shape") is None:
            return None
        layers.append((key, v["shape"], v.get("granularity") or "unit"))
    known = {key for key, _, _ in layers}
    blocks = []
    for key, path in state.children_of_type("/spectral", "spectral_stats").items():
        refs = state.group_values(path).get("layers")
        if refs is None or any(r not in known for r in refs):
            return None
        blocks.append((key, refs))
    return released_statistics(layers, blocks, applies_to, clip)


@rule("DM807", on="privacy")
def accounting_lists_what_is_released(ctx: GroupContext) -> None:
    """The accounting lists exactly the statistics the file releases, with the sensitivities clip_norm and their
    shapes give, and no covariance factors sit under a block that covers the layers."""
    a, p = ctx.attrs, ctx.path
    acc = _accounting(ctx)
    if acc is None or a.get("clip_norm") is None or a.get("applies_to") is None:
        return
    if "layers" in a["applies_to"]:
        with_cov = [k for k, path in ctx.state.children_of_type("/layers", "layer_stats").items()
                    if f"{path}/cov_factors" in ctx.state.kinds]
        if with_cov:
            ctx.report(f"/layers/{with_cov[0]}/cov_factors", "covariance factors have no private release (SPEC "
                                                             f"§10.1), yet {p} covers the layers")
    expected = _released(ctx, float(a["clip_norm"]), list(a["applies_to"]))
    if expected is None:
        return
    names, sens, _ = acc
    where = f"{p}/{ACCOUNTING}/statistics"
    repeated = sorted(n for n, k in Counter(names).items() if k > 1)
    missing, unknown = sorted(set(expected) - set(names)), sorted(set(names) - set(expected))
    for what, listed in (("repeated", repeated), ("missing", missing), ("not released by this file", unknown)):
        if listed:
            ctx.report(where, f"{len(listed)} statistic(s) {what}: {', '.join(listed[:3])}"
                              f"{' ...' if len(listed) > 3 else ''}")
    for name, s in zip(names, sens):
        want = expected.get(name)
        if want is not None and not abs(s - want) <= TOLERANCE * want:
            ctx.report(f"{p}/{ACCOUNTING}/sensitivity", f"{name}: {s!r}, but clip_norm {a['clip_norm']} and the "
                                                        f"layer's shape give {want!r}")
            break


@rule("DM805", on="privacy")
def noise_buys_the_budget(ctx: GroupContext) -> None:
    """The recorded noise composes (GDP) to a budget no larger than the recorded epsilon at the recorded delta."""
    a, p = ctx.attrs, ctx.path
    acc = _accounting(ctx)
    if acc is None or a.get("epsilon") is None or a.get("delta") is None:
        return
    if a.get("mechanism") != "gaussian":
        ctx.report(f"{p}@mechanism", f"{a.get('mechanism')!r}: the gdp accountant covers Gaussian noise only")
        return
    _, sens, noise = acc
    if not (np.isfinite(sens).all() and np.isfinite(noise).all() and (sens > 0).all() and (noise > 0).all()):
        return  # DM804
    if not 0 < a["delta"] < 1:
        return  # DM804
    mu = privacy.compose((sens / noise).tolist())
    if not math.isfinite(mu) or mu > privacy.MU_MAX:
        ctx.report(f"{p}@epsilon", f"the recorded noise is negligible (mu {mu:.3g}): it buys no privacy")
        return
    needed = privacy.epsilon_for(mu, a["delta"])
    if needed > a["epsilon"] * (1 + TOLERANCE):
        ctx.report(f"{p}@epsilon", f"{a['epsilon']:g} is claimed, but the recorded noise (mu {mu:.4g} over "
                                   f"{len(sens)} statistics) gives epsilon {needed:.4g} at delta {a['delta']:g}")
