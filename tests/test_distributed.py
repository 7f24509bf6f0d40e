"""Several processes under torchrun (gloo, 2 CPU processes): each long command equals its one-process run.

Processes start in a temporary folder (never the caller's directory) with torch's launcher; one process per test
runs with one thread, as torchrun gives each of its processes, so floating-point results can be compared.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from dfkd_meta.config import DistillConfig
from dfkd_meta.data import load_data
from dfkd_meta.distill import distill
from dfkd_meta.models import build_model
from tests.conftest import ROOT, digits_teacher

WORKER = ROOT / "tests" / "dist_worker.py"


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT")}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def torchrun(args: list[str], cwd: Path, processes: int = 2, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
                           *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300, **kw)


def one_process(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dfkd_meta.cli", *args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=300)


def _ok(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == 0, done.stderr[-3000:]


def _arrays(path: Path) -> dict[str, np.ndarray]:
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


@pytest.fixture(scope="module")
def conv_teacher() -> Path:
    return digits_teacher("bn-cnn", 8)


def test_export_on_two_processes_equals_one(tmp_path, conv_teacher):
    """Counts exactly, every statistic within 1e-5 relative, the covariance (F F^T) too, the same model binding."""
    args = ["export", "--model", str(conv_teacher), "--data", "digits", "--cov-rank", "4", "--batch-size", "100",
            "--min-class-count", "0", "-q"]
    _ok(one_process([*args, "-o", "one"], tmp_path))
    two = torchrun(["-m", "dfkd_meta.cli", *args, "-o", "two"], tmp_path)
    _ok(two)
    assert two.stdout.count("wrote ") == 1, two.stdout  # the main process alone reports (and writes)
    a, b = _arrays(tmp_path / "one" / "bn-cnn.dfkd.h5"), _arrays(tmp_path / "two" / "bn-cnn.dfkd.h5")
    assert a.keys() == b.keys()
    checked = 0
    for name in a:
        if name.endswith(("count", "class_counts")):
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)
        elif name.endswith("cov_factors"):  # factors are defined up to a rotation: compare F F^T
            fa, fb = a[name].astype(np.float64), b[name].astype(np.float64)
            ca, cb = fa @ fa.transpose(0, 2, 1), fb @ fb.transpose(0, 2, 1)
            np.testing.assert_allclose(cb, ca, rtol=1e-5, atol=1e-5 * np.abs(ca).max(), err_msg=name)
        elif a[name].dtype.kind == "f":
            scale = max(float(np.abs(a[name]).max()), 1e-12)
            np.testing.assert_allclose(b[name], a[name], rtol=1e-5, atol=1e-6 * scale, err_msg=name)
        else:
            assert np.array_equal(a[name], b[name]), name
        checked += 1
    assert checked > 10 and any("channel" in n for n in a), sorted(a)
    assert _attrs(tmp_path / "one" / "bn-cnn.dfkd.h5") == _attrs(tmp_path / "two" / "bn-cnn.dfkd.h5")


def _attrs(path: Path) -> dict:
    """Every attribute of every group and dataset (the model binding, sample counts, the teacher check), but the
    time of writing."""
    out = {}
    with h5py.File(path, "r") as f:
        for name, obj in [("/", f), *_items(f)]:
            for k, v in obj.attrs.items():
                if k != "created_utc":
                    out[f"{name}@{k}"] = v.tolist() if isinstance(v, np.ndarray) else v
    return out


def _items(f: h5py.File) -> list:
    found = []
    f.visititems(lambda name, obj: found.append((name, obj)))
    return found


def _reconstruct(release: Path, out: str, steps: int = 4, extra=(), samples: int = 80) -> list[str]:
    return ["reconstruct", "--model", str(release / "teacher.onnx"), "--sidecar", str(release / "teacher.dfkd.h5"),
            "--samples", str(samples), "--batch-size", "16", "--steps", str(steps), "--seed", "3", "-o", out, "-q",
            "--device", "cpu", *extra]


RELEASE = ROOT / "fixtures" / "releases" / "digits-1.0.0"


def test_reconstruct_on_two_processes_writes_the_one_process_file(tmp_path):
    _ok(one_process(_reconstruct(RELEASE, "one.h5"), tmp_path))
    two = torchrun(["-m", "dfkd_meta.cli", *_reconstruct(RELEASE, "two.h5")], tmp_path)
    _ok(two)
    a, b = _arrays(tmp_path / "one.h5"), _arrays(tmp_path / "two.h5")
    assert len(a["classes"]) == len(b["classes"]) == 80
    np.testing.assert_array_equal(b["classes"], a["classes"])
    for name in ("x", "teacher_logits", "teacher_soft", "loss"):
        np.testing.assert_allclose(b[name], a[name], rtol=1e-6, atol=1e-6, err_msg=name)


def _ranks_of(launcher: subprocess.Popen) -> dict[int, int]:
    """{rank: pid} of the processes torchrun started (found by their environment)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text().split()
        except OSError:
            continue
        if b"TORCHELASTIC_RUN_ID=" + b"" in b"\0".join(env) and int(stat[3]) == launcher.pid:
            rank = next((int(v.split(b"=")[1]) for v in env if v.startswith(b"RANK=")), None)
            if rank is not None:
                found[rank] = int(entry.name)
    return found


@pytest.mark.slow  # ~25 s; the default run keeps the equality tests, this and the DDP kill test run before a release
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds torchrun's processes through /proc")
def test_a_killed_process_fails_the_run_without_output_and_resume_completes_it(tmp_path):
    """Rank 1 killed mid-run: the run fails, no transfer file appears (the partial one keeps finished batches), and
    --resume in one process (another number of processes) completes the one-process file."""
    args = _reconstruct(RELEASE, "t.h5", steps=600, samples=64)  # two rounds of ~1.5 s
    launcher = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                                 "-m", "dfkd_meta.cli", *args], cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    partial = tmp_path / "t.h5.partial"
    try:
        deadline, ranks = time.time() + 240, {}
        while time.time() < deadline and 1 not in ranks:
            ranks = _ranks_of(launcher)
            time.sleep(0.05)
        assert 1 in ranks, ranks
        while time.time() < deadline:  # wait for the first round of batches on disk, then kill rank 1 in the second
            if partial.exists():
                try:
                    with h5py.File(partial, "r", locking=False) as f:
                        if len(f["classes"]) >= 32:
                            break
                except (OSError, KeyError):
                    pass
            time.sleep(0.05)
        os.kill(ranks[1], signal.SIGKILL)
        _, err = launcher.communicate(timeout=120)
    finally:
        launcher.kill()
    assert launcher.returncode != 0
    assert not (tmp_path / "t.h5").exists()
    resumed = one_process([*args, "--resume"], tmp_path)
    _ok(resumed)
    assert "resumed after 2 batches" in resumed.stdout, resumed.stdout  # the first round was kept
    _ok(one_process(_reconstruct(RELEASE, "ref.h5", steps=600, samples=64), tmp_path))
    a, b = _arrays(tmp_path / "ref.h5"), _arrays(tmp_path / "t.h5")
    np.testing.assert_array_equal(b["classes"], a["classes"])
    np.testing.assert_allclose(b["x"], a["x"], rtol=1e-6, atol=1e-6)


def test_ddp_distillation_keeps_one_student_on_every_process(tmp_path):
    """Offline on real data: the student learns, and both processes end with the same parameters bit for bit."""
    teacher = digits_teacher()
    _ok(torchrun([str(WORKER), "offline", str(tmp_path), str(teacher)], tmp_path))
    r0, r1 = torch.load(tmp_path / "rank0.pt", weights_only=True), torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0.keys() == r1.keys() and r0
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["processes"] == 2
    assert report["agreement"] > 0.85, report["agreement"]  # it learned (chance: 0.1) ...
    # ... as much as in one process: the same global batch of 64 (32 per process), gradients averaged
    data = load_data("digits")
    torch.manual_seed(0)
    alone = distill(teacher, build_model("hinton-tiny", data.input_shape, 10), data,
                    DistillConfig(epochs=6, batch_size=64, lr=3e-3, seed=0), device="cpu", eval_data=data,
                    eval_split="train", progress=False)
    assert abs(report["agreement"] - alone.report["agreement"]) <= 0.02, (report["agreement"], alone.report["agreement"])
    assert (tmp_path / "student.ckpt").exists()  # written by the main process


def test_online_method_keeps_student_and_generator_equal_on_every_process(tmp_path):
    teacher = digits_teacher()
    release = tmp_path / "rel"
    from dfkd_meta.stats.export import export_release

    exported = export_release(teacher, load_data("digits"), release, progress=False)
    _ok(torchrun([str(WORKER), "online", str(tmp_path), str(exported.model_path), str(exported.sidecar_path)],
                 tmp_path))
    r0, r1 = torch.load(tmp_path / "rank0.pt", weights_only=True), torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert any(k.startswith("generator.") for k in r0)
    for k in r0:
        if k.endswith(("running_mean", "running_var", "num_batches_tracked")) and k.startswith("generator."):
            continue  # a generator's BatchNorm statistics follow each process's own batches (documented)
        assert torch.equal(r0[k], r1[k]), k
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["processes"] == 2 and report["batch_per_process"] == 16 and report["iterations"] == 12
    # both processes' teacher passes are counted
    assert report["teacher_forward_examples"] >= 2 * 12 * 16


def test_commands_that_run_in_one_process_refuse_torchrun(monkeypatch, tmp_path):
    from click.testing import CliRunner

    from cli.main import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    done = CliRunner().invoke(main, ["validate", str(RELEASE / "teacher.dfkd.h5")])
    assert done.exit_code == 2
    assert "runs in one process; start it without torchrun" in done.output and "Traceback" not in done.output
    # WORLD_SIZE without the rest of torchrun's variables: one line naming what is missing, nothing written
    for var in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    done = CliRunner().invoke(main, ["reconstruct", "--model", str(RELEASE / "teacher.onnx"), "--sidecar",
                                     str(RELEASE / "teacher.dfkd.h5"), "-o", str(tmp_path / "t.h5"), "-q"])
    assert done.exit_code == 1, done.output
    assert "RANK, MASTER_ADDR, MASTER_PORT are not set" in done.output
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds torchrun's processes through /proc")
def test_ddp_distill_killed_then_resumed_on_two_processes(tmp_path):
    """distill --data under torchrun, rank 1 killed after a checkpoint: no student is written; --resume on two
    processes continues from the main process's checkpoint and completes it."""
    args = ["-m", "dfkd_meta.cli", "distill", "--teacher", str(digits_teacher()), "--data", "digits", "--student",
            "hinton-tiny", "--epochs", "60", "--batch-size", "64", "-o", "s.onnx", "-q", "--device", "cpu", "--json"]
    launcher = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                                 *args], cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    try:
        deadline, ranks = time.time() + 240, {}
        while time.time() < deadline and 1 not in ranks:
            ranks = _ranks_of(launcher)
            time.sleep(0.05)
        while time.time() < deadline and not (tmp_path / "s.onnx.ckpt").exists():
            time.sleep(0.05)
        os.kill(ranks[1], signal.SIGKILL)
        launcher.communicate(timeout=120)
    finally:
        launcher.kill()
    assert launcher.returncode != 0
    assert not (tmp_path / "s.onnx").exists() and (tmp_path / "s.onnx.ckpt").exists()
    resumed = torchrun([*args, "--resume"], tmp_path)
    _ok(resumed)
    report = json.loads(resumed.stdout[resumed.stdout.index("{"):])
    assert report["processes"] == 2 and report["epochs_done"] == 60
    assert report["steps_this_run"] < 60 * 23  # it went on from the checkpoint
    assert report["agreement_on_training_inputs"] > 0.85
    assert (tmp_path / "s.onnx").exists()
