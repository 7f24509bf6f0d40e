"""Streaming per-class moments equal a direct computation, whatever the batching."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dfkd_meta.stats.moments import ClassMoments, update_channels


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 300), units=st.integers(1, 6), classes=st.integers(1, 4), batch=st.integers(1, 64),
       offset=st.sampled_from([0.0, 1e3, -5e4]), seed=st.integers(0, 1000))
def test_streaming_equals_direct_and_ignores_batch_size(n, units, classes, batch, offset, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(offset, 2.0, (n, units))
    y = rng.integers(0, classes, n)
    m = ClassMoments(classes, units, cov=True)
    for i in range(0, n, batch):
        m.update(x[i:i + batch], y[i:i + batch])
    for c in range(classes):
        sel = x[y == c]
        assert m.count[c] == len(sel)
        if len(sel):
            np.testing.assert_allclose(m.mean[c], sel.mean(0), rtol=1e-12, atol=1e-9)
            np.testing.assert_allclose(m.std()[c], sel.std(0), rtol=1e-8, atol=1e-9)
            np.testing.assert_allclose(m.comoment[c] / len(sel), np.cov(sel.T, bias=True).reshape(units, units),
                                       rtol=1e-8, atol=1e-7)
        else:
            assert (m.mean[c] == 0).all() and (m.std()[c] == 0).all()


def test_merging_shards_equals_one_pass():
    rng = np.random.default_rng(1)
    x, y = rng.normal(0, 1, (500, 3)), rng.integers(0, 3, 500)
    whole, a, b = ClassMoments(3, 3), ClassMoments(3, 3), ClassMoments(3, 3)
    whole.update(x, y)
    a.update(x[:123], y[:123])
    b.update(x[123:], y[123:])
    a.merge(b)
    np.testing.assert_allclose(a.mean, whole.mean, atol=1e-14)
    np.testing.assert_allclose(a.std(), whole.std(), atol=1e-14)


def test_channel_statistics_pool_over_positions_in_any_batching():
    rng = np.random.default_rng(2)
    v, y = rng.normal(3, 2, (40, 3, 4, 5)).astype(np.float32), rng.integers(0, 2, 40)
    m = ClassMoments(2, 3)
    for i in range(0, 40, 7):
        update_channels(m, v[i:i + 7], y[i:i + 7])
    for c in range(2):
        pooled = v[y == c].transpose(1, 0, 2, 3).reshape(3, -1)
        np.testing.assert_allclose(m.mean[c], pooled.astype(np.float64).mean(1), atol=1e-6)
        np.testing.assert_allclose(m.std()[c], pooled.astype(np.float64).std(1), atol=1e-6)
        assert m.count[c] == pooled.shape[1]


def test_low_rank_factors_capture_the_covariance_and_never_exceed_the_variance():
    rng = np.random.default_rng(3)
    basis = rng.normal(0, 1, (8, 2))
    x = rng.normal(0, 1, (5000, 2)) @ basis.T + rng.normal(0, 0.05, (5000, 8))
    m = ClassMoments(1, 8, cov=True)
    m.update(x, np.zeros(5000, np.int64))
    f = m.low_rank_factors(2)[0]
    cov = np.cov(x.T, bias=True)
    assert np.abs(f @ f.T - cov).max() < 0.01 * np.abs(cov).max()
    assert ((f * f).sum(1) <= m.std()[0] ** 2).all()
