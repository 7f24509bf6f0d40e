"""Distillation: the KD loss by hand, real data beats noise, ONNX student parity, resume, demo."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli.main import main as cli_main
from dfkd_meta.data import load_data
from dfkd_meta.demo import DemoConfig, run_demo
from dfkd_meta.distill import DistillConfig, distill, kd_loss, write_student
from dfkd_meta.errors import DfkdError, UsageError
from dfkd_meta.models import build_model
from dfkd_meta.onnx.graph import OnnxModule
from dfkd_meta.onnx.torch_export import export_onnx
from dfkd_meta.reconstruct.synthesize import ReconstructConfig, reconstruct
from dfkd_meta.transfer import read_transfer

from .conftest import digits_release, interrupt_online_run


def test_kd_loss_equals_a_hand_computation():
    s = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    t = torch.tensor([[2.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    temp, alpha = 4.0, 0.3
    total = 0.0
    for si, ti in zip(s.tolist(), t.tolist()):
        ps = [math.exp(v / temp) for v in si]
        pt = [math.exp(v / temp) for v in ti]
        ps = [v / sum(ps) for v in ps]
        pt = [v / sum(pt) for v in pt]
        kl = sum(b * math.log(b / a) for a, b in zip(ps, pt)) * temp ** 2
        hard = max(range(3), key=lambda k: ti[k])
        ce = -math.log(math.exp(si[hard]) / sum(math.exp(v) for v in si))
        total += (1 - alpha) * kl + alpha * ce
    assert kd_loss(s, t, temp, alpha).item() == pytest.approx(total / 2, rel=1e-6)
    assert kd_loss(t, t, temp).item() == pytest.approx(0.0, abs=1e-7)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kd")
    release = digits_release(folder, "hinton-small", 40, spectral_k=0)
    noise = reconstruct(release.model_path, release.sidecar_path, folder / "noise.h5",
                        ReconstructConfig(objective="noise", samples=300, batch_size=300), device="cpu", progress=False)
    return load_data("digits"), release, read_transfer(noise.path), folder


def _student(seed=0):
    torch.manual_seed(seed)
    return build_model("hinton-tiny", (1, 8, 8), 10)


def test_hinton800_plain_is_the_dropout_student_without_dropout():
    """The unregularised 800-800 student (Hinton et al. 2015) has hinton800's layers and no dropout, so in
    training mode it is deterministic; hinton800 keeps its dropout (the Lopes rows were measured with it)."""
    from dfkd_meta.models import hidden_dropout_keep_probs

    plain, dropout = build_model("hinton800-plain", (1, 28, 28), 10), build_model("hinton800", (1, 28, 28), 10)
    assert [p.shape for p in plain.parameters()] == [p.shape for p in dropout.parameters()]
    assert [tuple(p.shape) for p in plain.parameters()][0] == (800, 784)
    assert not any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in plain.modules())
    assert hidden_dropout_keep_probs(dropout) == [0.5, 0.5] and hidden_dropout_keep_probs(plain) == [None, None]
    x = torch.rand(4, 1, 28, 28)
    plain.train()
    assert torch.equal(plain(x), plain(x))


def test_real_data_beats_noise_on_digits(setup):
    data, release, noise, _ = setup
    cfg = DistillConfig(epochs=30)
    real = distill(release.model_path, _student(), data, cfg, device="cpu", eval_data=data, progress=False)
    fake = distill(release.model_path, _student(), noise, cfg, device="cpu", eval_data=data, progress=False)
    assert real.report["student_accuracy"] > fake.report["student_accuracy"] + 0.05
    assert real.report["student_accuracy"] > 0.85 and real.report["teacher_accuracy"] > 0.9
    assert fake.report["source"]["objective"] == "noise" and fake.report["settings"]["temperature"] == 8.0


def test_dkd_teaches_the_student_and_feature_losses_are_refused_where_they_cannot_apply(setup):
    data, release, _, _ = setup
    r = distill(release.model_path, _student(), data, DistillConfig(epochs=30, loss="dkd"), device="cpu",
                eval_data=data, progress=False).report
    assert r["settings"]["loss"] == "dkd" and r["student_accuracy"] > 0.85 and r["objective"] == {"dkd": 1.0}
    with pytest.raises(UsageError, match="compares feature maps"):  # an MLP teacher has no maps to pair
        distill(release.model_path, _student(), data, DistillConfig(epochs=1, loss="kd,at"), device="cpu",
                progress=False)
    with pytest.raises(UsageError, match="names no feature loss"):
        distill(release.model_path, _student(), data, DistillConfig(epochs=1, features=("a=b",)), device="cpu",
                progress=False)
    from dfkd_meta.config import OnlineConfig
    from dfkd_meta.distill import distill_online

    with pytest.raises(UsageError, match="compares feature maps"):  # online too: the same pairing
        distill_online(release.model_path, _student(), OnlineConfig(iterations=1, loss="l1,nst"), device="cpu",
                       progress=False)
    help_text = " ".join(CliRunner().invoke(cli_main, ["distill", "--help"]).output.split())
    assert all(f"{name}:" in help_text for name in ("kd", "dkd", "at", "fitnet", "nst", "pkt", "rkd", "sp", "cc"))
    base = ["distill", "--teacher", str(release.model_path), "--student", "hinton-tiny", "-o", "s.onnx"]
    for extra, text in ((["--data", "digits", "--loss", "at:x"], "must be a number"),
                        (["--data", "digits", "--loss", "bogus"], "bogus"),
                        (["--data", "digits", "--features", "a=b"], "names no feature loss"),
                        (["--method", "dfad", "--loss", "kd", "--loss", "sp", "--features", "a=b"],
                         "no feature tensor")):
        r = CliRunner().invoke(cli_main, base + extra)
        assert r.exit_code == 2 and text in r.output and "Traceback" not in r.output, r.output


@pytest.fixture(scope="module")
def conv_release(tmp_path_factory):
    return digits_release(tmp_path_factory.mktemp("kd-conv"), "bn-cnn", 8, spectral_k=0)


def test_feature_losses_train_a_conv_student_and_resume_with_their_regressors(conv_release, tmp_path, monkeypatch):
    """KD + FitNet + AT on real digits, pairs found by stage: the student learns, the pairs are reported, and a run
    resumed from its checkpoint (FitNet's regressors included) ends where an uninterrupted one does."""
    data = load_data("digits")

    def student():
        torch.manual_seed(0)
        return build_model("bn-cnn", (1, 8, 8), 10)
    # weights far below the papers' (fitnet 100, at 1000): at those, on 8x8 digits for a few epochs, the feature terms
    # swamp KD and the student stays near chance (docs/consuming.md)
    cfg = DistillConfig(epochs=10, loss="kd,fitnet:1,at:10")
    full = distill(conv_release.model_path, student(), data, cfg, device="cpu", eval_data=data, progress=False)
    r = full.report
    assert r["objective"] == {"kd": 1.0, "fitnet": 1.0, "at": 10.0}
    assert [p["key"] for p in r["feature_pairs"]][-1] == "embedding" and len(r["feature_pairs"]) >= 2
    assert r["student_accuracy"] > 0.45  # chance is 0.1; KD alone reaches about 0.73 here
    import dfkd_meta.distill.loop as dm
    real_save, ckpt = dm._save_checkpoint, tmp_path / "s.ckpt"

    def stop_after_two(path, student, opt, sched, epoch, history, run, objective, **clock):
        real_save(path, student, opt, sched, epoch, history, run, objective, **clock)
        if epoch == 2:
            raise KeyboardInterrupt
    monkeypatch.setattr(dm, "_save_checkpoint", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        distill(conv_release.model_path, student(), data, cfg, device="cpu", checkpoint=ckpt, progress=False)
    monkeypatch.setattr(dm, "_save_checkpoint", real_save)
    assert any(k.startswith("units.fitnet.regressors") for k in torch.load(ckpt, weights_only=True)["objective"])
    resumed = distill(conv_release.model_path, student(), data, cfg, device="cpu", checkpoint=ckpt, resume=True,
                      progress=False)
    assert resumed.report["history"] == full.report["history"]
    for a, b in zip(full.student.state_dict().values(), resumed.student.state_dict().values()):
        assert torch.equal(a, b)


def test_the_teachers_features_cached_once_train_the_same_student_as_a_pass_per_batch(conv_release, monkeypatch):
    """The teacher's paired tensors computed once before the loop (they fit the cache) or on every batch (they do
    not): the same losses, the same student."""
    import dfkd_meta.distill.loop as dm
    data = load_data("digits")
    cfg = DistillConfig(epochs=2, loss="kd,fitnet:1,at:10")

    def run():
        torch.manual_seed(0)
        return distill(conv_release.model_path, build_model("bn-cnn", (1, 8, 8), 10), data, cfg, device="cpu",
                       progress=False)
    cached = run()
    monkeypatch.setattr(dm, "FEATURE_CACHE_BYTES", 0)
    per_batch = run()
    assert cached.report["teacher_features"]["cached"] and not per_batch.report["teacher_features"]["cached"]
    n, shapes = cached.report["samples"], [p["teacher_shape"] for p in cached.report["feature_pairs"]]
    assert cached.report["teacher_features"]["cache_bytes"] == sum(4 * n * int(np.prod(s)) for s in shapes)
    for a, b in zip(cached.report["history"], per_batch.report["history"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    for a, b in zip(cached.student.state_dict().values(), per_batch.student.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), rtol=1e-3, atol=1e-4)


def test_feature_losses_online_read_the_teacher_once_more_per_step(conv_release):
    """DFAD with FitNet added: the pairs are found as offline, the objective is reported, and the teacher's paired
    tensors cost exactly one more teacher pass per student step, counted in the run's teacher examples."""
    from dfkd_meta.config import OnlineConfig
    from dfkd_meta.distill import distill_online

    def run(loss):
        torch.manual_seed(0)
        cfg = OnlineConfig(method="dfad", iterations=12, batch_size=16, loss=loss, seed=0, checkpoint_every=12)
        return distill_online(conv_release.model_path, build_model("bn-cnn", (1, 8, 8), 10), cfg, device="cpu",
                              progress=False).report
    plain, features = run("l1"), run("l1,fitnet:1")
    assert features["objective"] == {"l1": 1.0, "fitnet": 1.0} and features["feature_pairs"][-1]["key"] == "embedding"
    assert features["teacher_forward_examples"] - plain["teacher_forward_examples"] == 12 * 16
    assert np.isfinite([h["loss"] for h in features["history"]]).all()


def test_an_online_run_with_a_regressor_resumes_to_the_same_student_and_regressor(conv_release, tmp_path,
                                                                                   monkeypatch):
    """DFAD + FitNet interrupted after its second checkpoint and resumed: the student and FitNet's regressors end
    bit for bit where an uninterrupted run's do (the regressors live in the checkpoint, not only the student)."""
    from dfkd_meta.config import OnlineConfig
    from dfkd_meta.distill import distill_online

    cfg = OnlineConfig(method="dfad", iterations=8, batch_size=8, loss="l1,fitnet:1", seed=0, checkpoint_every=2)

    def run(**kw):
        torch.manual_seed(0)
        return distill_online(conv_release.model_path, build_model("bn-cnn", (1, 8, 8), 10), cfg, device="cpu",
                              progress=False, **kw)
    full, ckpt = run(), tmp_path / "s.ckpt"
    interrupt_online_run(monkeypatch, 4, lambda: run(checkpoint=ckpt))
    saved = torch.load(ckpt, weights_only=True)["objective"]
    assert any(k.startswith("units.fitnet.regressors") for k in saved)
    resumed = run(checkpoint=ckpt, resume=True)
    for a, b in zip(full.student.state_dict().values(), resumed.student.state_dict().values()):
        assert torch.equal(a, b)
    strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
    assert strip(resumed.report["history"]) == strip(full.report["history"])
    # the regressors moved after the interruption and the resumed run continued from the saved ones
    final = torch.load(ckpt, weights_only=True)["objective"]
    assert any(not torch.equal(saved[k], final[k]) for k in saved if k.startswith("units.fitnet.regressors"))


def test_a_diverging_student_stops_the_run_with_a_one_line_error(setup, tmp_path):
    """A loss that turns NaN or infinite (here an absurd learning rate) stops offline distillation at once, naming
    the epoch and step, instead of training on to chance; no student is returned."""
    data, release, _, _ = setup
    with pytest.raises(DfkdError, match=r"kd: the student's loss became NaN or infinite at epoch 1, step \d+; "
                                        r"stopped; nothing was written"):
        distill(release.model_path, _student(), data, DistillConfig(epochs=2, lr=1e30), device="cpu",
                checkpoint=tmp_path / "s.ckpt", progress=False)


def test_a_clock_budget_stops_offline_distillation(setup):
    """--minutes offline, as online: the loop stops when the budget is spent (mid-epoch too), not at --epochs, and
    the report says how long it ran and how far it got."""
    data, release, _, _ = setup
    r = distill(release.model_path, _student(), data, DistillConfig(epochs=100_000, minutes=0.05), device="cpu",
                progress=False).report
    assert r["budget_minutes"] == 0.05 and 3.0 <= r["loop_seconds"] < 3.0 + 5.0
    assert 1 <= r["epochs_done"] < 100_000 and r["steps_this_run"] >= 1
    with pytest.raises(UsageError, match="positive number of minutes"):
        distill(release.model_path, _student(), data, DistillConfig(minutes=0.0), device="cpu", progress=False)


def test_wrong_teacher_for_a_transfer_set_is_refused(setup, tmp_path):
    data, _, noise, _ = setup
    other = export_onnx(build_model("hinton-tiny", (1, 8, 8), 10), (1, 8, 8), tmp_path / "other.onnx")
    with pytest.raises(DfkdError, match="not the teacher the transfer set was reconstructed from"):
        distill(other, _student(), noise, DistillConfig(epochs=1), device="cpu", progress=False)


def test_student_onnx_matches_torch_and_report_is_written(setup, tmp_path):
    data, release, noise, _ = setup
    result = distill(release.model_path, _student(), noise, DistillConfig(epochs=2), device="cpu", progress=False)
    path = write_student(result.student, (1, 8, 8), tmp_path / "s.onnx", result.report)
    x = torch.randn(7, 1, 8, 8)
    with torch.no_grad():
        np.testing.assert_allclose(OnnxModule.from_file(path)(x).numpy(), result.student(x).numpy(), rtol=1e-4,
                                   atol=1e-5)
    report = json.loads(path.with_suffix(".json").read_text())
    assert report["samples"] == 300 and len(report["history"]) == 2


def test_resume_from_checkpoint_equals_an_uninterrupted_run(setup, tmp_path, monkeypatch):
    import dfkd_meta.distill.loop as dm
    _, release, noise, _ = setup
    cfg = DistillConfig(epochs=4)
    full = distill(release.model_path, _student(), noise, cfg, device="cpu", progress=False)
    real_save = dm._save_checkpoint

    def stop_after_two(path, student, opt, sched, epoch, history, run, *objective, **clock):
        real_save(path, student, opt, sched, epoch, history, run, *objective, **clock)
        if epoch == 2:
            raise KeyboardInterrupt
    monkeypatch.setattr(dm, "_save_checkpoint", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        distill(release.model_path, _student(), noise, cfg, device="cpu", checkpoint=tmp_path / "s.ckpt",
                progress=False)
    monkeypatch.setattr(dm, "_save_checkpoint", real_save)
    resumed = distill(release.model_path, _student(seed=5), noise, cfg, device="cpu", checkpoint=tmp_path / "s.ckpt",
                      resume=True, progress=False)
    assert resumed.report["history"] == full.report["history"]
    for a, b in zip(full.student.state_dict().values(), resumed.student.state_dict().values()):
        assert torch.equal(a, b)
    # the checkpoint records the whole config: a changed setting is refused by name
    with pytest.raises(UsageError, match=r"different settings \(config\.lr: 0\.001 -> 0\.002\)"):
        distill(release.model_path, _student(), noise, DistillConfig(epochs=4, lr=2e-3), device="cpu",
                checkpoint=tmp_path / "s.ckpt", resume=True, progress=False)
    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(DfkdError, match="cannot resume from this checkpoint"):
        distill(release.model_path, _student(), noise, cfg, device="cpu", checkpoint=tmp_path / "bad.ckpt",
                resume=True, progress=False)


def test_cli_distill_on_transfer_and_on_data(setup, tmp_path):
    data, release, _, folder = setup
    runner = CliRunner()
    r = runner.invoke(cli_main, ["distill", "--teacher", str(release.model_path), "--transfer", str(folder / "noise.h5"),
                                 "--student", "hinton-tiny", "-o", str(tmp_path / "s.onnx"), "--epochs", "2",
                                 "--eval", "digits", "-q", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "student" in r.output and (tmp_path / "s.onnx").is_file() and (tmp_path / "s.json").is_file()
    r = runner.invoke(cli_main, ["distill", "--teacher", str(release.model_path), "--data", "digits",
                                 "--student", "hinton-tiny", "-o", str(tmp_path / "d.onnx"), "--epochs", "1", "-q",
                                 "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["source"]["kind"] == "data"
    r = runner.invoke(cli_main, ["distill", "--teacher", str(release.model_path), "--student", "hinton-tiny",
                                 "-o", str(tmp_path / "x.onnx")])
    assert r.exit_code == 2 and "exactly one of" in r.output


def test_demo_runs_end_to_end_at_a_reduced_size(tmp_path):
    cfg = DemoConfig(data="digits", teacher_epochs=8, student_epochs=3, samples=200, steps=20, batch_size=100,
                     device="cpu", objectives=("all_layers", "spectral_all_layers"))
    result = run_demo(cfg, tmp_path / "demo", progress=False, log=lambda *_: None)
    methods = [r["method"] for r in result.rows]
    assert methods[0].startswith("teacher") and "KD on the real training data" in methods[1]
    assert [r["metadata"] for r in result.rows] == ["", "real data", "none", "sidecar", "sidecar"]
    assert any("noise" in m for m in methods) and any("spectral_all_layers" in m for m in methods)
    # 3 epochs of 200 inputs teach nothing to expect here (measured: every student row near 0.09); what must
    # hold is that demo.json records the very numbers the table shows
    written = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert [r["accuracy"] for r in written["rows"]] == [r["accuracy"] for r in result.rows]
    assert result.rows[0]["accuracy"] > 0.8
    assert (tmp_path / "demo" / "release" / "teacher.dfkd.h5").is_file()
    assert "| student trained on | metadata |" in result.table()
    # a second run into the same folder replaces it (the demo owns it), here through the CLI with --json
    r = CliRunner().invoke(cli_main, ["demo", "--data", "digits", "-o", str(tmp_path / "demo"), "--teacher-epochs", "8",
                                      "--student-epochs",
                                      "1", "--samples", "100", "--steps", "5", "--objectives", "all_layers", "--json",
                                      "-q", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)["rows"]  # progress went to stderr
    assert [row["method"].split(" (")[0] for row in rows[:2]] == ["teacher hinton-small", "KD on the real training data"]
    assert len(rows) == 4 and (tmp_path / "demo" / "release" / "README.md").is_file()
