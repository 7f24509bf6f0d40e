"""The distillation loops' guards: a student that stops learning is reported while the run goes on (a learning one
never is), and DFAD is indifferent to the teacher's logit scale."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dfkd_meta.config import OnlineConfig
from dfkd_meta.distill import distill_online
from dfkd_meta.distill.monitor import StallMonitor
from dfkd_meta.models import build_model

from .conftest import digits_release


def _logits(classes: torch.Tensor, k: int = 10) -> torch.Tensor:
    return torch.nn.functional.one_hot(classes, k).float() * 5.0


def _feed(monitor: StallMonitor, iterations: int, agree_prob, loss_at, seed: int = 0) -> list[dict]:
    """Feed ``iterations`` batches of 32 with balanced teacher classes; the student agrees with probability
    ``agree_prob(i)`` and guesses uniformly otherwise."""
    g = torch.Generator().manual_seed(seed)
    raised = []
    for i in range(iterations):
        t = torch.randint(0, 10, (32,), generator=g)
        guess = torch.randint(0, 10, (32,), generator=g)
        s = torch.where(torch.rand(32, generator=g) < agree_prob(i), t, guess)
        alarm = monitor.update(_logits(s), _logits(t), loss_at(i), i + 1, float(i))
        if alarm is not None:
            raised.append(alarm)
    return raised


def test_a_student_at_chance_raises_one_alarm_after_warmup_and_patience():
    m = StallMonitor(10, window=20, warmup_windows=2, patience=3)
    raised = _feed(m, 400, lambda i: 0.0, lambda i: 1.0)
    assert [a["kind"] for a in raised] == ["chance"]  # once, however long it lasts
    # judged from window 3 on; the third bad window in a row is window 5, iteration 100
    assert raised[0]["iteration"] == 100
    assert raised[0]["agreement"] < 0.2 and "stopped learning at iteration 100" in raised[0]["message"]
    assert m.alarms == raised


def test_a_rising_loss_raises_the_rising_alarm():
    m = StallMonitor(10, window=20, warmup_windows=2, patience=3)
    raised = _feed(m, 400, lambda i: 0.9, lambda i: 1.0 if i < 100 else 3.0)  # agreement fine, loss tripled
    assert [a["kind"] for a in raised] == ["rising"]
    assert raised[0]["iteration"] == 160 and raised[0]["loss"] == pytest.approx(3.0)


def test_a_loss_low_only_in_the_warmup_is_not_a_rise():
    """An adversarial loss starts low, before the generator has learned to find disagreement, then settles higher:
    the lowest that counts is the lowest after the warm-up."""
    m = StallMonitor(10, window=20, warmup_windows=2, patience=3)
    assert _feed(m, 400, lambda i: 0.8, lambda i: 0.4 if i < 40 else 1.4) == []
    m = StallMonitor(10, window=20, warmup_windows=2, patience=3)  # the same rise after the warm-up is one
    assert [a["kind"] for a in _feed(m, 400, lambda i: 0.8, lambda i: 0.4 if i < 60 else 1.4)] == ["rising"]


@settings(max_examples=25, deadline=None)
@given(start=st.floats(0.3, 0.9), seed=st.integers(0, 1000))
def test_a_learning_student_never_raises_an_alarm(start, seed):
    """Agreement rising from ``start`` to 0.95, loss falling with noise: no alarm."""
    m = StallMonitor(10)
    rng = np.random.default_rng(seed)
    raised = _feed(m, 1000, lambda i: start + (0.95 - start) * i / 1000,
                   lambda i: float(2.0 * np.exp(-i / 300) + 0.1 + 0.05 * rng.random()), seed)
    assert raised == []


def test_one_bad_window_is_not_a_stall():
    m = StallMonitor(10, window=20, warmup_windows=2, patience=3)
    raised = _feed(m, 400, lambda i: 0.0 if 100 <= i < 140 else 0.9, lambda i: 1.0)  # two bad windows only
    assert raised == []


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return digits_release(tmp_path_factory.mktemp("monitor"), "hinton-small", 40, cov_rank=4, spectral_k=0)


def test_a_run_that_cannot_learn_is_reported_while_it_runs_and_can_stop(release):
    """A student with a learning rate of 1e-12 stays at chance: the run warns during the loop (the log line comes
    before the loop ends), records the alarm and, with stop_on_stall, ends there."""
    lines = []
    cfg = OnlineConfig(method="dafl", iterations=2000, batch_size=32, lr=1e-12, seed=0, options={"nz": 16},
                       checkpoint_every=1000, stop_on_stall=True)
    torch.manual_seed(0)
    r = distill_online(release.model_path, build_model("hinton-tiny", (1, 8, 8), 10), cfg, device="cpu",
                       progress=False, log=lines.append).report
    assert [a["kind"] for a in r["stalled"]][:1] == ["chance"] and r["stopped_on_stall"] is True
    stop = r["stalled"][0]["iteration"]
    assert r["iterations"] == stop < 2000  # stopped at the alarm, not at the iteration cap
    assert any(line.startswith("warning: dafl: the student has stopped learning") for line in lines)


def test_a_learning_run_records_no_alarm(release):
    cfg = OnlineConfig(method="dafl", iterations=400, batch_size=32, seed=0, options={"nz": 16}, checkpoint_every=400)
    torch.manual_seed(0)
    r = distill_online(release.model_path, build_model("hinton-tiny", (1, 8, 8), 10), cfg, device="cpu",
                       progress=False).report
    assert r["stalled"] == [] and r["stopped_on_stall"] is False and r["iterations"] == 400


def _scaled_teacher(src: Path, dst: Path, factor: float) -> Path:
    """The teacher of ``src`` with its logits multiplied by ``factor`` (same classifier, another logit scale)."""
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.load(str(src))
    out = m.graph.output[0].name
    last = next(n for n in m.graph.node if out in n.output)
    last.output[list(last.output).index(out)] = "unscaled_logits"
    m.graph.initializer.append(numpy_helper.from_array(np.array(factor, np.float32), "logit_factor"))
    m.graph.node.append(helper.make_node("Mul", ["unscaled_logits", "logit_factor"], [out]))
    onnx.save(m, str(dst))
    return dst


@pytest.mark.parametrize("factor", [5.0, 0.2])
def test_dfad_learns_the_same_student_whatever_the_teachers_logit_scale(release, tmp_path, factor):
    """DFAD measures its discrepancy in units of the teacher's logit spread: on a teacher whose logits are scaled by
    ``factor`` the student's network learns the same weights (to float rounding), and the student answers in the
    scaled teacher's units. Without the scale (scale_free=0) the two runs part ways."""
    scaled = _scaled_teacher(release.model_path, tmp_path / "scaled.onnx", factor)

    def run(teacher, scale_free=1):
        torch.manual_seed(0)
        cfg = OnlineConfig(method="dfad", iterations=30, batch_size=32, seed=0, checkpoint_every=30,
                           options={"nz": 16, "student_steps": 2, "scale_free": scale_free})
        return distill_online(teacher, build_model("hinton-tiny", (1, 8, 8), 10), cfg, device="cpu", progress=False)

    base, other = run(release.model_path), run(scaled)
    assert other.report["logit_scale"] == pytest.approx(factor * base.report["logit_scale"], rel=1e-4)
    for p, q in zip(base.student.net.parameters(), other.student.net.parameters()):
        torch.testing.assert_close(q, p, rtol=2e-3, atol=2e-4)
    x = torch.rand(16, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(other.student(x), factor * base.student(x), rtol=1e-2, atol=1e-2)
    plain, plain_scaled = run(release.model_path, 0), run(scaled, 0)
    assert plain.report["logit_scale"] == 1.0
    pairs = zip(plain.student.parameters(), plain_scaled.student.parameters())
    diff = max(float((p - q).detach().abs().max()) for p, q in pairs)
    assert diff > 1e-3


def test_offline_distillation_that_cannot_learn_is_reported_while_it_runs_and_can_stop(release):
    """The offline loop watches its batches as the online one does: a student at a learning rate of 1e-12 stays at
    chance, the warning comes during the run, and stop_on_stall ends it after the epoch of the alarm."""
    from dfkd_meta.config import DistillConfig
    from dfkd_meta.data import load_data
    from dfkd_meta.distill import distill

    lines = []
    cfg = DistillConfig(epochs=3, batch_size=8, lr=1e-12, stop_on_stall=True)  # 180 steps an epoch on digits
    torch.manual_seed(0)
    r = distill(release.model_path, build_model("hinton-tiny", (1, 8, 8), 10), load_data("digits"), cfg,
                device="cpu", progress=False, log=lines.append).report
    assert [a["kind"] for a in r["stalled"]][:1] == ["chance"] and r["stopped_on_stall"] is True
    alarm = r["stalled"][0]["iteration"]
    assert 350 <= alarm <= 360 and r["epochs_done"] == 2  # warm-up and patience: 7 windows of 50 steps, in epoch 2
    assert any(line.startswith("warning: distill: the student has stopped learning") for line in lines)


def test_stop_on_stall_goes_with_every_source_and_a_learning_offline_run_raises_nothing(release, tmp_path):
    from click.testing import CliRunner

    from cli.main import main as cli_main

    out = tmp_path / "s.onnx"
    r = CliRunner().invoke(cli_main, ["distill", "--teacher", str(release.model_path), "--data", "digits",
                                      "--student", "hinton-tiny", "--stop-on-stall", "--epochs", "4", "-q",
                                      "-o", str(out)])
    assert r.exit_code == 0 and "warning" not in r.output, r.output
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["stalled"] == [] and report["stopped_on_stall"] is False and report["epochs_done"] == 4


def test_the_logit_scale_probe_leaves_the_generator_as_initialised(release):
    """The probe runs the generator in train mode once; its BatchNorm running statistics must not keep that pass
    (they are what the generator uses in eval mode, for --save-transfer)."""
    from dfkd_meta.synthesis import get_method
    from dfkd_meta.synthesis.context import SynthesisContext

    ctx = SynthesisContext(release.model_path, None, torch.device("cpu"))
    method = get_method("dfad")(ctx, {"nz": 16}, torch.Generator().manual_seed(0))
    assert method.logit_scale > 0 and method.logit_scale != 1.0
    norms = [m for m in method.generator.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms
    for bn in norms:
        assert int(bn.num_batches_tracked) == 0
        torch.testing.assert_close(bn.running_mean, torch.zeros_like(bn.running_mean))
        torch.testing.assert_close(bn.running_var, torch.ones_like(bn.running_var))
