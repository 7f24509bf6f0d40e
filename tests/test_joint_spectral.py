"""Joint draws of the layer-pair spectral targets: one chain activation per draw (issue 16, Lopes et al.)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dfkd_meta.errors import DfkdError
from dfkd_meta.onnx.graph import load_onnx
from dfkd_meta.reconstruct.objectives import OBJECTIVES, Context
from dfkd_meta.reconstruct.sampling import JointSpectral, sample_layer
from dfkd_meta.sidecar import read_sidecar
from dfkd_meta.sidecar.types import LayerStats, SpectralStats

from .conftest import digits_release


def _orthonormal(rng, n, k):
    q, _ = np.linalg.qr(rng.standard_normal((n, k)))
    return q


def _chain(rng, units=(30, 20, 10), k=4, classes=3, std_lo=0.5):
    """Two pair blocks over layers a-b and b-c with random orthonormal bases and recorded statistics."""
    names = "abcdefgh"[:len(units)]
    blocks = []
    for i in range(len(units) - 1):
        n = units[i] + units[i + 1]
        blocks.append(SpectralStats(
            key=f"pair{i}", scope="layer_pair", layers=[names[i], names[i + 1]], k=k,
            eigenvalues=np.arange(k, dtype=np.float64), basis=_orthonormal(rng, n, k).astype(np.float32),
            coef_mean=rng.standard_normal((classes, k)).astype(np.float32),
            coef_std=(rng.random((classes, k)) + std_lo).astype(np.float32)))
    return blocks, dict(zip(names, units))


@given(seed=st.integers(0, 2**31 - 1), units=st.lists(st.integers(3, 40), min_size=3, max_size=5),
       k=st.integers(1, 3))
@settings(max_examples=40, deadline=None)
def test_the_pairs_targets_are_the_coefficients_of_one_chain_activation(seed, units, k):
    rng = np.random.default_rng(seed)
    blocks, counts = _chain(rng, tuple(units), k=k)
    joint = JointSpectral(blocks, counts)
    classes = rng.integers(0, 3, 5)
    z = rng.standard_normal((5, sum(b.k for b in blocks)))
    targets = joint.from_latent(classes, z)
    # the chain activation behind the draw: every block's basis placed on its layers' rows
    offsets = np.cumsum([0, *units])
    chain = np.zeros((5, offsets[-1]))
    for b, s in zip(blocks, joint.slices):
        i = "abcdefgh".index(b.layers[0])
        chain[:, offsets[i]:offsets[i + 2]] += (z[:, s] * joint.scales[classes][:, s]) @ b.basis.astype(np.float64).T
    for i, b in enumerate(blocks):
        implied = chain[:, offsets[i]:offsets[i + 2]] @ b.basis.astype(np.float64)
        # float32 bases: V^T V = I to about 1e-7
        np.testing.assert_allclose(targets[b.key], b.coef_mean[classes] + implied, rtol=0, atol=1e-5)


def test_joint_draws_have_the_recorded_means_and_stds():
    blocks, counts = _chain(np.random.default_rng(0))
    joint = JointSpectral(blocks, counts)
    assert joint.residual < 1e-9  # the scales solve the std equations exactly here
    classes = np.repeat(np.arange(3), 20_000)
    drawn = joint.sample(classes, np.random.default_rng(1))
    for b in blocks:
        for c in range(3):
            x = drawn[b.key][classes == c]
            se = b.coef_std[c] / np.sqrt(len(x))
            assert np.all(np.abs(x.mean(0) - b.coef_mean[c]) < 5 * se)
            np.testing.assert_allclose(x.std(0), b.coef_std[c], rtol=0.03)


def test_pairs_sharing_a_layer_are_correlated_and_independent_blocks_are_not():
    blocks, counts = _chain(np.random.default_rng(2), units=(6, 5, 4), k=3)
    joint = JointSpectral(blocks, counts)
    classes = np.zeros(50_000, dtype=int)
    drawn = joint.sample(classes, np.random.default_rng(3))
    corr = np.corrcoef(np.concatenate([drawn["pair0"], drawn["pair1"]], axis=1).T)[:3, 3:]
    expected = joint.mix[:3, 3:] != 0
    assert np.abs(corr[expected]).max() > 0.05  # the shared layer couples them
    lone = JointSpectral(blocks[:1], counts)
    assert lone.mix.shape == (3, 3) and np.allclose(lone.mix, np.eye(3))


def test_a_basis_that_does_not_fit_its_layers_is_refused():
    blocks, counts = _chain(np.random.default_rng(4))
    with pytest.raises(ValueError, match="basis has 50 rows, its layers 51 units"):
        JointSpectral(blocks, {**counts, "a": 31})


def test_spectral_layer_pairs_draws_jointly_on_an_exported_release(tmp_path):
    release = digits_release(tmp_path / "r")
    sc = read_sidecar(release.sidecar_path, release.model_path)
    pairs = [b for b in sc.spectral if b.scope == "layer_pair"]
    assert len(pairs) >= 2 and set(pairs[0].layers) & set(pairs[1].layers)
    ctx = Context(sc, load_onnx(release.model_path), torch.device("cpu"))
    obj = OBJECTIVES["spectral_layer_pairs"](ctx)
    assert obj.joint is not None
    exact = (obj.joint.std_error < 0.05).mean()
    assert exact > 0.9, exact  # most coefficients get their recorded std; the rest are reported
    assert OBJECTIVES["spectral_all_layers"](ctx).joint is None  # one block: nothing to share
    batch = obj.start(np.arange(10).repeat(50), np.random.default_rng(0))
    assert {b.key for b in pairs} <= set(batch.targets)

    # the ablation switch (benchmarks/lopes2017.py): each block drawn on its own
    cls = type(obj)
    cls.joint_draw = False
    try:
        independent = cls(ctx)
    finally:
        del cls.joint_draw  # back to the inherited default
    assert independent.joint is None and cls.joint_draw
    assert {b.key for b in pairs} <= set(independent.start(np.arange(10).repeat(50), np.random.default_rng(0)).targets)


def test_layer_targets_are_the_coefficients_of_one_per_layer_draw(tmp_path):
    """spectral_targets "layers": every block's targets project the same per-layer draws."""
    release = digits_release(tmp_path / "r", cov_rank=4)
    sc = read_sidecar(release.sidecar_path, release.model_path)
    classes = np.arange(10).repeat(3)
    for name in ("spectral_layer_pairs", "spectral_all_layers"):
        obj = OBJECTIVES[name](Context(sc, load_onnx(release.model_path), torch.device("cpu"),
                                       spectral_targets="layers"))
        targets = obj.start(classes, np.random.default_rng(7)).targets
        rng = np.random.default_rng(7)
        keys = sorted({k for b in obj.blocks() for k in b.layers})
        draws = {k: sample_layer(sc.layer(k), classes, rng) for k in keys}
        for b in obj.blocks():
            x = np.concatenate([draws[k] for k in b.layers], axis=1)
            np.testing.assert_allclose(targets[b.key].numpy(), x @ b.basis.astype(np.float64), rtol=1e-5, atol=1e-4)
        # the default draws per coefficient: other numbers from the same seed
        default = OBJECTIVES[name](Context(sc, load_onnx(release.model_path), torch.device("cpu")))
        key = obj.blocks()[0].key
        assert not np.allclose(default.start(classes, np.random.default_rng(7)).targets[key].numpy(),
                               targets[key].numpy())


def test_layer_targets_have_the_covariance_the_layers_imply():
    """Statistically: projected targets have mean V^T mu and covariance V^T (F F^T + diag psi) V per class."""
    rng = np.random.default_rng(11)
    units, k, r = 12, 4, 3
    f = rng.standard_normal((2, units, r)) * 0.5
    std = np.sqrt((f * f).sum(-1) + rng.random((2, units)) + 0.1)
    layer = LayerStats(key="a", tensor_name="a", order=0, kind="pre_activation", shape=(units,),
                       mean=rng.standard_normal((2, units)).astype(np.float32), std=std.astype(np.float32),
                       count=np.array([5, 5]), cov_factors=f.astype(np.float32))
    basis = _orthonormal(rng, units, k)
    classes = np.ones(40_000, dtype=int)
    x = sample_layer(layer, classes, np.random.default_rng(12)) @ basis
    sigma = f[1] @ f[1].T + np.diag(std[1] ** 2 - (f[1] ** 2).sum(-1))
    np.testing.assert_allclose(x.mean(0), layer.mean[1] @ basis, atol=5 * np.sqrt(np.diag(basis.T @ sigma @ basis)
                                                                                  / len(x)).max())
    np.testing.assert_allclose(np.cov(x.T), basis.T @ sigma @ basis, atol=0.05 * np.abs(basis.T @ sigma @ basis).max())


def test_layer_targets_without_covariance_factors_are_refused(tmp_path):
    release = digits_release(tmp_path / "r")  # no --cov-rank: per-unit draws only
    sc = read_sidecar(release.sidecar_path, release.model_path)
    ctx = Context(sc, load_onnx(release.model_path), torch.device("cpu"), spectral_targets="layers")
    with pytest.raises(DfkdError, match="'layers' needs covariance factors.*cov_rank"):
        OBJECTIVES["spectral_all_layers"](ctx)
