"""Streaming per-class moments equal a direct computation, whatever the batching."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dfkd_meta.stats.moments import ClassMoments, pool_positions


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 300), units=st.integers(1, 6), classes=st.integers(1, 4), batch=st.integers(1, 64),
       offset=st.sampled_from([0.0, 1e3, -5e4]), seed=st.integers(0, 1000))
def test_streaming_equals_direct_and_ignores_batch_size(n, units, classes, batch, offset, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(offset, 2.0, (n, units))
    y = rng.integers(0, classes, n)
    m = ClassMoments(classes, units, cov_rank=units)  # sketch as wide as the layer: the covariance is exact
    for i in range(0, n, batch):
        m.update(x[i:i + batch], y[i:i + batch])
    factors = m.low_rank_factors()
    for c in range(classes):
        sel = x[y == c]
        assert m.count[c] == len(sel)
        if len(sel):
            np.testing.assert_allclose(m.mean[c], sel.mean(0), rtol=1e-12, atol=1e-9)
            np.testing.assert_allclose(m.std()[c], sel.std(0), rtol=1e-8, atol=1e-9)
            np.testing.assert_allclose(m.sketch[c] / len(sel), np.cov(sel.T, bias=True).reshape(units, units) @ m.omega,
                                       rtol=1e-7, atol=1e-6)
            if len(sel) > 1:
                f = factors[c]
                np.testing.assert_allclose(f @ f.T, np.cov(sel.T, bias=True).reshape(units, units), rtol=1e-6, atol=1e-5)
        else:
            assert (m.mean[c] == 0).all() and (m.std()[c] == 0).all()


def test_merging_shards_equals_one_pass():
    rng = np.random.default_rng(1)
    x, y = rng.normal(0, 1, (500, 3)), rng.integers(0, 3, 500)
    whole, a, b = (ClassMoments(3, 3, cov_rank=2) for _ in range(3))
    whole.update(x, y)
    a.update(x[:123], y[:123])
    b.update(x[123:], y[123:])
    a.merge(b)
    np.testing.assert_allclose(a.mean, whole.mean, atol=1e-14)
    np.testing.assert_allclose(a.std(), whole.std(), atol=1e-14)
    np.testing.assert_allclose(a.sketch, whole.sketch, atol=1e-10)
    with pytest.raises(ValueError, match="different cov_rank"):
        a.merge(ClassMoments(3, 3))


def test_channel_statistics_pool_over_positions_in_any_batching():
    rng = np.random.default_rng(2)
    v, y = rng.normal(3, 2, (40, 3, 4, 5)).astype(np.float32), rng.integers(0, 2, 40)
    v[:, 1] += rng.normal(0, 5, (4, 5)).astype(np.float32)  # positions of a channel differ in mean
    m = ClassMoments(2, 60)
    for i in range(0, 40, 7):
        m.update(v[i:i + 7].reshape(len(v[i:i + 7]), -1), y[i:i + 7])
    pooled = pool_positions(m, 3)
    for c in range(2):
        ref = v[y == c].transpose(1, 0, 2, 3).reshape(3, -1).astype(np.float64)
        np.testing.assert_allclose(pooled.mean[c], ref.mean(1), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(pooled.std()[c], ref.std(1), rtol=1e-6)
        assert pooled.count[c] == ref.shape[1]


def test_pooling_refuses_units_that_do_not_split_into_channels():
    with pytest.raises(ValueError, match="do not split"):
        pool_positions(ClassMoments(2, 10), 3)


@settings(max_examples=30, deadline=None)
@given(offset=st.sampled_from([0.0, 300.0, -2e3]), scale=st.sampled_from([1e-2, 1.0, 50.0]),
       batch=st.integers(1, 600), seed=st.integers(0, 1000))
def test_float32_batches_keep_float32_accuracy(offset, scale, batch, seed):
    """ONNX Runtime hands over float32: per-batch reduction in float32, merged in float64."""
    rng = np.random.default_rng(seed)
    x = rng.normal(offset, scale, (1500, 7)).astype(np.float32)
    y = rng.integers(0, 3, 1500)
    m = ClassMoments(3, 7)
    for i in range(0, 1500, batch):
        m.update(x[i:i + batch], y[i:i + batch])
    for c in range(3):
        ref = x[y == c].astype(np.float64)
        # |offset| / scale up to 2e5: the spread must still come out to float32 accuracy
        np.testing.assert_allclose(m.mean[c], ref.mean(0), rtol=0, atol=1e-6 * (abs(offset) + scale))
        np.testing.assert_allclose(m.std()[c], ref.std(0), rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize("units", [8, 300])
def test_low_rank_factors_capture_the_covariance_and_never_exceed_the_variance(units):
    """With 300 units the sketch (2R+16 = 20 columns) is much narrower than the layer: Nystrom."""
    rng = np.random.default_rng(3)
    basis = rng.normal(0, 1, (units, 2))
    x = rng.normal(0, 1, (5000, 2)) @ basis.T + rng.normal(0, 0.05, (5000, units))
    m = ClassMoments(1, units, cov_rank=2)
    for i in range(0, 5000, 512):
        m.update(x[i:i + 512].astype(np.float32), np.zeros(len(x[i:i + 512]), np.int64))
    f = m.low_rank_factors()[0]
    cov = np.cov(x.T, bias=True)
    top = np.linalg.eigh(cov)[1][:, -2:]
    assert np.abs(f @ f.T - cov).max() < 0.01 * np.abs(cov).max()
    assert np.abs(f @ f.T - top @ top.T @ cov @ top @ top.T).max() < 0.005 * np.abs(cov).max()
    assert ((f * f).sum(1) <= m.std()[0] ** 2).all()


def test_nystrom_recovers_a_low_rank_covariance_from_a_narrow_sketch():
    rng = np.random.default_rng(4)
    units, rank = 2000, 5
    spectrum = np.array([50.0, 20.0, 8.0, 3.0, 1.0])
    q, _ = np.linalg.qr(rng.standard_normal((units, rank)))
    x = (rng.standard_normal((3000, rank)) * np.sqrt(spectrum)) @ q.T + rng.normal(0, 0.01, (3000, units))
    m = ClassMoments(1, units, cov_rank=rank)
    assert m.sketch.shape == (1, units, 2 * rank + 16)
    m.update(x.astype(np.float32), np.zeros(3000, np.int64))
    f = m.low_rank_factors()[0]
    vals = np.sort(np.linalg.svd(f, compute_uv=False) ** 2)[::-1]
    exact = np.sort(np.linalg.svd(x - x.mean(0), compute_uv=False)[:rank] ** 2 / 3000)[::-1]
    np.testing.assert_allclose(vals, exact, rtol=0.02)
