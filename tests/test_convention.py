"""Publishers' own teachers: the input convention is explicit, recorded, checked and honoured end to end."""
from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import yaml
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from cli.main import main as cli_main
from dfkd_meta.convention import METADATA_KEY, InputConvention, parse
from dfkd_meta.data import RAW, Feed, load_data
from dfkd_meta.distill import DistillConfig, distill, write_student
from dfkd_meta.errors import DfkdError, UsageError
from dfkd_meta.models import build_model
from dfkd_meta.onnx.torch_export import export_onnx
from dfkd_meta.reconstruct.inputs import to_raw
from dfkd_meta.reconstruct.objectives import OBJECTIVES
from dfkd_meta.reconstruct.priors import Priors
from dfkd_meta.reconstruct.synthesize import ReconstructConfig, reconstruct
from dfkd_meta.sidecar import read_sidecar, validate
from dfkd_meta.sidecar.schema import parse_schema
from dfkd_meta.sidecar.validator import check_file
from dfkd_meta.stats.export import export_release
from dfkd_meta.stats.recheck import recheck_release
from dfkd_meta.stats.teacher_check import (
    RIVAL_ERROR_RATIO,
    RIVAL_MARGIN,
    AccuracyMeter,
    ConventionComparison,
    compare_conventions,
)
from dfkd_meta.transfer import read_transfer

from .conftest import ROOT, recomputed_accuracy

T = 8.0
FROZEN = ROOT / "fixtures" / "releases" / "digits-1.0.0"


class SmallBNCNN(nn.Module):
    """A publisher's own CNN (not one of the project's models), trained on raw values in [0, 1]."""

    def __init__(self, channels: int = 1):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return self.head(self.body(x))


def _fit(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, lr: float = 3e-3) -> nn.Module:
    """Plain torch training, as a publisher would do it outside dfkd-meta."""
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for epoch in range(epochs):
        model.train()
        for idx in torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch)).split(64):
            loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def digits():
    return load_data("digits")


@pytest.fixture(scope="module")
def raw_cnn(digits, tmp_path_factory):
    """A BN CNN trained in plain torch on raw [0, 1] digits, written by both exporters, and the npz it came from."""
    x, y = digits.arrays("train", feed=RAW)
    model = _fit(SmallBNCNN(), x, y, epochs=20)
    folder = tmp_path_factory.mktemp("raw-cnn")
    np.savez(folder / "train.npz", x=x, y=y)
    paths = {}
    for exporter in ("legacy", "dynamo"):
        sub = folder / exporter
        sub.mkdir()
        paths[exporter] = export_onnx(model, (1, 8, 8), sub / "teacher.onnx", exporter=exporter)  # no metadata
    return paths, folder / "train.npz", x, y


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_foreign_teacher_gets_statistics_of_its_raw_inputs(raw_cnn, tmp_path, exporter):
    paths, npz, x, y = raw_cnn
    onnx_path = paths[exporter]
    data = load_data(f"npz:{npz}")
    result = export_release(onnx_path, data, tmp_path / "rel", spectral_k=0, progress=False)
    sc = read_sidecar(result.sidecar_path, result.model_path)
    dom = sc.model.input_domain
    assert dom.norm_mean == (0.0,) and dom.norm_std == (1.0,) and (dom.value_min, dom.value_max) == (0.0, 1.0)
    assert dom.convention.name == "none" and dom.convention.source == "default"
    # independently: ONNX Runtime on the raw inputs, numpy moments
    logits = ort.InferenceSession(str(onnx_path)).run(None, {"input": x})[0] / T
    top = sc.layer("logits")
    for c in range(10):
        np.testing.assert_allclose(top.mean[c], logits[y == c].mean(0), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(top.std[c], logits[y == c].std(0), rtol=1e-4, atol=1e-4)
    check = sc.dataset.teacher_check
    assert check.accuracy > 0.9 and check.samples == len(y) and not check.forced
    assert check.accuracy == pytest.approx(float((logits.argmax(1) == y).mean()), abs=1e-9)
    # a wrong convention is refused: raw values make the teacher clearly more accurate than standardised ones
    with pytest.raises(DfkdError, match=r"the teacher is right on \d+\.\d% .* input_norm") as err:
        export_release(onnx_path, data, tmp_path / "wrong", input_norm="data", spectral_k=0, progress=False)
    assert "--input-norm" in err.value.render({"input_norm": "--input-norm"})
    assert not (tmp_path / "wrong").exists()


def test_foreign_teacher_takes_the_sidecar_paths_alike_from_both_exporters(raw_cnn, tmp_path):
    """A publisher's own BN CNN, legacy and dynamo exports (BN folded or not, other tensor names): the
    first-layer Gaussian draws inputs the teacher labels as their class, and online synthesis with the
    sidecar sees the same prior and trains the same student from either file."""
    from dfkd_meta.config import OnlineConfig
    from dfkd_meta.distill import distill_online

    paths, npz, _, _ = raw_cnn
    data = load_data(f"npz:{npz}")
    drawn, students = {}, {}
    for exporter, onnx_path in paths.items():
        rel = export_release(onnx_path, data, tmp_path / exporter, spectral_k=0, cov_rank=8, progress=False)
        t = reconstruct(rel.model_path, rel.sidecar_path, tmp_path / f"{exporter}.h5",
                        ReconstructConfig(objective="first_layer_gaussian", samples=300, batch_size=100),
                        device="cpu", progress=False)
        # the teacher is trained on the machine running the test: 0.87 measured here, 0.65 on the CI machine;
        # chance is 0.1, so five times chance still fails on a broken draw or a misread convention
        assert t.summary["teacher_agreement"] >= 0.5, (exporter, t.summary["teacher_agreement"])
        drawn[exporter] = read_transfer(t.path).x
        torch.manual_seed(0)
        r = distill_online(rel.model_path, SmallBNCNN(), OnlineConfig(method="dfad", iterations=12, batch_size=32),
                           sidecar=rel.sidecar_path, device="cpu", progress=False)
        ctx = r.report["context"]
        assert ctx["first_layer_gaussian"] and len(ctx["moment_layers"]) == 2 and r.report["gaussian_per_batch"] == 16
        students[exporter] = [p.detach() for p in r.student.parameters()]
    np.testing.assert_allclose(drawn["legacy"], drawn["dynamo"], rtol=1e-4, atol=1e-4)
    for a, b in zip(students["legacy"], students["dynamo"]):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-3, atol=1e-4)


def test_wrong_convention_is_refused_and_force_records_it(raw_cnn, tmp_path):
    """Standardised inputs for a raw-trained BN CNN: how wrong the teacher gets varies with the machine
    that trained it (31% to 70% measured), so the refusal must not rest on the threshold alone."""
    paths, npz, x, y = raw_cnn
    data = load_data(f"npz:{npz}")
    raw_accuracy = float((ort.InferenceSession(str(paths["legacy"])).run(None, {"input": x})[0].argmax(1) == y).mean())
    r = export_release(paths["legacy"], data, tmp_path / "forced", input_norm="data", force=True, spectral_k=0,
                       progress=False)
    sc = read_sidecar(r.sidecar_path)
    check = sc.dataset.teacher_check
    assert check.forced and sc.model.input_domain.convention.name == "data"
    assert raw_accuracy - check.accuracy >= RIVAL_MARGIN and 1 - raw_accuracy <= RIVAL_ERROR_RATIO * (1 - check.accuracy)
    assert r.summary["teacher_check"]["rival_conventions"]["none"] == pytest.approx(raw_accuracy, abs=1e-6)
    report = validate(r.sidecar_path, r.model_path)
    assert report.valid and report.rules == {"DM520"}  # a warning every consumer sees
    # the re-check against the data finds what the statistics are of, whatever the threshold says
    findings, numbers = recheck_release(sc, str(r.model_path), data)
    assert numbers["accuracy"] == pytest.approx(check.accuracy)
    assert numbers["rival_conventions"]["none"] == pytest.approx(raw_accuracy, abs=1e-6)
    expected = {"DM904"} | ({"DM901"} if check.accuracy < check.min_accuracy else set())
    assert {f.rule for f in findings} == expected
    shown = CliRunner().invoke(cli_main, ["show", str(r.sidecar_path)]).output
    below = check.accuracy < check.min_accuracy
    assert "FORCED by the publisher" in shown
    assert ("below the threshold" in shown) == below and ("another standard input convention" in shown) != below


def test_a_teacher_fed_its_own_convention_beats_every_rival(raw_cnn, tmp_path):
    """The right convention is never refused by the comparison, and records what the rivals scored."""
    paths, npz, _, _ = raw_cnn
    r = export_release(paths["dynamo"], load_data(f"npz:{npz}"), tmp_path / "rel", spectral_k=0, progress=False)
    tc = r.summary["teacher_check"]
    assert not tc["forced"] and set(tc["rival_conventions"]) == {"data"}  # "none" is the chosen one
    assert tc["rival_conventions"]["data"] < tc["sample_accuracy"]


def test_cli_export_refuses_in_one_line_and_leaves_nothing(raw_cnn, tmp_path):
    paths, npz, _, _ = raw_cnn
    out = tmp_path / "rel"
    r = CliRunner().invoke(cli_main, ["export", "--model", str(paths["legacy"]), "--data", f"npz:{npz}", "-o", str(out),
                                      "--input-norm", "data", "-q"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--input-norm" in lines[0] and "--force" in lines[0]
    assert "input_norm" not in lines[0].replace("--input-norm", "")
    assert not out.exists()
    r = CliRunner().invoke(cli_main, ["export", "--model", str(paths["legacy"]), "--data", f"npz:{npz}", "-o", str(out),
                                      "-q", "--spectral-k", "0"])
    assert r.exit_code == 0, r.output
    assert "teacher on the 1437 train examples: accuracy" in r.output and "none: raw values" in r.output
    assert "on a sample of the same examples: none 0.9" in r.output and "; rivals data 0." in r.output
    r = CliRunner().invoke(cli_main, ["show", str(out / "teacher.dfkd.h5")])
    assert "input convention: none (default)" in r.output and "teacher  right on" in r.output


def _tabular(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Features far outside [0, 1]: class-dependent means, a large offset and scale."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 4
    centers = rng.normal(0, 1, (4, d))
    x = 40.0 + 12.0 * (centers[y] + 0.6 * rng.normal(0, 1, (n, d)))
    return x.astype(np.float32), y.astype(np.int64)


class TabularMLP(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(d, 24), nn.Linear(24, 16), nn.Linear(16, 4)

    def forward(self, x):
        return self.c(nn.functional.leaky_relu(self.b(torch.tanh(self.a((x - 40.0) / 12.0))), 0.1))


@pytest.fixture(scope="module")
def tabular_release(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tabular")
    x, y = _tabular(600, 12, 0)
    xt, yt = _tabular(200, 12, 0)
    np.savez(folder / "tab.npz", x=x, y=y, x_test=xt[:200], y_test=yt[:200])
    model = _fit(TabularMLP(12), x, y, epochs=15)
    path = export_onnx(model, (12,), folder / "tab.onnx")
    data = load_data(f"npz:{folder / 'tab.npz'}")
    result = export_release(path, data, folder / "rel", cov_rank=4, spectral_k=8, progress=False)
    return result, data, x, y


def test_flat_feature_vectors_export_and_validate(tabular_release):
    result, data, x, y = tabular_release
    sc = read_sidecar(result.sidecar_path, result.model_path)
    dom = sc.model.input_domain
    assert sc.model.input_shape == (-1, 12) and dom.layout == "NC" and sc.model.image_shape is None
    assert (dom.value_min, dom.value_max) == (float(x.min()), float(x.max()))  # the observed range, by default
    assert sc.dataset.teacher_check.accuracy > 0.9
    assert [layer.kind for layer in sc.layers_in_order()] == ["pre_activation", "pre_activation", "logits"]
    assert {s.scope for s in sc.spectral} == {"all_layers", "layer_pair"}
    assert validate(result.sidecar_path, result.model_path).valid
    findings, numbers = recheck_release(sc, str(result.model_path), data)
    assert findings == [] and numbers["logits_max_mean_difference_in_stds"] < 1e-3


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_flat_feature_vectors_reconstruct_with_every_objective(tabular_release, tmp_path, objective):
    result, _, x, _ = tabular_release
    cfg = ReconstructConfig(objective=objective, samples=24, steps=15, batch_size=12, lr=0.05)
    if objective == "all_layers_dropout":  # this teacher was not trained with dropout: a clear refusal
        with pytest.raises(DfkdError, match="records no dropout_keep_prob"):
            reconstruct(result.model_path, result.sidecar_path, tmp_path / "t.h5", cfg, device="cpu", progress=False)
        return
    rc = reconstruct(result.model_path, result.sidecar_path, tmp_path / "t.h5", cfg, device="cpu", progress=False)
    ts = read_transfer(rc.path)
    assert ts.x.shape == (24, 12) and ts.input_space == "model" and ts.input_domain["layout"] == "NC"
    assert ts.x.min() >= x.min() - 1e-3 and ts.x.max() <= x.max() + 1e-3  # inside the recorded raw range


def test_flat_feature_vectors_first_layer_init_priors_and_distill(tabular_release, tmp_path):
    result, data, _, _ = tabular_release
    base = dict(samples=40, steps=10, batch_size=20)
    rc = reconstruct(result.model_path, result.sidecar_path, tmp_path / "g.h5",
                     ReconstructConfig(objective="noise", init="first-layer", **base), device="cpu", progress=False)
    ts = read_transfer(rc.path)
    assert (ts.teacher_logits.argmax(1) == ts.classes).mean() > 0.5  # pulled back through the Linear layer
    with pytest.raises(DfkdError, match="tv, jitter need image inputs"):
        reconstruct(result.model_path, result.sidecar_path, tmp_path / "p.h5",
                    ReconstructConfig(priors=Priors(tv=0.1, jitter=1), **base), device="cpu", progress=False)
    assert not list(tmp_path.glob("p.h5*"))
    student = build_model("hinton-tiny", (12,), 4)
    out = distill(result.model_path, student, ts, DistillConfig(epochs=3, batch_size=20), device="cpu",
                  eval_data=data, progress=False)
    assert out.report["eval_samples"] == 200
    assert out.report["student_accuracy"] == pytest.approx(recomputed_accuracy(out, data, (12,)), abs=1e-12)
    kd = distill(result.model_path, build_model("hinton-tiny", (12,), 4), data, DistillConfig(epochs=15),
                 device="cpu", eval_data=data, progress=False)
    assert kd.report["source"]["teacher_accuracy"] > 0.9 and kd.report["student_accuracy"] > 0.7


def test_cli_flat_npz_end_to_end(tabular_release, tmp_path):
    result, _, _, _ = tabular_release
    npz = result.model_path.parent.parent / "tab.npz"
    runner = CliRunner()
    r = runner.invoke(cli_main, ["validate", str(result.model_path.parent), "--data", f"npz:{npz}"])
    assert r.exit_code == 0 and "valid" in r.output and "re-check on" in r.output, r.output
    r = runner.invoke(cli_main, ["reconstruct", "--model", str(result.model_path), "--sidecar", str(result.sidecar_path),
                                 "--objective", "all_layers", "--samples", "20", "--steps", "5", "--batch-size", "10",
                                 "-o", str(tmp_path / "t.h5"), "-q", "--device", "cpu", "--tv", "0.1"])
    assert r.exit_code == 1 and "--tv need image inputs" in r.output, r.output
    r = runner.invoke(cli_main, ["reconstruct", "--model", str(result.model_path), "--sidecar", str(result.sidecar_path),
                                 "--objective", "all_layers", "--samples", "20", "--steps", "5", "--batch-size", "10",
                                 "-o", str(tmp_path / "t.h5"), "-q", "--device", "cpu", "--preview",
                                 str(tmp_path / "p.png")])
    assert r.exit_code == 1 and "--preview draws images" in r.output, r.output
    r = runner.invoke(cli_main, ["distill", "--teacher", str(result.model_path), "--data", f"npz:{npz}",
                                 "--student", "hinton-tiny", "-o", str(tmp_path / "s.onnx"), "--epochs", "2", "-q",
                                 "--device", "cpu", "--eval", f"npz:{npz}"])
    assert r.exit_code == 0, r.output


class RGBNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 4 * 4, 10)

    def forward(self, x):
        return self.fc(nn.functional.max_pool2d(torch.relu(self.conv(x)), 2).flatten(1))


@pytest.fixture(scope="module")
def imagenet_release(digits, tmp_path_factory):
    """An RGB teacher trained on ImageNet-normalised inputs (tinted digits)."""
    gray, y = digits.arrays("train", feed=RAW)
    tint = np.array([1.0, 0.6, 0.3], np.float32)[None, :, None, None]
    rgb = np.clip(gray * tint + 0.05, 0, 1).astype(np.float32)
    folder = tmp_path_factory.mktemp("rgb")
    np.savez(folder / "rgb.npz", x=(rgb * 255).round().astype(np.uint8), y=y)
    conv = parse("imagenet")
    model = _fit(RGBNet(), conv.apply(rgb), y, epochs=15)
    path = export_onnx(model, (3, 8, 8), folder / "rgb.onnx", convention=conv)
    data = load_data(f"npz:{folder / 'rgb.npz'}")
    return export_release(path, data, folder / "rel", spectral_k=0, progress=False), data


def test_imagenet_convention_is_read_recorded_and_kept_inside_the_raw_range(imagenet_release, tmp_path):
    result, data = imagenet_release
    sc = read_sidecar(result.sidecar_path, result.model_path)
    dom = sc.model.input_domain
    assert dom.norm_mean == (0.485, 0.456, 0.406) and dom.norm_std == (0.229, 0.224, 0.225)
    assert dom.convention.name == "imagenet" and dom.convention.source == "model_metadata"
    assert sc.dataset.teacher_check.accuracy > 0.9
    cfg = ReconstructConfig(objective="all_layers", samples=20, steps=30, batch_size=10, lr=0.2)
    rc = reconstruct(result.model_path, result.sidecar_path, tmp_path / "m.h5", cfg, device="cpu", progress=False)
    ts = read_transfer(rc.path)
    raw = to_raw(ts.x, sc.model)
    assert ts.input_space == "model" and raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5
    assert ts.input_domain["norm_mean"] == [0.485, 0.456, 0.406]
    stored_raw = reconstruct(result.model_path, result.sidecar_path, tmp_path / "r.h5",
                             ReconstructConfig(**{**cfg.__dict__, "store": "raw"}), device="cpu", progress=False)
    tr = read_transfer(stored_raw.path)
    assert tr.input_space == "raw" and tr.x.min() >= -1e-5 and tr.x.max() <= 1 + 1e-5
    np.testing.assert_allclose(tr.model_inputs(), ts.x, atol=1e-5)  # same run, stored in the other space
    # distill honours the space: the teacher sees model inputs either way
    a = distill(result.model_path, RGBNet(), tr, DistillConfig(epochs=1), device="cpu", progress=False)
    b = distill(result.model_path, RGBNet(), ts, DistillConfig(epochs=1), device="cpu", progress=False)
    assert a.report["agreement_on_training_inputs"] == pytest.approx(b.report["agreement_on_training_inputs"])
    assert a.convention.name == "imagenet"
    # the student records the teacher's convention
    path = write_student(a.student, (3, 8, 8), tmp_path / "student.onnx", convention=a.convention)
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(meta[METADATA_KEY])["norm_std"] == [0.229, 0.224, 0.225]


def test_flattened_image_records_its_image_and_takes_image_priors(digits, tmp_path):
    class Flat(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

        def forward(self, x):
            return self.net(x)

    x, y = digits.arrays("train", feed=Feed(parse("0.3/0.4"), (64,)))
    model = _fit(Flat(), x, y, epochs=10)
    path = export_onnx(model, (64,), tmp_path / "flat.onnx", convention=parse("0.3/0.4"))
    r = export_release(path, digits, tmp_path / "rel", spectral_k=0, progress=False)
    sc = read_sidecar(r.sidecar_path)
    assert sc.model.input_shape == (-1, 64) and sc.model.image_shape == (1, 8, 8)
    assert sc.model.input_domain.convention.image_shape == (1, 8, 8) and sc.dataset.teacher_check.accuracy > 0.9
    rc = reconstruct(r.model_path, r.sidecar_path, tmp_path / "t.h5",
                     ReconstructConfig(samples=20, steps=5, batch_size=20, priors=Priors(tv=0.05, jitter=1, flip=True)),
                     device="cpu", progress=False, preview=tmp_path / "p.png")
    assert read_transfer(rc.path).x.shape == (20, 64) and (tmp_path / "p.png").stat().st_size > 1000


def test_train_records_its_convention_beside_the_dropout(tmp_path):
    runner = CliRunner()
    out = tmp_path / "t.onnx"
    r = runner.invoke(cli_main, ["train", "--model", "hinton-small", "--epochs", "2", "-o", str(out), "-q",
                                 "--device", "cpu"])
    assert r.exit_code == 0, r.output
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    conv = json.loads(meta[METADATA_KEY])
    mean, std = load_data("digits").channel_stats()
    assert conv["name"] == "data" and conv["norm_mean"] == pytest.approx(mean.tolist())
    assert conv["norm_std"] == pytest.approx(std.tolist()) and "dfkd_meta.dropout_keep_prob" in meta


def test_teachers_of_earlier_train_get_the_convention_they_were_trained_with(digits, tmp_path):
    frozen = read_sidecar(FROZEN / "teacher.dfkd.h5", FROZEN / "teacher.onnx")
    assert frozen.format_version == "1.0.0" and frozen.dataset.teacher_check is None
    r = export_release(FROZEN / "teacher.onnx", digits, tmp_path / "rel", cov_rank=2, spectral_k=16, progress=False)
    again = read_sidecar(r.sidecar_path, r.model_path)
    conv = again.model.input_domain.convention
    assert conv.source == "legacy_train" and conv.name == "data"
    assert again.model.input_domain.norm_mean == pytest.approx(frozen.model.input_domain.norm_mean)
    for old, new in zip(frozen.layers_in_order(), again.layers_in_order()):
        np.testing.assert_allclose(new.mean, old.mean, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(new.std, old.std, rtol=1e-5, atol=1e-5)


def test_frozen_release_validates_reads_and_rechecks(digits):
    report = validate(FROZEN / "teacher.dfkd.h5", FROZEN / "teacher.onnx")
    assert report.valid and report.findings == []
    sc = read_sidecar(FROZEN / "teacher.dfkd.h5", FROZEN / "teacher.onnx")
    findings, numbers = recheck_release(sc, str(FROZEN / "teacher.onnx"), digits)
    assert {f.rule for f in findings} == {"DM903"} and numbers["accuracy"] > 0.9
    r = CliRunner().invoke(cli_main, ["validate", str(FROZEN), "--data", "digits", "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["recheck"]["samples"] == 1437


def test_recheck_catches_a_release_made_with_the_old_normalisation(raw_cnn, tmp_path):
    """What export did before format 1.1: a raw-trained teacher described on standardised inputs."""
    paths, npz, _, _ = raw_cnn
    data = load_data(f"npz:{npz}")
    r = export_release(paths["legacy"], data, tmp_path / "old", input_norm="data", force=True, spectral_k=0,
                       progress=False)
    with h5py.File(r.sidecar_path, "r+") as f:  # as the old writer: no teacher check, and no convention
        del f["/dataset/teacher_check"], f["/model/input_domain/convention"]
    assert validate(r.sidecar_path, r.model_path).valid
    runner = CliRunner()
    res = runner.invoke(cli_main, ["validate", str(r.sidecar_path), "--model", str(r.model_path), "--data",
                                   f"npz:{npz}"])
    assert res.exit_code == 1 and "DM904" in res.output and "DM903" in res.output
    assert "rivals none 0.9" in res.output


def test_a_1_0_reader_accepts_1_1_files(tabular_release):
    """Format 1.1 only adds ignorable items: the 1.0 schema's validator finds nothing wrong."""
    schema_1_0 = parse_schema(yaml.safe_load((ROOT / "fixtures/spec-history/dfkd-meta-1.0.0.schema.yaml").read_text()))
    result = tabular_release[0]
    findings = check_file(result.sidecar_path, None, schema_1_0)
    assert [f for f in findings if f.severity != "info"] == []
    assert {f.rule for f in findings} == {"DM311", "DM204", "DM206"}


def test_convention_options_parse_and_refuse_clearly():
    assert parse("none").is_identity and parse("0.1307/0.3081").norm_std == (0.3081,)
    assert parse("0.5,0.4,0.3/0.2").norm_std == (0.2, 0.2, 0.2)
    for bad in ("imagenet2", "0.5", "a/b", "0.5/0"):
        with pytest.raises(UsageError, match="input_norm|std"):
            parse(bad)
    with pytest.raises(UsageError, match="not a valid input convention"):
        InputConvention.from_metadata("{not json")


def test_library_errors_name_parameters_and_the_cli_names_flags(tmp_path):
    with pytest.raises(UsageError) as err:
        build_model("nosuchnet", (1, 8, 8), 10)
    assert str(err.value).startswith("name 'nosuchnet'") and "--" not in str(err.value)
    shutil.copy(FROZEN / "teacher.onnx", tmp_path / "t.onnx")
    r = CliRunner().invoke(cli_main, ["distill", "--teacher", str(tmp_path / "t.onnx"), "--data", "digits",
                                      "--student", "nosuchnet", "-o", str(tmp_path / "s.onnx")])
    assert r.exit_code == 2 and r.output.startswith("error: --student 'nosuchnet': not one of"), r.output
    r = CliRunner().invoke(cli_main, ["train", "--model", "nosuchnet", "-o", str(tmp_path / "x.onnx")])
    assert r.exit_code == 2 and r.output.startswith("error: --model 'nosuchnet'"), r.output


def _meter(correct: int, total: int) -> AccuracyMeter:
    m = AccuracyMeter()
    m.correct, m.total = correct, total
    return m


@given(chosen=st.integers(0, 2048), rival=st.integers(0, 2048))
def test_a_rival_is_clearly_better_only_past_both_margins(chosen, rival):
    comparison = ConventionComparison(_meter(chosen, 2048), {"none": _meter(rival, 2048), "data": _meter(0, 2048)})
    a, b = chosen / 2048, rival / 2048
    expected = b - a >= RIVAL_MARGIN and 1 - b <= RIVAL_ERROR_RATIO * (1 - a)
    found = comparison.clearly_better()
    assert (found is not None) == expected
    if expected:
        assert found[0] == "none" and found[1].accuracy == b


def test_a_rival_with_the_chosen_numbers_is_not_compared(digits):
    """MNIST-style `MEAN/STD` equal to the data's own statistics: the `data` rival is the same feed."""
    mean, std = digits.channel_stats("train")
    chosen = InputConvention("custom", tuple(mean), tuple(std), source="option")
    seen = []

    def logits(x):
        seen.append(x.shape)
        return np.zeros((len(x), 10), np.float32)

    comparison = compare_conventions(logits, digits, "train", chosen, (64,), limit=300, batch_size=128)
    assert set(comparison.rivals) == {"none"} and comparison.chosen.total == 300
    assert seen == [(128, 64), (128, 64), (44, 64)] * 2  # flat features: the model's shape, chosen then rival
