"""Publisher side: statistics equal a direct computation, bases follow SPEC §9, releases validate."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from cli.main import main as cli_main
from dfkd_meta.convention import IDENTITY, InputConvention
from dfkd_meta.data import Feed, load_data
from dfkd_meta.errors import DfkdError
from dfkd_meta.models import build_model
from dfkd_meta.onnx.graph import OnnxModule
from dfkd_meta.onnx.torch_export import export_onnx
from dfkd_meta.sidecar import read_sidecar, validate
from dfkd_meta.stats.export import export_release

from .conftest import digits_teacher, recomputed_accuracy, shared_dataset

T = 8.0


@pytest.fixture(scope="module")
def digits():
    return load_data("digits")


def _teacher(tmp_path_factory, arch: str, exporter: str = "legacy", epochs: int = 40) -> Path:
    """A private copy of the session's trained ``arch`` teacher (with its external data, for dynamo)."""
    src = digits_teacher(arch, epochs, exporter)
    folder = tmp_path_factory.mktemp(f"{arch}-{exporter}")
    for f in src.parent.iterdir():
        shutil.copyfile(f, folder / f.name)
    return folder / src.name


@pytest.fixture(scope="module")
def mlp_release(tmp_path_factory, digits):
    path = _teacher(tmp_path_factory, "hinton-small")
    result = export_release(path, digits, tmp_path_factory.mktemp("rel"), cov_rank=3, batch_size=100, progress=False)
    return path, result


def _direct(model_path, data, tensors, split="train", convention: InputConvention | None = None):
    """The tensors over the whole split, computed by the torch path (independent of the ORT pass).

    The inputs follow ``convention``, else the one the model's metadata records, else raw values.
    """
    import onnx as onnx_

    from dfkd_meta.convention import from_model

    module = OnnxModule.from_file(model_path)
    if convention is None:
        meta = {p.key: p.value for p in onnx_.load(str(model_path), load_external_data=False).metadata_props}
        convention = from_model(meta) or IDENTITY
    x, y = data.arrays(split, feed=Feed(convention))
    with torch.no_grad():
        out = module.run(torch.from_numpy(x), taps=tensors)
    return {t: out[t].double().numpy() for t in tensors}, y


def test_layer_statistics_equal_a_direct_numpy_computation(mlp_release, digits):
    path, result = mlp_release
    sc = read_sidecar(result.sidecar_path, result.model_path)
    values, y = _direct(path, digits, [layer.tensor_name for layer in sc.layers])
    assert [layer.kind for layer in sc.layers] == ["pre_activation", "pre_activation", "logits"]
    for layer in sc.layers:
        v = values[layer.tensor_name].reshape(len(y), -1) / (T if layer.kind == "logits" else 1.0)
        for c in range(10):
            sel = v[y == c]
            assert layer.count[c] == len(sel)
            np.testing.assert_allclose(layer.mean[c], sel.mean(0), rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(layer.std[c], sel.std(0), rtol=1e-4, atol=1e-5)
    assert sc.layers[-1].temperature == T and sc.layers[0].temperature is None
    assert sc.dataset.sample_count == 1437 and sc.dataset.class_counts.sum() == 1437
    assert sc.model.class_names == [str(i) for i in range(10)]
    f = sc.layers[0].cov_factors
    var = sc.layers[0].std.astype(np.float64) ** 2
    assert f.shape == (10, 128, 3) and ((f.astype(np.float64) ** 2).sum(-1) <= var * 1.001 + 1e-6).all()


def test_dropout_keep_probabilities_are_recorded(mlp_release):
    sc = read_sidecar(mlp_release[1].sidecar_path)
    assert [layer.dropout_keep_prob for layer in sc.layers] == [0.5, 0.5, None]


def test_statistics_do_not_depend_on_the_batch_size(mlp_release, digits, tmp_path):
    path, result = mlp_release
    other = export_release(path, digits, tmp_path, cov_rank=3, batch_size=7, progress=False)
    a, b = read_sidecar(result.sidecar_path), read_sidecar(other.sidecar_path)
    for la, lb in zip(a.layers, b.layers):
        np.testing.assert_allclose(la.mean, lb.mean, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(la.std, lb.std, rtol=1e-6, atol=1e-6)
        assert np.array_equal(la.count, lb.count)
    for sa, sb in zip(a.spectral, b.spectral):
        np.testing.assert_allclose(sa.coef_mean, sb.coef_mean, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(sa.coef_std, sb.coef_std, rtol=1e-5, atol=1e-5)


def test_spectral_bases_are_orthonormal_reproducible_and_those_of_the_weights(mlp_release, digits, tmp_path):
    path, result = mlp_release
    sc = read_sidecar(result.sidecar_path)
    assert [s.scope for s in sc.spectral] == ["all_layers", "layer_pair", "layer_pair"]
    for s in sc.spectral:
        v = s.basis.astype(np.float64)
        assert np.abs(v.T @ v - np.eye(s.k)).max() < 1e-5
        assert (np.diff(s.eigenvalues) >= -1e-12).all() and s.eigenvalues[0] == pytest.approx(0, abs=1e-8)
    again = read_sidecar(export_release(path, digits, tmp_path, progress=False).sidecar_path)
    for s, t in zip(sc.spectral, again.spectral):
        assert np.array_equal(s.basis, t.basis) and np.array_equal(s.eigenvalues, t.eigenvalues)
    # SPEC §9.1 by hand for this MLP: the blocks are |W2| and |W3| (Gemm weights, transB=1).
    model = onnx.load(str(path))
    w = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    gemms = [n for n in model.graph.node if n.op_type == "Gemm"]
    w2, w3 = (np.abs(w[g.input[1]]).astype(np.float64) for g in gemms[1:])
    sizes = [128, 128, 10]
    a = np.zeros((266, 266))
    a[128:256, :128], a[256:, 128:256] = w2, w3
    a = a + a.T
    d = a.sum(1)
    lap = np.eye(266) - a / np.sqrt(np.outer(d, d))
    lam = np.linalg.eigvalsh(lap)[:sc.spectral[0].k]
    np.testing.assert_allclose(sc.spectral[0].eigenvalues, lam, atol=1e-9)
    assert sum(sizes) == sc.spectral[0].basis.shape[0]


def test_spectral_coefficients_are_projections_of_the_activations(mlp_release, digits):
    path, result = mlp_release
    sc = read_sidecar(result.sidecar_path)
    values, y = _direct(path, digits, [layer.tensor_name for layer in sc.layers])
    signal = np.concatenate([values[layer.tensor_name] / (T if layer.kind == "logits" else 1) for layer in sc.layers], 1)
    s = sc.spectral[0]
    coef = signal @ s.basis.astype(np.float64)
    for c in range(10):
        np.testing.assert_allclose(s.coef_mean[c], coef[y == c].mean(0), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(s.coef_std[c], coef[y == c].std(0), rtol=1e-4, atol=1e-4)


def test_cnn_release_has_channel_statistics(tmp_path_factory, digits, tmp_path):
    path = _teacher(tmp_path_factory, "bn-cnn", epochs=8)
    result = export_release(path, digits, tmp_path, spectral_k=8, progress=False)
    sc = read_sidecar(result.sidecar_path, result.model_path)
    conv = [layer for layer in sc.layers if len(layer.shape) == 3]
    assert conv and all(layer.channel is not None for layer in conv)
    values, y = _direct(path, digits, [conv[0].tensor_name])
    v = values[conv[0].tensor_name]
    for c in (0, 7):
        pooled = v[y == c].transpose(1, 0, 2, 3).reshape(v.shape[1], -1)
        np.testing.assert_allclose(conv[0].channel.mean[c], pooled.mean(1), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(conv[0].channel.std[c], pooled.std(1), rtol=1e-4, atol=1e-4)
    assert all(s.k <= 8 for s in sc.spectral)


def test_dynamo_release_binds_its_external_data(tmp_path_factory, digits, tmp_path):
    path = _teacher(tmp_path_factory, "hinton-small", exporter="dynamo")
    result = export_release(path, digits, tmp_path, spectral_k=0, progress=False)
    data_file = result.model_path.parent / (result.model_path.name + ".data")
    assert data_file.is_file()
    sc = read_sidecar(result.sidecar_path, result.model_path)
    assert list(sc.model.external_data) == [data_file.name] and sc.spectral == []
    blob = bytearray(data_file.read_bytes())
    blob[100] ^= 1
    data_file.write_bytes(bytes(blob))
    assert validate(result.sidecar_path, result.model_path).rules == {"DM421"}


def test_export_from_a_torch_module(digits, tmp_path):
    torch.manual_seed(0)
    model = build_model("hinton-small", digits.input_shape, 10).eval()
    # 300 examples (about 30 a class, under the default guard of 50) keep it quick
    result = export_release(model, digits, tmp_path / "rel", name="mine", spectral_k=4, limit=300, force=True,
                            min_class_count=0, progress=False)
    assert result.model_path.name == "mine.onnx" and result.sidecar_path.name == "mine.dfkd.h5"
    assert validate(result.sidecar_path, result.model_path).valid
    assert result.summary["samples"] == 300


def test_failed_export_leaves_nothing(mlp_release, tmp_path):
    wrong = load_data("digits", resize=12)
    with pytest.raises(DfkdError, match="expects input \\[1, 8, 8\\]"):
        export_release(mlp_release[0], wrong, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    with pytest.raises(DfkdError, match="unknown tensors"):
        export_release(mlp_release[0], load_data("digits"), tmp_path / "out", layers=["nope"], progress=False)
    assert not (tmp_path / "out").exists()


def test_a_class_with_too_few_examples_is_refused_before_any_work(mlp_release, tmp_path):
    """--min-class-count: digits' test split has 27 to 47 examples a class, so the default of 50 refuses it (exit 1,
    classes and counts named, nothing written); a guard of 25 refuses the one class under it by name; 0 exports."""
    model = str(mlp_release[0])
    counts = np.bincount(load_data("digits").labels("test"), minlength=10)
    base = ["export", "--model", model, "--data", "digits", "--split", "test", "--spectral-k", "0", "--quiet"]
    r = CliRunner().invoke(cli_main, [*base, "-o", str(tmp_path / "a")])
    assert r.exit_code == 1 and "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert "10 class(es) with fewer than 50 examples" in r.output and "--min-class-count" in r.output
    assert f"'0' ({counts[0]})" in r.output and not (tmp_path / "a").exists()
    few = [c for c in range(10) if counts[c] < 28]
    r = CliRunner().invoke(cli_main, [*base, "--min-class-count", "28", "-o", str(tmp_path / "b")])
    assert r.exit_code == 1 and f"{len(few)} class(es) with fewer than 28" in r.output, r.output
    assert all(f"'{c}' ({counts[c]})" in r.output for c in few) and not (tmp_path / "b").exists()
    r = CliRunner().invoke(cli_main, [*base, "--min-class-count", "0", "-o", str(tmp_path / "c")])
    assert r.exit_code == 0, r.output
    assert read_sidecar(next((tmp_path / "c").glob("*.dfkd.h5"))).dataset.class_counts.tolist() == counts.tolist()
    with pytest.raises(DfkdError, match="fewer than 3 examples in the 'train' split \\(first 20\\)"):
        export_release(mlp_release[0], load_data("digits"), tmp_path / "d", limit=20, min_class_count=3, progress=False)


@pytest.mark.parametrize("poison", ["nan", "overflow"])
def test_non_finite_activations_stop_the_export_and_leave_nothing(digits, tmp_path, poison):
    class Poisoned(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.hidden, self.out = torch.nn.Linear(64, 16), torch.nn.Linear(16, 10)

        def forward(self, x):
            x = x.flatten(1)
            # NaN on the negative inputs, or finite values whose squares overflow float32
            x = torch.log(x) if poison == "nan" else x * 1e30
            return self.out(torch.relu(self.hidden(x)))

    torch.manual_seed(0)
    with pytest.raises(DfkdError, match="is not finite .* on the data; check the model and its input convention"):
        export_release(Poisoned().eval(), digits, tmp_path / "rel", spectral_k=0, progress=False)
    assert not (tmp_path / "rel").exists()


def test_cli_train_then_export(tmp_path):
    runner = CliRunner()
    teacher = tmp_path / "t.onnx"
    r = runner.invoke(cli_main, ["train", "--model", "hinton-small", "--data", "digits", "-o", str(teacher),
                                 "--epochs", "2", "-q", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "test accuracy" in r.output and teacher.is_file()
    r = runner.invoke(cli_main, ["export", "--model", str(teacher), "--data", "digits", "-o", str(tmp_path / "rel"),
                                 "--spectral-k", "4", "-q", "--json"])
    assert r.exit_code == 0, r.output
    import json
    summary = json.loads(r.output)
    assert summary["samples"] == 1437 and summary["samples_per_second"] > 0
    assert validate(summary["sidecar"], summary["model"]).valid
    r = runner.invoke(cli_main, ["train", "--model", "nonesuch", "-o", str(tmp_path / "x.onnx")])
    assert r.exit_code == 2 and "not one of" in r.output


@pytest.mark.slow
def test_mnist_integration(tmp_path):
    data = load_data(f"mnist:{shared_dataset('mnist')}")
    torch.manual_seed(0)
    model = build_model("hinton-small", data.input_shape, 10).eval()
    path = export_onnx(model, data.input_shape, tmp_path / "m.onnx")
    result = export_release(path, data, tmp_path / "rel", limit=3000, spectral_k=16, force=True, progress=False)
    sc = read_sidecar(result.sidecar_path, result.model_path)
    values, _ = _direct(path, data, [sc.layers[0].tensor_name])
    x_y = data.labels("train")[:3000]
    v = values[sc.layers[0].tensor_name][:3000]
    np.testing.assert_allclose(sc.layers[0].mean[3], v[x_y == 3].mean(0), rtol=1e-4, atol=1e-4)
    assert sc.dataset.sample_count == 3000 and sc.model.input_shape == (-1, 1, 28, 28)


class _FlatMLP(torch.nn.Module):
    """A teacher taking flattened [N, 64] input, as many user MLPs are exported."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))

    def forward(self, x):
        return self.net(x)


def test_teacher_taking_flattened_input(digits, tmp_path):
    from dfkd_meta.distill import DistillConfig, distill
    from dfkd_meta.reconstruct.synthesize import ReconstructConfig, reconstruct
    from dfkd_meta.transfer import read_transfer

    torch.manual_seed(0)
    path = export_onnx(_FlatMLP().eval(), (64,), tmp_path / "flat.onnx")
    result = export_release(path, digits, tmp_path / "rel", spectral_k=4, force=True, progress=False)
    sc = read_sidecar(result.sidecar_path, result.model_path)
    assert sc.model.input_shape == (-1, 64) and sc.model.input_domain.layout == "NC"
    rc = reconstruct(result.model_path, result.sidecar_path, tmp_path / "t.h5",
                     ReconstructConfig(samples=20, steps=5, batch_size=20), device="cpu", progress=False)
    assert read_transfer(rc.path).x.shape == (20, 64)
    out = distill(result.model_path, build_model("hinton-tiny", (1, 8, 8), 10), digits,
                  DistillConfig(epochs=1, force=True), device="cpu", eval_data=digits, progress=False)
    # an untrained teacher: no accuracy to expect, but the reported one must be the student's on the test split
    assert out.report["student_accuracy"] == pytest.approx(recomputed_accuracy(out, digits, (1, 8, 8)), abs=1e-12)


class _CountingRunner:
    """Stands in for OrtModel: records the order of the batches it runs, fails on request."""

    def __init__(self, fail_at: int | None = None):
        self.seen, self.fail_at = [], fail_at

    def run(self, x):
        if self.fail_at is not None and len(self.seen) == self.fail_at:
            raise RuntimeError("inference failed")
        self.seen.append(int(x[0, 0]))
        return {"x": x.copy()}


@pytest.mark.parametrize("share", [0.0, float("inf")])  # statistics always / never worth overlapping
def test_inference_ahead_yields_every_batch_once_in_order_sorted_by_class(monkeypatch, share):
    import dfkd_meta.stats.export as export
    from dfkd_meta.stats.export import _inference_ahead

    monkeypatch.setattr(export, "OVERLAP_SHARE", share)
    rng = np.random.default_rng(0)
    batches = [(np.full((6, 2), i, np.float32) + rng.random((6, 2), dtype=np.float32), rng.integers(0, 3, 6))
               for i in range(9)]
    runner = _CountingRunner()
    got = list(_inference_ahead(runner, iter(batches)))
    assert runner.seen == list(range(9)) and len(got) == 9
    for (x, y), (out, ys) in zip(batches, got):
        order = np.argsort(y, kind="stable")
        np.testing.assert_array_equal(out["x"], x[order])
        np.testing.assert_array_equal(ys, y[order])
        assert (np.diff(ys) >= 0).all()
    assert list(_inference_ahead(_CountingRunner(), iter([]))) == []


@pytest.mark.parametrize("share", [0.0, float("inf")])
@pytest.mark.parametrize("fail_at", [2, 6])  # in the probe, and after it
def test_inference_ahead_raises_the_runners_error_at_its_batch(monkeypatch, share, fail_at):
    import dfkd_meta.stats.export as export
    from dfkd_meta.stats.export import _inference_ahead

    monkeypatch.setattr(export, "OVERLAP_SHARE", share)
    batches = [(np.full((2, 1), i, np.float32), np.zeros(2, np.int64)) for i in range(9)]
    it = _inference_ahead(_CountingRunner(fail_at=fail_at), iter(batches))
    assert [int(next(it)[0]["x"][0, 0]) for _ in range(fail_at)] == list(range(fail_at))
    with pytest.raises(RuntimeError, match="inference failed"):
        next(it)


def test_export_overlaps_inference_when_the_statistics_are_worth_it(mlp_release, digits, tmp_path, monkeypatch):
    """Forced into the overlapped path, export writes the statistics of the sequential one."""
    import dfkd_meta.stats.export as export

    path, result = mlp_release
    monkeypatch.setattr(export, "OVERLAP_SHARE", 0.0)
    monkeypatch.setattr(export, "PROBE_BATCHES", 1)
    other = export_release(path, digits, tmp_path, cov_rank=3, batch_size=64, progress=False)
    monkeypatch.setattr(export, "OVERLAP_SHARE", float("inf"))
    plain = export_release(path, digits, tmp_path / "plain", cov_rank=3, batch_size=64, progress=False)
    a, b = read_sidecar(plain.sidecar_path), read_sidecar(other.sidecar_path)
    for la, lb in zip(a.layers, b.layers):
        assert np.array_equal(la.mean, lb.mean) and np.array_equal(la.std, lb.std)
        assert np.array_equal(la.count, lb.count) and np.array_equal(la.cov_factors, lb.cov_factors)
