"""Differential-privacy accounting (dfkd_meta/privacy.py): the GDP curve against its definition, the calibration
against the classic Gaussian mechanism, composition and the budget split."""
from __future__ import annotations

import math

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate
from scipy.stats import norm

from dfkd_meta import privacy
from dfkd_meta.errors import UsageError


def _hockey_stick(epsilon: float, mu: float) -> float:
    """δ(ε) from its definition, sup over events of P[N(μ,1) ∈ S] - e^ε P[N(0,1) ∈ S] (the integral of the
    positive part of the density difference), by quadrature: independent of the closed form."""
    f = lambda x: max(0.0, norm.pdf(x, mu) - math.exp(epsilon) * norm.pdf(x))  # noqa: E731
    # the difference is positive above x* = ε/μ + μ/2: integrate from there
    start = epsilon / mu + mu / 2
    value, _ = integrate.quad(f, start, start + 40, epsabs=1e-15, epsrel=1e-12, limit=200)
    return value


@pytest.mark.parametrize("epsilon,mu", [(0.5, 0.3), (1.0, 1.0), (2.0, 1.5), (8.0, 2.0), (0.1, 0.05), (4.0, 0.8)])
def test_the_closed_form_equals_the_hockey_stick_divergence(epsilon, mu):
    assert privacy.delta_for(epsilon, mu) == pytest.approx(_hockey_stick(epsilon, mu), rel=1e-7, abs=1e-15)


def test_hand_computed_values():
    # at ε = 0 δ is the total variation between N(0,1) and N(μ,1): 2Φ(μ/2) - 1
    assert privacy.delta_for(0.0, 1.0) == pytest.approx(2 * norm.cdf(0.5) - 1, rel=1e-12)
    # 1-GDP at ε = 1: Φ(-1/2) - e Φ(-3/2) = 0.308538 - 2.718282 * 0.066807
    assert privacy.delta_for(1.0, 1.0) == pytest.approx(0.308538 - 2.718282 * 0.066807, abs=2e-6)
    assert privacy.delta_for(1.0, 0.0) == 0.0
    # tiny deltas stay exact in log space (a naive difference of CDFs underflows to 0 here)
    # far in the tail δ underflows a float while its log does not: checked at 60 digits (mpmath, torch's dependency)
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 60
    for epsilon, mu in ((50.0, 1.0), (300.0, 3.0), (8.0, 0.1)):
        a, b = mpmath.mpf(-epsilon / mu + mu / 2), mpmath.mpf(-epsilon / mu - mu / 2)
        exact = mpmath.log(mpmath.ncdf(a) - mpmath.exp(epsilon) * mpmath.ncdf(b))
        assert privacy.log_delta_for(epsilon, mu) == pytest.approx(float(exact), rel=1e-9)


@pytest.mark.parametrize("epsilon,delta", [(0.1, 1e-5), (0.5, 1e-5), (1.0, 1e-5), (1.0, 1e-10)])
def test_the_analytic_calibration_beats_the_classic_gaussian_mechanism(epsilon, delta):
    """Dwork & Roth's σ = Δ sqrt(2 ln(1.25/δ)) / ε (valid for ε <= 1) is (ε, δ)-DP by the exact curve, and the
    calibrated μ is larger: less noise for the same guarantee (Balle & Wang 2018)."""
    classic_mu = epsilon / math.sqrt(2 * math.log(1.25 / delta))
    assert privacy.delta_for(epsilon, classic_mu) <= delta
    mu = privacy.mu_for(epsilon, delta)
    assert mu > classic_mu
    assert privacy.delta_for(epsilon, mu) <= delta  # the guarantee holds at the returned μ, not only near it
    assert privacy.delta_for(epsilon, mu * (1 + 1e-9)) > delta * (1 - 1e-6)  # and it is the largest such μ


@settings(max_examples=60, deadline=None)
@given(epsilon=st.floats(0.01, 30.0), log10_delta=st.floats(-12.0, -1.0))
def test_calibration_and_conversion_are_inverses(epsilon, log10_delta):
    delta = 10.0 ** log10_delta
    mu = privacy.mu_for(epsilon, delta)
    assert privacy.delta_for(epsilon, mu) <= delta
    back = privacy.epsilon_for(mu, delta)
    assert back <= epsilon * (1 + 1e-7) + 1e-12 and back == pytest.approx(epsilon, rel=1e-6)
    assert privacy.log_delta_for(back, mu) <= math.log(delta)


def test_composition_and_the_budget_split_compose_back():
    mu = privacy.mu_for(8.0, 1e-5)
    parts = privacy.split(mu, {"counts": 1.0, "sums": 4.0, "squares": 4.0, "spectral": 1.0})
    assert privacy.compose(parts.values()) == pytest.approx(mu, rel=1e-12)
    assert parts["sums"] == pytest.approx(2 * parts["counts"], rel=1e-12)
    # k equal Gaussian releases at μ/sqrt(k) are μ-GDP together: the same (ε, δ) as one release at μ
    k = 25
    assert privacy.epsilon_for(privacy.compose([mu / math.sqrt(k)] * k), 1e-5) == pytest.approx(8.0, rel=1e-6)
    assert privacy.noise_std(2.0, 0.5) == 4.0
    with pytest.raises(UsageError, match="positive"):
        privacy.split(mu, {"counts": 0.0})


def test_budget_errors_name_the_option():
    for eps, delta, text in ((0.0, 1e-5, "{dp_epsilon}"), (math.inf, 1e-5, "{dp_epsilon}"), (1.0, 0.0, "{dp_delta}"),
                             (1.0, 1.0, "{dp_delta}"), (1.0, math.nan, "{dp_delta}")):
        with pytest.raises(UsageError) as info:
            privacy.mu_for(eps, delta)
        assert text in info.value.template


def test_monotone_in_both_arguments():
    eps = np.linspace(0.0, 10.0, 41)
    for mu in (0.2, 1.0, 3.0):
        d = [privacy.delta_for(e, mu) for e in eps]
        assert all(a >= b for a, b in zip(d, d[1:]))
    mus = np.linspace(0.05, 5.0, 40)
    d = [privacy.delta_for(1.0, m) for m in mus]
    assert all(a <= b for a, b in zip(d, d[1:]))


# --- private statistics (dfkd_meta/stats/private.py) and their accounting in the sidecar (SPEC §10.1) -----------

@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 20), units=st.integers(1, 30), scale=st.floats(1e-3, 1e3), bound=st.floats(0.1, 10.0),
       seed=st.integers(0, 2 ** 16))
def test_clipping_bounds_every_row_and_leaves_short_rows_alone(rows, units, scale, bound, seed):
    from dfkd_meta.stats.private import clip_rows

    v = (np.random.default_rng(seed).standard_normal((rows, units)) * scale).astype(np.float32)
    out = clip_rows(v, bound)
    norms, before = np.linalg.norm(out.astype(np.float64), axis=1), np.linalg.norm(v.astype(np.float64), axis=1)
    assert (norms <= bound).all()
    short = before <= bound * (1 - 1e-6)
    assert np.array_equal(out[short], v[short])
    # a clipped row keeps its direction
    long = ~short
    if long.any():
        cos = (out[long] * v[long]).sum(1) / (norms[long] * before[long])
        assert np.allclose(cos, 1.0, atol=1e-5)


def _sums(m):
    n = m.count.astype(np.float64)[:, None]
    return m.mean * n, m.m2 + n * m.mean ** 2


@pytest.mark.parametrize("kind", ["unit", "channel"])
def test_one_example_moves_the_sums_by_at_most_the_sensitivity(kind):
    """Add one extreme example (neighbours differ by one example added or removed): the noiseless sums and sums of
    squares move by at most the sensitivities the accounting records (B and B² per unit layer; B·√P and B² per
    channel)."""
    from dfkd_meta.sidecar.accounting import released_statistics
    from dfkd_meta.stats.moments import ChannelMoments, ClassMoments
    from dfkd_meta.stats.private import clip_rows

    rng = np.random.default_rng(0)
    shape = (3, 4) if kind == "channel" else (12,)
    clip, units = 0.7, 12
    b = privacy_bound = clip * math.sqrt(units)
    x = rng.standard_normal((50, units)).astype(np.float32)
    y = rng.integers(0, 3, 50)
    extreme = (1e6 * np.sign(rng.standard_normal(units))).astype(np.float32)

    def moments(values, labels):
        m = ChannelMoments(3, 3, 4) if kind == "channel" else ClassMoments(3, units)
        m.update(clip_rows(values, privacy_bound), labels)
        return _sums(m)
    (s1, q1), (s2, q2) = moments(x, y), moments(np.concatenate([x, extreme[None]]), np.append(y, 1))
    names = released_statistics([("l", shape, kind)], [], ["layers"], clip)
    ds, dq = np.linalg.norm(s1 - s2), np.linalg.norm(q1 - q2)
    sums, squares = (("layers/l/sums", "layers/l/squares") if kind == "unit" else
                     ("layers/l/channel_sums", "layers/l/channel_squares"))
    assert ds <= names[sums] * (1 + 1e-6) and dq <= names[squares] * (1 + 1e-6)
    assert names[sums] == pytest.approx(b if kind == "unit" else b * 2.0)  # √P = 2 for 4 positions
    assert ds > 0.1 * b  # the bound is not vacuous: the extreme example does move the sums


def test_the_noise_plan_spends_exactly_the_budget():
    from dfkd_meta.stats.private import PrivateRelease

    layers = [("a", (32,), "unit"), ("b", (8, 4, 4), "channel_unit"), ("logits", (10,), "unit")]
    r = PrivateRelease.plan(4.0, 1e-5, 1.5, layers, [("all", ["a", "b", "logits"])], ["dataset", "layers", "spectral"])
    assert len(r.noise) == 1 + 2 + 4 + 2 + 2
    mu = privacy.compose(r.sensitivity[n] / r.noise[n] for n in r.noise)
    assert mu == pytest.approx(privacy.mu_for(4.0, 1e-5), rel=1e-12)
    assert privacy.epsilon_for(mu, 1e-5) == pytest.approx(4.0, rel=1e-6)
    # equal shares: every statistic's noise is its sensitivity times the same multiplier
    multipliers = {n: r.noise[n] / r.sensitivity[n] for n in r.noise}
    assert max(multipliers.values()) == pytest.approx(min(multipliers.values()), rel=1e-12)
    assert r.sensitivity["layers/b/channel_sums"] == pytest.approx(1.5 * math.sqrt(128) * 4)


def test_noise_is_added_to_the_sums_before_means_and_stds_are_formed():
    from dfkd_meta.stats.moments import ClassMoments
    from dfkd_meta.stats.private import noise_moments

    class Ones:  # a generator whose every draw is 1: the noise is exactly its standard deviation
        def standard_normal(self, shape):
            return np.ones(shape)
    m = ClassMoments(2, 3)
    x = np.array([[1, 2, 3], [3, 2, 1], [0, 0, 0]], np.float32)
    m.update(x, np.array([0, 0, 1]))
    s, q = _sums(m)
    counts = np.array([4, 1])
    noise_moments(m, 0.5, 2.0, counts, Ones())
    np.testing.assert_allclose(m.mean, (s + 0.5) / counts[:, None])
    np.testing.assert_allclose(m.m2, np.maximum(q + 2.0 - counts[:, None] * m.mean ** 2, 0))
    assert (m.std() >= 0).all() and m.count.tolist() == [4, 1]


@pytest.fixture(scope="module")
def private_release(tmp_path_factory):
    from .conftest import digits_release
    return digits_release(tmp_path_factory.mktemp("dp"), "hinton-small", spectral_k=4, dp_epsilon=2.0)


def _findings(path):
    from dfkd_meta.sidecar import validate
    return {f.rule: f for f in validate(path).findings}


def test_a_private_export_validates_and_records_its_accounting(private_release):
    from dfkd_meta.sidecar import read_sidecar
    from dfkd_meta.sidecar.accounting import released_statistics

    sc = read_sidecar(private_release.sidecar_path)
    p = sc.privacy
    assert sc.format_version == "2.1.0" and p.mechanism == "gaussian" and p.epsilon == 2.0 and p.delta == 1e-5
    assert p.applies_to == ["dataset", "layers", "spectral"] and p.accounting.exact == ["teacher_check"]
    expected = released_statistics([(x.key, x.shape, x.granularity) for x in sc.layers],
                                   [(b.key, b.layers) for b in sc.spectral], p.applies_to, p.clip_norm)
    assert dict(zip(p.accounting.statistics, p.accounting.sensitivity.tolist())) == pytest.approx(expected)
    mu = privacy.compose((p.accounting.sensitivity / p.accounting.noise_std).tolist())
    assert privacy.epsilon_for(mu, p.delta) == pytest.approx(2.0, rel=1e-6)
    exact = np.bincount(load_digits_labels(), minlength=10)
    assert sc.dataset.class_counts.sum() == sc.dataset.sample_count and (sc.dataset.class_counts >= 1).all()
    assert not np.array_equal(sc.dataset.class_counts, exact)  # noised (sigma is several examples here)
    assert all(np.array_equal(x.count, sc.dataset.class_counts) for x in sc.layers)
    assert all((x.std >= 0).all() and np.isfinite(x.mean).all() for x in sc.layers)
    assert not {r for r, f in _findings(private_release.sidecar_path).items() if f.severity != "info"}


def load_digits_labels():
    from dfkd_meta.data import load_data
    return load_data("digits").labels("train")


def _forged(release, tmp_path, edit):
    import shutil

    path = tmp_path / "forged.dfkd.h5"
    shutil.copyfile(release.sidecar_path, path)
    with h5py.File(path, "r+") as f:
        edit(f)
    return path


def test_a_budget_lowered_by_hand_or_an_accounting_that_hides_a_statistic_is_rejected(private_release, tmp_path):
    def lower(f):
        f["privacy"].attrs["epsilon"] = 0.5

    def drop_one(f):
        acc = f["privacy/accounting"]
        names = [n.decode() if isinstance(n, bytes) else n for n in acc["statistics"][()]]
        keep = [i for i, n in enumerate(names) if n != "class_counts"]
        for item in ("statistics", "sensitivity", "noise_std"):
            values = acc[item][()][keep]
            del acc[item]
            acc.create_dataset(item, data=values, dtype=h5py.string_dtype() if item == "statistics" else None)

    def more_noise_claimed(f):  # noise multiplied on paper only: the budget it implies is smaller than the file's
        acc = f["privacy/accounting"]
        acc["noise_std"][...] = acc["noise_std"][()] * 10

    def smaller_sensitivity(f):
        acc = f["privacy/accounting"]
        acc["sensitivity"][...] = acc["sensitivity"][()] / 10

    def no_accounting(f):
        del f["privacy/accounting"]

    lowered = _findings(_forged(private_release, tmp_path, lower))
    assert lowered["DM805"].severity == "error" and "gives epsilon 2" in lowered["DM805"].message
    dropped = _findings(_forged(private_release, tmp_path, drop_one))
    assert dropped["DM807"].severity == "error" and "missing: class_counts" in dropped["DM807"].message
    smaller = _findings(_forged(private_release, tmp_path, smaller_sensitivity))
    assert smaller["DM807"].severity == "error" and "clip_norm" in smaller["DM807"].message
    # more noise than was added cannot be caught without the data: the file stays valid, its claim unchanged
    assert "DM805" not in _findings(_forged(private_release, tmp_path, more_noise_claimed))
    bare = _findings(_forged(private_release, tmp_path, no_accounting))
    assert bare["DM806"].severity == "warning" and not {r for r, f in bare.items() if f.severity == "error"}


def test_private_export_options_are_checked_before_any_work(tmp_path):
    from click.testing import CliRunner

    from cli.main import main as cli_main
    from dfkd_meta.data import load_data
    from dfkd_meta.stats.export import export_release

    from .conftest import digits_teacher
    model = digits_teacher("hinton-small", 40)
    with pytest.raises(UsageError, match="covariance factors have no private release"):
        export_release(model, load_data("digits"), tmp_path / "a", dp_epsilon=1.0, cov_rank=4, progress=False)
    r = CliRunner().invoke(cli_main, ["export", "--model", str(model), "--dp-delta", "1e-6", "-o", str(tmp_path / "b")])
    assert r.exit_code == 2 and "--dp-epsilon" in r.output and "Traceback" not in r.output, r.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_without_a_budget_the_private_code_path_is_never_taken(tmp_path, monkeypatch):
    """An export without --dp-epsilon never clips and never draws noise: its sidecar is the exact one."""
    import dfkd_meta.stats.export as ex
    import dfkd_meta.stats.private as pv

    from .conftest import digits_release

    def never(*a, **k):
        raise AssertionError("the private code path ran without a budget")
    for module, name in ((ex, "clip_rows"), (ex, "noise_generator"), (pv, "noise_moments"), (pv, "noised_counts")):
        monkeypatch.setattr(module, name, never)
    result = digits_release(tmp_path, "hinton-small", spectral_k=4)
    from dfkd_meta.sidecar import read_sidecar
    sc = read_sidecar(result.sidecar_path)
    assert sc.privacy is None and sc.format_version == "1.1.0"
    assert np.array_equal(sc.dataset.class_counts, np.bincount(load_digits_labels(), minlength=10))
