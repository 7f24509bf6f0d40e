"""Reconstruction: sampling, every objective, determinism, resume, refusal of bad inputs."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli.main import main as cli_main
from dfkd_meta.errors import DfkdError
from dfkd_meta.onnx.graph import OnnxModule, load_onnx
from dfkd_meta.reconstruct import synthesize
from dfkd_meta.reconstruct.objectives import OBJECTIVES, AllLayers, Context, SpectralAllLayers
from dfkd_meta.reconstruct.priors import MomentMatcher, Priors
from dfkd_meta.reconstruct.sampling import sample_layer, zskd_soft_targets
from dfkd_meta.reconstruct.synthesize import ReconstructConfig, reconstruct
from dfkd_meta.sidecar import read_sidecar
from dfkd_meta.transfer import read_transfer

from .conftest import digits_release
from .sidecar_factory import layer


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A dropout-trained MLP teacher on digits and its release (with covariance and spectral stats)."""
    r = digits_release(tmp_path_factory.mktemp("teacher"), "hinton-small", 40, cov_rank=2, spectral_k=16)
    return r.model_path, r.sidecar_path


@pytest.fixture(scope="module")
def cnn_release(tmp_path_factory):
    r = digits_release(tmp_path_factory.mktemp("cnn"), "bn-cnn", 8, spectral_k=0)
    return r.model_path, r.sidecar_path


def _run(release, tmp_path, name="t.h5", **kw):
    cfg = ReconstructConfig(**{"samples": 60, "steps": 40, "batch_size": 30, **kw})
    return reconstruct(*release, tmp_path / name, cfg, device="cpu", progress=False)


# --- sampling -------------------------------------------------------------------------------------

def test_diagonal_and_low_rank_sampling_have_the_stored_moments():
    rng = np.random.default_rng(0)
    diag = layer(rng, "d", 0, (6,), 3)
    classes = np.full(200_000, 1)
    draws = sample_layer(diag, classes, np.random.default_rng(1))
    np.testing.assert_allclose(draws.mean(0), diag.mean[1], atol=0.02)
    np.testing.assert_allclose(draws.std(0), diag.std[1], rtol=0.02)
    low = layer(rng, "l", 0, (5,), 2, cov_rank=2)
    f, std = low.cov_factors[0].astype(np.float64), low.std[0].astype(np.float64)
    sigma = f @ f.T + np.diag(std ** 2 - (f * f).sum(1))
    draws = sample_layer(low, np.zeros(200_000, np.int64), np.random.default_rng(2))
    emp = np.cov(draws.T)
    assert np.abs(emp - sigma).max() < 0.05 * np.abs(sigma).max()  # Sigma, not Sigma squared
    assert np.abs(emp - sigma @ sigma).max() > 0.05 * np.abs(sigma).max() or np.allclose(sigma, sigma @ sigma)


def test_zskd_soft_targets_are_distributions_peaked_on_their_class():
    w = np.random.default_rng(0).normal(0, 1, (10, 16))
    soft = zskd_soft_targets(w, np.repeat(np.arange(10), 200), np.random.default_rng(1))
    assert soft.shape == (2000, 10) and np.allclose(soft.sum(1), 1)
    mean_own = np.mean([soft[np.arange(2000) // 200 == c, c].mean() for c in range(10)])
    assert mean_own > 0.2  # the own class has similarity 1, the largest concentration


# --- objectives -----------------------------------------------------------------------------------

@pytest.mark.parametrize("objective", sorted(name for name, cls in OBJECTIVES.items() if cls.optimise))
def test_each_objective_lowers_its_own_loss(release, tmp_path, objective):
    before = read_transfer(_run(release, tmp_path, "a.h5", objective=objective, steps=0).path)
    after = read_transfer(_run(release, tmp_path, "b.h5", objective=objective, steps=40).path)
    assert np.array_equal(before.classes, after.classes)
    assert after.loss.mean() < 0.9 * before.loss.mean(), (before.loss.mean(), after.loss.mean())


@pytest.mark.parametrize("objective", ["top_layer", "all_layers", "spectral_all_layers"])
def test_samples_are_classified_as_their_target_class(release, tmp_path, objective):
    ts = read_transfer(_run(release, tmp_path, objective=objective, samples=100, batch_size=100, steps=60).path)
    agreement = (ts.teacher_logits.argmax(1) == ts.classes).mean()
    assert agreement >= 0.8, agreement  # chance is 0.1


def test_noise_is_a_baseline_near_chance_and_inside_the_domain(release, tmp_path):
    ts = read_transfer(_run(release, tmp_path, objective="noise", samples=300, batch_size=300).path)
    sc = read_sidecar(release[1])
    lo, hi = sc.model.input_domain.normalized_range()
    assert ts.x.min() >= lo[0] - 1e-6 and ts.x.max() <= hi[0] + 1e-6
    assert (ts.teacher_logits.argmax(1) == ts.classes).mean() < 0.4


def test_spectral_objective_uses_the_stored_basis(release):
    """A change orthogonal to the stored basis leaves the spectral loss unchanged but not all_layers'."""
    sc = read_sidecar(release[1])
    ctx = Context(sc, load_onnx(release[0]), torch.device("cpu"))
    spectral, plain = SpectralAllLayers(ctx), AllLayers(ctx)
    teacher = OnnxModule(ctx.model)
    x = torch.randn(8, 1, 8, 8)
    acts = teacher.run(x, spectral.taps())
    classes = np.arange(8) % 10
    rng = np.random.default_rng(0)
    bs, bp = spectral.start(classes, rng), plain.start(classes, rng)
    block = sc.spectral[0]
    v = torch.as_tensor(block.basis, dtype=torch.float32)
    direction = torch.randn(v.shape[0])
    direction -= v @ (v.T @ direction)  # orthogonal to span(V)
    direction *= 5 / direction.norm()
    layers = [sc.layer(k) for k in block.layers]
    sizes = [lay.units for lay in layers]
    moved = dict(acts)
    for lay, piece in zip(layers, torch.split(direction, sizes)):
        scale = lay.temperature if lay.kind == "logits" else 1.0
        moved[lay.tensor_name] = acts[lay.tensor_name] + (piece * scale).reshape(1, *lay.shape)
    s0, s1 = spectral.loss(acts, bs)[0], spectral.loss(moved, bs)[0]
    p0, p1 = plain.loss(acts, bp)[0], plain.loss(moved, bp)[0]
    assert torch.allclose(s0, s1, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(p0, p1, rtol=1e-2)
    coef = spectral.coefficients(block, acts)
    signal = torch.cat([acts[lay.tensor_name].flatten(1) / (lay.temperature if lay.kind == "logits" else 1)
                        for lay in layers], 1)
    assert torch.allclose(coef, signal @ v, atol=1e-4)


def test_dropout_objective_needs_recorded_keep_probabilities(cnn_release, tmp_path):
    with pytest.raises(DfkdError, match="records no dropout_keep_prob"):
        _run(cnn_release, tmp_path, objective="all_layers_dropout")


def test_priors_and_channel_matching_run_and_stay_in_the_domain(cnn_release, tmp_path):
    ts = read_transfer(_run(cnn_release, tmp_path, objective="all_layers",
                            priors=Priors(tv=0.01, l2=0.001, jitter=1, feature=1.0)).path)
    sc = read_sidecar(cnn_release[1])
    lo, hi = sc.model.input_domain.normalized_range()
    assert ts.x.min() >= lo[0] - 1e-6 and ts.x.max() <= hi[0] + 1e-6 and np.isfinite(ts.loss).all()


def _recorded(key: str, a: np.ndarray, classes: np.ndarray, c: int, by_channel: bool, kind="pre_activation"):
    """LayerStats whose stored moments are exactly those of the batch ``a`` (population std)."""
    from dfkd_meta.sidecar.types import ChannelStats, LayerStats

    flat = a.reshape(len(a), -1)
    mean = np.stack([flat[classes == k].mean(0) for k in range(c)]).astype(np.float32)
    std = np.stack([flat[classes == k].std(0) for k in range(c)]).astype(np.float32)
    ch = None
    if by_channel:
        # a class's values of each channel, over its examples and positions: [C][CH, n * P]
        per = [a[classes == k].swapaxes(0, 1).reshape(a.shape[1], -1) for k in range(c)]
        ch = ChannelStats(np.stack([v.mean(1) for v in per]), np.stack([v.std(1) for v in per]))
    return LayerStats(key=key, tensor_name=f"/{key}", order=0, kind=kind, shape=a.shape[1:], mean=mean, std=std,
                      count=np.bincount(classes, minlength=c), temperature=8.0 if kind == "logits" else None, channel=ch)


@pytest.mark.parametrize("by_channel", [False, True], ids=["per-unit", "per-channel"])
def test_moment_matcher_vanishes_at_the_recorded_moments_and_grows_away_from_them(by_channel):
    rng = np.random.default_rng(0)
    classes = np.repeat(np.arange(3), 40)
    shape = (4, 3, 3) if by_channel else (7,)
    a = rng.normal(rng.normal(0, 2, (3, *shape))[classes], 1.5).astype(np.float32)
    logits = _recorded("logits", rng.normal(size=(120, 3)).astype(np.float32), classes, 3, False, "logits")
    matcher = MomentMatcher([_recorded("h", a, classes, 3, by_channel), logits], torch.device("cpu"))
    assert [layer.key for layer in matcher.layers] == ["h"]  # the logits are the objective's business
    cls = torch.as_tensor(classes)
    at_stats = matcher.loss({"/h": torch.as_tensor(a)}, cls, 3).item()
    assert at_stats < 1e-6
    shifted = torch.as_tensor(a).clone().requires_grad_(True)
    loss = matcher.loss({"/h": shifted + 2.0 * torch.as_tensor(classes == 1).reshape(-1, *[1] * len(shape))}, cls, 3)
    assert loss.item() > 0.05
    loss.backward()
    assert shifted.grad[classes == 1].abs().sum() > 0 and shifted.grad[classes != 1].abs().sum() < 1e-5
    spread = matcher.loss({"/h": torch.as_tensor(a) * 0.2}, cls, 3).item()  # right place, too little spread
    assert spread > 0.05


def test_moment_matching_runs_on_a_dense_teacher_and_lowers_the_moment_error(release, tmp_path):
    """An MLP sidecar has no channel statistics: the dense layers are matched per unit."""
    sc = read_sidecar(release[1])
    matcher = MomentMatcher(sc.layers, torch.device("cpu"))
    assert matcher.layers and all(x.channel is None for x in matcher.layers)
    teacher = OnnxModule(load_onnx(release[0])).eval()

    def moment_error(path):
        ts = read_transfer(path)
        with torch.no_grad():
            acts = teacher.run(torch.from_numpy(ts.x), matcher.tensors)
        return matcher.loss(acts, torch.as_tensor(ts.classes), sc.num_classes).item()

    plain = moment_error(_run(release, tmp_path, "a.h5", objective="top_layer").path)
    matched = moment_error(_run(release, tmp_path, "b.h5", objective="top_layer", priors=Priors(feature=1.0)).path)
    assert matched < 0.7 * plain


def test_moment_matching_refuses_a_sidecar_with_only_logits(tmp_path):
    r = digits_release(tmp_path / "rel", "hinton-tiny", 15, layers=["logits"], spectral_k=0)
    with pytest.raises(DfkdError, match="only has the logits"):
        _run((r.model_path, r.sidecar_path), tmp_path, objective="top_layer", priors=Priors(feature=1.0))
    assert not (tmp_path / "t.h5").exists() and not list(tmp_path.glob("t.h5*"))


def test_channel_scope_matches_only_the_layers_with_channel_statistics():
    rng = np.random.default_rng(1)
    classes = np.repeat(np.arange(2), 20)
    conv = _recorded("conv", rng.normal(size=(40, 3, 2, 2)).astype(np.float32), classes, 2, True)
    dense = _recorded("dense", rng.normal(size=(40, 5)).astype(np.float32), classes, 2, False)
    cpu = torch.device("cpu")
    assert [x.key for x in MomentMatcher([conv, dense], cpu).layers] == ["conv", "dense"]
    only = MomentMatcher([conv, dense], cpu, scope="channels")
    assert [x.key for x in only.layers] == ["conv"] and only.tensors == ["/conv"]
    # a wrong dense layer costs nothing under the channel scope
    acts = {"/conv": torch.as_tensor(rng.normal(size=(40, 3, 2, 2)).astype(np.float32)),
            "/dense": torch.full((40, 5), 50.0)}
    cls = torch.as_tensor(classes)
    assert MomentMatcher([conv, dense], cpu).loss(acts, cls, 2).item() > 10 * only.loss(acts, cls, 2).item()


def test_channel_scope_is_refused_on_a_dense_sidecar(release, tmp_path):
    # the library names its parameter; the CLI renders the same error with its flag
    with pytest.raises(DfkdError, match="feature_layers channels needs a layer with channel statistics") as err:
        _run(release, tmp_path, objective="top_layer", priors=Priors(feature=1.0, feature_layers="channels"))
    assert "--feature-layers" not in str(err.value)
    assert "--feature-layers channels needs" in err.value.render({"feature_layers": "--feature-layers"})
    assert not list(tmp_path.glob("t.h5*"))


def test_unknown_feature_layers_are_refused():
    with pytest.raises(ValueError, match="feature_layers 'dense'"):
        Priors(feature=1.0, feature_layers="dense")


# --- determinism, resume, output ------------------------------------------------------------------

def test_same_seed_same_output_other_seed_other_output(release, tmp_path):
    a = read_transfer(_run(release, tmp_path, "a.h5", seed=5).path)
    b = read_transfer(_run(release, tmp_path, "b.h5", seed=5).path)
    c = read_transfer(_run(release, tmp_path, "c.h5", seed=6).path)
    assert np.array_equal(a.x, b.x) and np.array_equal(a.classes, b.classes)
    assert not np.array_equal(a.x, c.x)


def test_resume_continues_from_finished_batches(release, tmp_path, monkeypatch):
    full = read_transfer(_run(release, tmp_path, "full.h5", samples=90).path)
    real_append = synthesize.TransferWriter.append
    calls = {"n": 0}

    def interrupted(self, **batch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        real_append(self, **batch)
    monkeypatch.setattr(synthesize.TransferWriter, "append", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _run(release, tmp_path, "r.h5", samples=90)
    assert not (tmp_path / "r.h5").exists() and (tmp_path / "r.h5.partial").exists()
    monkeypatch.setattr(synthesize.TransferWriter, "append", real_append)
    cfg = ReconstructConfig(samples=90, steps=40, batch_size=30)
    result = reconstruct(*release, tmp_path / "r.h5", cfg, device="cpu", progress=False, resume=True)
    assert result.summary["resumed_batches"] == 2
    resumed = read_transfer(result.path)
    assert np.array_equal(resumed.x, full.x) and np.array_equal(resumed.classes, full.classes)
    assert not (tmp_path / "r.h5.partial").exists()
    with pytest.raises(DfkdError, match=r"different settings \(steps: 40 -> 41\)"):
        (tmp_path / "r.h5").rename(tmp_path / "r.h5.partial")
        reconstruct(*release, tmp_path / "r.h5", ReconstructConfig(samples=90, steps=41, batch_size=30),
                    device="cpu", progress=False, resume=True)


def test_transfer_file_holds_outputs_and_provenance(release, tmp_path):
    result = _run(release, tmp_path, objective="top_layer", samples=45)
    ts = read_transfer(result.path, num_classes=10)
    sc = read_sidecar(release[1])
    assert ts.x.shape == (45, 1, 8, 8) and ts.teacher_logits.shape == (45, 10) and len(ts.loss) == 45
    assert np.bincount(ts.classes, minlength=10).min() >= 4  # class-balanced
    soft = torch.softmax(torch.from_numpy(ts.teacher_logits) / ts.temperature, 1).numpy()
    np.testing.assert_allclose(ts.teacher_soft, soft, atol=1e-6)
    assert ts.temperature == sc.layers[-1].temperature
    assert ts.provenance["model_sha256"] == sc.model.sha256 and ts.provenance["objective"] == "top_layer"
    assert ts.provenance["settings"]["steps"] == 40


def test_cli_refuses_unbound_sidecars_and_writes_nothing(release, cnn_release, tmp_path):
    out = tmp_path / "t.h5"
    r = CliRunner().invoke(cli_main, ["reconstruct", "--model", str(cnn_release[0]), "--sidecar", str(release[1]),
                                      "-o", str(out), "-q"])
    assert r.exit_code == 1 and "DM420" in r.output and not out.exists()
    assert not list(tmp_path.iterdir())
    r = CliRunner().invoke(cli_main, ["reconstruct", "--model", str(release[0]), "--sidecar", str(release[1]),
                                      "-o", str(out), "--samples", "20", "--steps", "5", "-q",
                                      "--preview", str(tmp_path / "p.png"), "--json"])
    assert r.exit_code == 0, r.output
    assert out.is_file() and (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_feature_layers_reach_the_transfer_settings(release, cnn_release, tmp_path):
    out = tmp_path / "t.h5"
    args = ["--samples", "20", "--steps", "3", "-q", "--feature-weight", "2", "--feature-layers", "channels"]
    r = CliRunner().invoke(cli_main, ["reconstruct", "--model", str(cnn_release[0]), "--sidecar",
                                      str(cnn_release[1]), "-o", str(out), *args])
    assert r.exit_code == 0, r.output
    priors = read_transfer(out).provenance["settings"]["priors"]
    assert priors["feature_layers"] == "channels" and priors["feature"] == 2.0
    dense_out = tmp_path / "d.h5"
    r = CliRunner().invoke(cli_main, ["reconstruct", "--model", str(release[0]), "--sidecar", str(release[1]),
                                      "-o", str(dense_out), *args])
    assert r.exit_code == 1 and "--feature-layers channels needs" in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1 and not list(tmp_path.glob("d.h5*"))


# --- first-layer initialisation -------------------------------------------------------------------

def _first_layer(model_path, sc, x: np.ndarray) -> np.ndarray:
    m = OnnxModule(load_onnx(model_path)).double().eval()
    first = sc.layers_in_order()[0]
    with torch.no_grad():
        out = m.run(torch.from_numpy(x).double().reshape(-1, *sc.model.input_shape[1:]), [first.tensor_name])
    return out[first.tensor_name].reshape(len(x), -1).numpy()


def test_first_layer_gaussian_reproduces_the_recorded_moments(release):
    """hinton-small's first Gemm maps 64 inputs to 128 units: the pullback is exact in its range."""
    from dfkd_meta.reconstruct.init import FirstLayerGaussian

    sc = read_sidecar(release[1], release[0])
    first = sc.layers_in_order()[0]
    start = FirstLayerGaussian(sc, load_onnx(release[0]))
    assert start.has_directions and start.mean.shape == (10, 64) and (start.sigma > 0).all()
    scale = float(first.std.mean())
    np.testing.assert_allclose(_first_layer(release[0], sc, start.mean), first.mean, atol=2e-3 * scale)
    classes = np.full(6000, 3)
    h = _first_layer(release[0], sc, start.sample(classes, torch.Generator().manual_seed(0)).numpy())
    np.testing.assert_allclose(h.mean(0), first.mean[3], atol=0.1 * scale)
    # the factors and the isotropic rest carry the class's total variance (per unit only on average)
    np.testing.assert_allclose((h.var(0)).mean(), (first.std[3].astype(np.float64) ** 2).mean(), rtol=0.1)


def test_first_layer_init_runs_inside_the_domain_and_is_seeded(release, tmp_path):
    a = _run(release, tmp_path, "a.h5", objective="noise", init="first-layer", seed=3)
    b = _run(release, tmp_path, "b.h5", objective="noise", init="first-layer", seed=3)
    ta, tb = read_transfer(a.path), read_transfer(b.path)
    assert np.array_equal(ta.x, tb.x) and ta.provenance["settings"]["init"] == "first-layer"
    uniform = read_transfer(_run(release, tmp_path, "u.h5", objective="noise", seed=3).path)
    lo, hi = read_sidecar(release[1]).model.input_domain.normalized_range()
    assert ta.x.min() >= min(lo) - 1e-6 and ta.x.max() <= max(hi) + 1e-6
    # drawn for their classes: the teacher agrees far more often than on uniform noise
    agree = (ta.teacher_logits.argmax(1) == ta.classes).mean()
    assert agree > (uniform.teacher_logits.argmax(1) == uniform.classes).mean() + 0.3


def test_first_layer_init_refuses_a_non_affine_first_layer(release, tmp_path):
    import onnx

    from dfkd_meta.data import load_data
    from dfkd_meta.stats.export import export_release

    proto = onnx.load(str(release[0]))
    relu = next(n.output[0] for n in proto.graph.node if n.op_type == "Relu")
    r = export_release(release[0], load_data("digits"), tmp_path / "rel", layers=[relu, "logits"], spectral_k=0,
                       progress=False)
    with pytest.raises(DfkdError, match="not an affine function of the input.*use init uniform"):
        _run((r.model_path, r.sidecar_path), tmp_path, objective="noise", init="first-layer")
    assert not list(tmp_path.glob("t.h5*"))


def test_first_layer_init_refuses_an_oversized_jacobian(release, tmp_path, monkeypatch):
    from dfkd_meta.reconstruct import init

    monkeypatch.setattr(init, "MAX_JACOBIAN_ENTRIES", 1000)
    with pytest.raises(DfkdError, match="Jacobian.*limit; use init uniform"):
        _run(release, tmp_path, objective="noise", init="first-layer")
    assert not list(tmp_path.glob("t.h5*"))


def test_cli_init_choices(release, tmp_path):
    out = tmp_path / "t.h5"
    base = ["reconstruct", "--model", str(release[0]), "--sidecar", str(release[1]), "-o", str(out), "-q",
            "--objective", "noise", "--samples", "20"]
    r = CliRunner().invoke(cli_main, [*base, "--init", "first-layer"])
    assert r.exit_code == 0, r.output
    assert read_transfer(out).provenance["settings"]["init"] == "first-layer"
    r = CliRunner().invoke(cli_main, [*base, "-o", str(tmp_path / "u.h5"), "--init", "zeros"])
    assert r.exit_code == 2 and "zeros" in r.output and not (tmp_path / "u.h5").exists()
