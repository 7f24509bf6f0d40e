"""INT8 quantisation from the sidecar: calibration sources, DFQ's corrections by hand, the whole command."""
from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from cli.main import main as cli_main
from dfkd_meta import validate_release
from dfkd_meta.config import QuantizeConfig
from dfkd_meta.convention import from_domain
from dfkd_meta.data import Feed, load_data
from dfkd_meta.errors import UsageError
from dfkd_meta.fileio import PrivateFolder
from dfkd_meta.quantize import build_calibration, quantize_release
from dfkd_meta.quantize import quantize as quantize_module
from dfkd_meta.quantize.calibration import balanced_classes
from dfkd_meta.quantize.corrections import correct_bias, equalise
from dfkd_meta.quantize.quantize import METADATA_KEY
from dfkd_meta.sidecar import SidecarInvalidError
from dfkd_meta.sidecar.card import CARD_NAME, check_derived, read_card
from dfkd_meta.synthesis.context import SynthesisContext

from .conftest import digits_release


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    return digits_release(tmp_path_factory.mktemp("q-mlp"), "hinton-small", 40, cov_rank=4, spectral_k=0)


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    return digits_release(tmp_path_factory.mktemp("q-cnn"), "bn-cnn", 8, spectral_k=0)


def _session(path):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(path if isinstance(path, bytes) else str(path), opts,
                                providers=["CPUExecutionProvider"])


def _accuracy(path, release) -> float:
    """The model's accuracy on the digits test split, fed as the sidecar's input domain says."""
    ctx = SynthesisContext(release.model_path, release.sidecar_path, torch.device("cpu"))
    x, y = load_data("digits").arrays("test", feed=Feed(from_domain(ctx.input_domain), tuple(ctx.input_shape)))
    s = _session(path)
    return float((s.run(None, {s.get_inputs()[0].name: x.astype(np.float32)})[0].argmax(1) == y).mean())


# --- calibration sources ---------------------------------------------------------------------------------

@settings(max_examples=50, deadline=None)
@given(samples=st.integers(1, 300), batch=st.integers(1, 64), classes=st.integers(2, 12))
def test_balanced_classes_cover_every_class_equally(samples, batch, classes):
    all_classes = np.concatenate([balanced_classes(b, min(batch, samples - b * batch), batch, classes)
                                  for b in range(-(-samples // batch))])
    counts = np.bincount(all_classes, minlength=classes)
    assert len(all_classes) == samples and counts.max() - counts.min() <= 1


@pytest.mark.parametrize("name", ["noise", "sidecar-gaussian", "sidecar", "data:digits"])
def test_calibration_sources_give_the_declared_inputs(mlp, name):
    ctx = SynthesisContext(mlp.model_path, mlp.sidecar_path, torch.device("cpu"))
    cfg = QuantizeConfig(calibration=name, samples=70, batch_size=32, seed=3)
    with PrivateFolder() as folder:
        calib = build_calibration(ctx, cfg, folder)
        first, second = list(calib.batches()), list(calib.batches())
    assert [len(b) for b in first] == [32, 32, 6]
    x = np.concatenate(first)
    assert x.shape == (70, *ctx.input_shape) and x.dtype == np.float32 and np.isfinite(x).all()
    assert all(np.array_equal(a, b) for a, b in zip(first, second))  # a second pass reads the same inputs
    if ctx.bounds is not None:
        lo, hi = (b.numpy().reshape(1, -1) for b in ctx.bounds)
        flat = x.reshape(70, -1)
        assert (flat >= lo - 1e-5).all() and (flat <= hi + 1e-5).all()
    if name == "data:digits":
        labels = load_data("digits").labels("train")[calib.order]
        counts = np.bincount(labels, minlength=10)
        assert counts.max() - counts.min() <= 1


def test_gaussian_calibration_draws_each_class_mean(mlp):
    """Draws for a class sit nearer to that class's Gaussian mean than to any other's (so classes are what the
    round robin says they are)."""
    ctx = SynthesisContext(mlp.model_path, mlp.sidecar_path, torch.device("cpu"))
    with PrivateFolder() as folder:
        calib = build_calibration(ctx, QuantizeConfig(calibration="sidecar-gaussian", samples=200, batch_size=50),
                                  folder)
        x = np.concatenate(list(calib.batches())).reshape(200, -1)
    classes = np.concatenate([calib.classes(b) for b in range(calib.num_batches)])
    means = ctx.gaussian.mean  # [C, d]
    nearest = ((x[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    assert (nearest == classes).mean() > 0.8


def test_sidecar_reconstruct_calibration_and_refusals(cnn, mlp):
    ctx = SynthesisContext(cnn.model_path, cnn.sidecar_path, torch.device("cpu"))
    with PrivateFolder() as folder:
        calib = build_calibration(ctx, QuantizeConfig(calibration="sidecar-reconstruct", samples=20, batch_size=8,
                                                      reconstruct_steps=3), folder)
        x = np.concatenate(list(calib.batches()))
    assert x.shape == (20, *ctx.input_shape) and np.isfinite(x).all()
    bare = SynthesisContext(mlp.model_path, None, torch.device("cpu"))
    with PrivateFolder() as folder:
        with pytest.raises(UsageError, match="needs a sidecar"):
            build_calibration(bare, QuantizeConfig(calibration="sidecar"), folder)
        for bad in ("gaussian", "data", "noise:x"):
            with pytest.raises(UsageError, match="calibration"):
                build_calibration(bare, QuantizeConfig(calibration=bad), folder)
    with pytest.raises(UsageError, match="method"):
        QuantizeConfig(method="kl").check()
    with pytest.raises(UsageError, match="corrections"):
        QuantizeConfig(corrections=("bias", "bias")).check()


# --- DFQ's corrections by hand -------------------------------------------------------------------------------

def _chain(w1, b1, w2, b2, w3, b3) -> onnx.ModelProto:
    """x [N,2,6,6] -> Conv(w1) -> Relu -> MaxPool 2 -> Conv(w2) -> Relu -> GlobalAveragePool -> Flatten -> Gemm(w3)."""
    inits = [numpy_helper.from_array(a.astype(np.float32), n)
             for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"), (w3, "w3"), (b3, "b3"))]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "w3", "b3"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(proto, x):
    return _session(proto.SerializeToString()).run(None, {"x": x})[0]


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2 ** 16), spread=st.floats(0.0, 3.0))
def test_equalise_keeps_the_function_and_evens_the_ranges(seed, spread):
    rng = np.random.default_rng(seed)
    s = 10.0 ** rng.uniform(-spread, spread, 4)  # channel scales a trained net could hide: same function, bad ranges
    w1, b1 = rng.normal(size=(4, 2, 3, 3)) * s[:, None, None, None], rng.normal(size=4) * s
    w2, b2 = rng.normal(size=(5, 4, 3, 3)) / s[None, :, None, None], rng.normal(size=5)
    w3, b3 = rng.normal(size=(3, 5)), rng.normal(size=3)
    proto = _chain(w1, b1, w2, b2, w3, b3)
    equalised, report, scales = equalise(proto)
    assert report["equalised_pairs"] == [["c1", "c2"], ["c2", "y"]]
    x = rng.normal(size=(8, 2, 6, 6)).astype(np.float32)
    before, after = _run(proto, x), _run(equalised, x)
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-4 * np.abs(before).max())
    init = {t.name: numpy_helper.to_array(t) for t in equalised.graph.initializer}
    r1 = np.abs(init["w1"]).reshape(4, -1).max(1)
    r2 = np.abs(init["w2"]).transpose(1, 0, 2, 3).reshape(4, -1).max(1)
    r2_out = np.abs(init["w2"]).reshape(5, -1).max(1)
    r3 = np.abs(init["w3"]).max(0)
    # the sweeps settle each pair's ranges to their geometric mean (the last pair moved last: exactly)
    np.testing.assert_allclose(r2_out, r3, rtol=1e-5)
    np.testing.assert_allclose(r1, r2, rtol=1e-2)
    assert set(scales) == {"p1", "f"} and scales["p1"].shape == (4,)


def _fake_quantised(proto: onnx.ModelProto, w_q: np.ndarray, scale: float) -> onnx.ModelProto:
    """``proto`` (one Gemm) with its weight fed through DequantizeLinear of ``w_q`` (int8) at ``scale``."""
    q = onnx.ModelProto.FromString(proto.SerializeToString())
    q.graph.initializer.extend([numpy_helper.from_array(w_q.astype(np.int8), "w_q"),
                                numpy_helper.from_array(np.array(scale, np.float32), "w_scale")])
    q.graph.node.insert(0, helper.make_node("DequantizeLinear", ["w_q", "w_scale"], ["w_dq"]))
    q.graph.node[1].input[1] = "w_dq"
    return q


def test_bias_correction_removes_the_expected_weight_error_by_hand():
    w = np.array([[0.30, -0.71, 0.12], [0.05, 0.49, -0.88]], np.float32)
    b = np.array([0.1, -0.2], np.float32)
    graph = helper.make_graph([helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    scale = 0.25  # coarse on purpose: W_q = round(W / 0.25) * 0.25
    w_q = np.round(w / scale)
    mean = np.array([2.0, -1.0, 0.5])
    fixed, report = correct_bias(proto, _fake_quantised(proto, w_q, scale), {"x": mean})
    new_b = numpy_helper.to_array(next(t for t in fixed.graph.initializer if t.name == "b"))
    expected = b - (w_q * scale - w) @ mean  # the expected error (W_q - W) E[x], by hand
    np.testing.assert_allclose(new_b, expected, rtol=1e-6)
    assert report["bias_corrected_layers"] == ["y"]
    # the quantised weights with the new bias: zero mean error per output on inputs with that mean
    x = mean + np.random.default_rng(0).normal(size=(20000, 3))
    error = (x @ (w_q * scale).T + new_b) - (x @ w.T + b)
    assert np.abs(error.mean(0)).max() < 0.02 < np.abs(((x @ (w_q * scale).T + b) - (x @ w.T + b)).mean(0)).max()


class _Inputs:
    """A calibration stand-in: fixed batches (the toy network's inputs)."""

    num_batches = 4

    def __init__(self, x, cfg):
        self.x, self.cfg = x, cfg

    def checked_batch(self, b):
        return np.split(self.x, self.num_batches)[b]


def test_bias_correction_moves_each_channels_mean_error_towards_zero_in_onnxruntime():
    """Per-tensor INT8 weights of a layer whose channels differ 100x in range: the small channels' mean output
    error is large; after bias correction (E[x] known) it shrinks on every output channel."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(6, 16)) * np.array([1, 1, 0.05, 0.02, 1, 0.01])[:, None]
    w[0, 0] = 4.0  # one large weight sets the per-tensor scale
    b = np.zeros(6)
    graph = helper.make_graph([helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 6])],
                              [numpy_helper.from_array(w.astype(np.float32), "w"),
                               numpy_helper.from_array(b.astype(np.float32), "b")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = (rng.normal(size=(512, 16)) * 0.3 + 1.0).astype(np.float32)  # a mean far from zero: what the error scales
    cfg = QuantizeConfig(per_channel=False)
    with PrivateFolder() as folder:
        first = quantize_module._quantise(proto, _Inputs(x, cfg), cfg, folder, "x", "a")
        fixed, _ = correct_bias(proto, first, {"x": x.mean(0)})
        second = quantize_module._quantise(fixed, _Inputs(x, cfg), cfg, folder, "x", "b")
    ref = _run(proto, x)
    before = np.abs((_run(first, x) - ref).mean(0))
    after = np.abs((_run(second, x) - ref).mean(0))
    assert after.sum() < 0.5 * before.sum() and (after <= before + 0.01).all()  # no channel made worse


# --- the whole command ---------------------------------------------------------------------------------------

def test_quantize_release_from_the_sidecar(mlp, tmp_path):
    out = tmp_path / "t.int8.onnx"
    r = quantize_release(mlp.model_path, out, QuantizeConfig(samples=256), sidecar=mlp.sidecar_path,
                         device="cpu").report
    onnx.checker.check_model(onnx.load(out))
    meta = {p.key: p.value for p in onnx.load(out).metadata_props}
    record = json.loads(meta[METADATA_KEY])
    assert record["teacher_sha256"] == hashlib.sha256(mlp.model_path.read_bytes()).hexdigest()
    assert record["sidecar_sha256"] == hashlib.sha256(mlp.sidecar_path.read_bytes()).hexdigest()
    assert record["calibration"] == "sidecar (sidecar-gaussian)" and record["samples"] == 256
    teacher_meta = {p.key: p.value for p in onnx.load(mlp.model_path).metadata_props}
    assert all(meta[k] == v for k, v in teacher_meta.items())  # the input convention travels with the INT8 model
    # the documented tolerance (docs/quantize.md): >= 95 % top-1 agreement, logit errors within half a logit spread
    assert r["on_calibration_inputs"]["top1_agreement"] >= 0.95
    assert 0 < r["on_calibration_inputs"]["max_logit_error_in_spreads"] <= 0.5
    assert r["int8_bytes"] < 0.5 * r["float_bytes"]
    assert abs(_accuracy(out, mlp) - _accuracy(mlp.model_path, mlp)) <= 0.02


def test_calibrating_one_batch_at_a_time_gives_the_ranges_of_all_at_once(mlp, tmp_path, monkeypatch):
    """ORT's memory is bounded by one batch (strided calibration); the ranges, hence every scale, are the same."""
    def scales(path):
        return {t.name: numpy_helper.to_array(t).tolist() for t in onnx.load(path).graph.initializer
                if t.name.endswith("_scale")}
    cfg = QuantizeConfig(samples=96, batch_size=16)
    quantize_release(mlp.model_path, tmp_path / "strided.onnx", cfg, sidecar=mlp.sidecar_path, device="cpu")
    monkeypatch.setattr(quantize_module, "ONE_BATCH_AT_A_TIME", {})
    quantize_release(mlp.model_path, tmp_path / "whole.onnx", cfg, sidecar=mlp.sidecar_path, device="cpu")
    strided, whole = scales(tmp_path / "strided.onnx"), scales(tmp_path / "whole.onnx")
    assert len(strided) >= 4 and strided == whole


def test_corrections_on_a_conv_teacher(cnn, tmp_path):
    out = tmp_path / "c.int8.onnx"
    r = quantize_release(cnn.model_path, out, QuantizeConfig(samples=64, calibration="noise",
                                                             corrections=("equalise", "bias")),
                         sidecar=cnn.sidecar_path, device="cpu").report
    assert len(r["equalised_pairs"]) >= 2 and r["bias_corrected_layers"]
    assert set(r["bias_means_from"].values()) <= {"sidecar", "calibration inputs"}
    assert r["on_calibration_inputs"]["top1_agreement"] >= 0.8
    assert abs(_accuracy(out, cnn) - _accuracy(cnn.model_path, cnn)) <= 0.05


def test_a_sidecar_of_another_model_is_refused_before_any_work(mlp, cnn, tmp_path, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("calibration began before the sidecar was checked")
    monkeypatch.setattr(quantize_module, "build_calibration", no_work)
    out = tmp_path / "x.int8.onnx"
    with pytest.raises(SidecarInvalidError):
        quantize_release(cnn.model_path, out, QuantizeConfig(), sidecar=mlp.sidecar_path, device="cpu")
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_cli_quantize(mlp, tmp_path):
    runner = CliRunner()
    out = tmp_path / "q.onnx"
    base = ["quantize", "--model", str(mlp.model_path), "-o", str(out), "--device", "cpu", "-q"]
    r = runner.invoke(cli_main, base + ["--sidecar", str(mlp.sidecar_path), "--samples", "64", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["quantization"]["samples"] == 64 and out.exists()
    out.unlink()
    for args, code, text in ((["--calibration", "sidecar"], 2, "--sidecar"),
                             (["--calibration", "bogus"], 2, "--calibration"),
                             (["--sidecar", str(mlp.sidecar_path), "--correct", "nope"], 2, "--correct")):
        r = runner.invoke(cli_main, base + args)
        assert r.exit_code == code and text in r.output and "Traceback" not in r.output, r.output
        assert not out.exists()
    bad = tmp_path / "bad.dfkd.h5"
    shutil.copyfile(mlp.sidecar_path, bad)
    with open(bad, "r+b") as f:
        f.truncate(bad.stat().st_size // 2)
    r = runner.invoke(cli_main, base + ["--sidecar", str(bad)])
    assert r.exit_code != 0 and len(r.stderr.strip().splitlines()) == 1 and not out.exists()
    with pytest.raises(UsageError, match="overwrite"):
        quantize_release(mlp.model_path, mlp.model_path, QuantizeConfig(), sidecar=mlp.sidecar_path)


# --- an INT8 model listed in the release's model card (SPEC §13, derived models) -------------------------

def _release_copy(release, tmp_path):
    folder = tmp_path / "release"
    shutil.copytree(release.model_path.parent, folder)
    return folder, folder / release.model_path.name, folder / release.sidecar_path.name


def _rewrite_front(card, change):
    """The card with its front matter changed by ``change(front)`` (a forger's edit); the body kept."""
    import yaml

    front, body = read_card(card)
    change(front)
    card.write_text(f"---\n{yaml.safe_dump(front, sort_keys=False)}---\n{body}", encoding="utf-8")


def _findings(report, rule):
    return [f for f in report.findings if f.rule == rule]


def test_an_int8_model_listed_in_the_card_belongs_to_the_release(mlp, cnn, tmp_path):
    folder, model, sidecar = _release_copy(mlp, tmp_path)
    card = folder / CARD_NAME
    out = folder / "teacher.int8.onnx"
    cfg = QuantizeConfig(samples=64)
    quantize_release(model, out, cfg, sidecar=sidecar, device="cpu", list_in_card=True)
    front, body = read_card(card)
    [entry] = front["dfkd_meta"]["derived"]
    assert entry == {"model": out.name, "model_sha256": hashlib.sha256(out.read_bytes()).hexdigest(), "kind": "int8",
                     "calibration": "sidecar (sidecar-gaussian)", "samples": 64}
    assert "## Derived models" in body and f"`{out.name}`" in body and "## Use it" in body  # the rest is kept
    report = validate_release(folder)
    assert report.valid and not _findings(report, "DM954") and not _findings(report, "DM955"), report.findings
    # listed again (another calibration): one entry, replaced, and one row in the table
    quantize_release(model, out, QuantizeConfig(samples=32, calibration="noise"), sidecar=sidecar, device="cpu",
                     list_in_card=True)
    front, body = read_card(card)
    assert [d["samples"] for d in front["dfkd_meta"]["derived"]] == [32] and body.count(f"| `{out.name}` |") == 1
    assert validate_release(folder).valid
    # the file replaced by another INT8 model of the same teacher: its hash and calibration contradict the card
    quantize_release(model, tmp_path / "other.onnx", QuantizeConfig(samples=48), sidecar=sidecar, device="cpu")
    shutil.copyfile(tmp_path / "other.onnx", out)
    bad = {f.path.rsplit(".", 1)[-1] for f in _findings(validate_release(folder), "DM955")}
    assert bad == {"model_sha256", "samples", "calibration"}
    # an INT8 model of another teacher, its hash forged into the card: it was not made from this release
    quantize_release(cnn.model_path, out, QuantizeConfig(samples=32, calibration="noise"), sidecar=cnn.sidecar_path,
                     device="cpu")
    forged = hashlib.sha256(out.read_bytes()).hexdigest()
    _rewrite_front(card, lambda f: f["dfkd_meta"]["derived"][0].update(model_sha256=forged))
    report = validate_release(folder)
    made_from = {f.path.rsplit(".", 1)[-1] for f in _findings(report, "DM955")}
    assert not report.valid and made_from == {"teacher_sha256", "sidecar_sha256"}
    assert _findings(report, "DM955")[0].severity == "error"
    # listed but gone; a link instead of a file; a name that leaves the folder
    out.unlink()
    assert "no such file" in _findings(validate_release(folder), "DM955")[0].message
    out.symlink_to(tmp_path / "other.onnx")
    assert "not a regular file" in _findings(validate_release(folder), "DM955")[0].message
    out.unlink()
    _rewrite_front(card, lambda f: f["dfkd_meta"]["derived"][0].update(model="../other.onnx"))
    report = validate_release(folder)
    assert _findings(report, "DM952") and not _findings(report, "DM955")


@settings(max_examples=60, deadline=None)
@given(listed=st.one_of(
    st.none(), st.integers(), st.text(max_size=20),
    st.lists(st.one_of(st.none(), st.text(max_size=10), st.dictionaries(
        st.sampled_from(["model", "model_sha256", "kind", "calibration", "samples", "x"]),
        st.one_of(st.none(), st.integers(), st.floats(), st.text(max_size=30), st.lists(st.integers(), max_size=3)),
        max_size=6)), max_size=20)))
def test_hostile_derived_entries_give_findings_never_a_crash(mlp, listed):
    """Whatever the card's derived list holds, the check answers with DM952/DM955 findings and file names."""
    import tempfile
    from pathlib import Path

    from dfkd_meta.sidecar import read_sidecar

    with tempfile.TemporaryDirectory() as tmp:
        folder, model, sidecar = _release_copy(mlp, Path(tmp))
        (folder / "x.onnx").write_bytes(b"\x08\x07junk")
        _rewrite_front(folder / CARD_NAME, lambda f: f["dfkd_meta"].update(derived=listed))
        sc = read_sidecar(sidecar, model)
        found, names = check_derived(folder, sc, hashlib.sha256(sidecar.read_bytes()).hexdigest())
    assert {f.rule for f in found} <= {"DM952", "DM955"}
    assert all(isinstance(n, str) and "/" not in n and not n.startswith(".") for n in names)
    if listed:
        assert found  # nothing random is a genuine INT8 model of this release


def test_listing_in_the_card_is_refused_before_any_work_where_it_cannot_hold(mlp, cnn, tmp_path, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("calibration began before the card was checked")
    monkeypatch.setattr(quantize_module, "build_calibration", no_work)
    folder, model, sidecar = _release_copy(mlp, tmp_path)
    before = sorted(p.name for p in folder.iterdir())
    card_text = (folder / CARD_NAME).read_text()
    cases = [(tmp_path / "elsewhere.int8.onnx", sidecar, "release folder"),
             (folder / CARD_NAME, sidecar, "not a name for a model"),
             (folder / "t.int8.onnx", cnn.sidecar_path, None)]  # another model's sidecar: the binding refuses it
    for out, sc, text in cases:
        with pytest.raises((UsageError, SidecarInvalidError), match=text):
            quantize_release(model, out, QuantizeConfig(), sidecar=sc, device="cpu", list_in_card=True)
    _rewrite_front(folder / CARD_NAME, lambda f: f["dfkd_meta"].update(model_sha256="0" * 64))
    with pytest.raises(UsageError, match="describes another model"):
        quantize_release(model, folder / "t.int8.onnx", QuantizeConfig(), sidecar=sidecar, device="cpu",
                         list_in_card=True)
    (folder / CARD_NAME).unlink()
    r = CliRunner().invoke(cli_main, ["quantize", "--model", str(model), "--sidecar", str(sidecar), "--device", "cpu",
                                      "-o", str(folder / "t.int8.onnx"), "--list-in-card"])
    assert r.exit_code != 0 and "--list-in-card" in r.output and "Traceback" not in r.output, r.output
    assert sorted(p.name for p in folder.iterdir()) == sorted(set(before) - {CARD_NAME})
    assert not (tmp_path / "elsewhere.int8.onnx").exists() and card_text.startswith("---")
