"""Nothing is left at an output path unless the command succeeded: concurrent runs, interrupted runs,
non-finite results, existing releases, finished checkpoints, and files that are not models."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import dfkd_meta.stats.export as export_mod
from cli.main import main as cli_main
from dfkd_meta.config import ReconstructConfig
from dfkd_meta.data import load_data
from dfkd_meta.errors import DfkdError, UsageError
from dfkd_meta.fileio import output_lock
from dfkd_meta.reconstruct.synthesize import reconstruct
from dfkd_meta.stats.export import export_release
from dfkd_meta.transfer import TransferWriter

from .conftest import digits_release, digits_teacher


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return digits_release(tmp_path_factory.mktemp("rel"))


def _writer(path: Path, resume: bool = False) -> TransferWriter:
    return TransferWriter(path, input_shape=(4,), num_classes=3, temperature=2.0, provenance={"objective": "t"},
                          input_domain={"norm_mean": [0.0], "norm_std": [1.0]}, resume=resume)


def _batch(n: int = 6, value: float = 0.5) -> dict:
    logits = np.full((n, 3), value, np.float32)
    return {"x": np.full((n, 4), value, np.float32), "classes": np.arange(n) % 3, "teacher_logits": logits,
            "teacher_soft": np.full((n, 3), 1 / 3, np.float32), "loss": np.zeros(n, np.float32)}


def test_a_second_run_on_the_same_output_is_refused_while_the_first_holds_it(tmp_path):
    out = tmp_path / "t.h5"
    with output_lock(out):
        assert (tmp_path / "t.h5.lock").is_file()
        with pytest.raises(UsageError, match=r"another run is writing it \(process \d+"):
            with output_lock(out):
                pass
    assert not (tmp_path / "t.h5.lock").exists()
    with output_lock(out):  # free again
        pass


def test_the_lock_holds_across_processes(tmp_path, release):
    out = tmp_path / "t.h5"
    with output_lock(out):
        r = subprocess.run([sys.executable, "-m", "cli.main", "reconstruct", "--model", str(release.model_path),
                            "--sidecar", str(release.sidecar_path), "--samples", "10", "--steps", "1", "-o", str(out)],
                           capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=300)
    assert r.returncode == 2 and "another run is writing it" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


def test_a_transfer_set_with_non_finite_values_never_reaches_the_output(tmp_path):
    w = _writer(tmp_path / "t.h5")
    w.append(**_batch())
    w.append(**_batch(value=np.nan))
    with pytest.raises(DfkdError, match=r"not a usable transfer set: DT205 /x: non-finite values"):
        w.finish()
    assert not (tmp_path / "t.h5").exists() and (tmp_path / "t.h5.partial").exists()


def test_reconstruct_stops_at_a_non_finite_batch_and_names_the_sidecar(tmp_path, release, monkeypatch):
    import dfkd_meta.reconstruct.synthesize as synth

    real = synth.torch.softmax
    monkeypatch.setattr(synth.torch, "softmax", lambda x, dim: real(x, dim) * float("nan"))
    out = tmp_path / "t.h5"
    with pytest.raises(DfkdError, match=rf"{release.sidecar_path.name}: batch 0 gave non-finite teacher_soft"):
        reconstruct(release.model_path, release.sidecar_path, out, ReconstructConfig(samples=20, steps=0),
                    device="cpu", progress=False)
    assert not out.exists() and not (tmp_path / "t.h5.partial").exists()


@pytest.mark.parametrize("content", [b"", b"\x89HDF\r\n\x1a\n" + bytes(88)])
def test_resume_of_a_partial_without_finished_batches_starts_from_zero(tmp_path, content, capsys):
    (tmp_path / "t.h5.partial").write_bytes(content)  # a run killed before its first batch
    w = _writer(tmp_path / "t.h5", resume=True)
    assert w.done == 0 and "starting from zero" in capsys.readouterr().err
    w.append(**_batch())
    assert len(w.finish()) == 6 and w.path.is_file()


def test_a_writer_killed_before_its_first_batch_leaves_a_resumable_partial(tmp_path):
    w = _writer(tmp_path / "t.h5")
    w.f.id.close()  # as if killed: nothing but what was flushed at creation
    w2 = _writer(tmp_path / "t.h5", resume=True)
    assert w2.done == 0 and w2.restarted is not None


def test_export_refuses_an_existing_release_unless_told_to_overwrite(tmp_path, release):
    digits = load_data("digits")
    out = tmp_path / "rel"
    first = export_release(release.model_path, digits, out, spectral_k=0, progress=False)
    (out / "NOTES.txt").write_text("the publisher's own file")
    with pytest.raises(UsageError, match=r"already holds a release \(hinton-small.dfkd.h5\); pass overwrite"):
        export_release(release.model_path, digits, out, spectral_k=0, progress=False)
    again = export_release(release.model_path, digits, out, spectral_k=0, progress=False, overwrite=True, cov_rank=2)
    assert again.sidecar_path == first.sidecar_path and (out / "NOTES.txt").read_text() == "the publisher's own file"
    assert not list(tmp_path.glob(".rel.export-*")) and not (tmp_path / "rel.lock").exists()
    r = CliRunner().invoke(cli_main, ["export", "--model", str(release.model_path), "--data", "digits", "-o", str(out),
                                      "--spectral-k", "0"])
    assert r.exit_code != 0 and "--overwrite" in r.output


def test_a_failed_export_leaves_no_release_and_no_staging_folder(tmp_path, release, monkeypatch):
    def broken(*a, **k):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(export_mod, "write_sidecar", broken)
    with pytest.raises(OSError, match="simulated"):
        export_release(release.model_path, load_data("digits"), tmp_path / "new", spectral_k=0, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_export_into_a_folder_with_other_files_moves_the_sidecar_in_last(tmp_path, release, monkeypatch):
    moved = []
    real = export_mod.os.replace
    monkeypatch.setattr(export_mod.os, "replace", lambda a, b: (moved.append(Path(b).name), real(a, b)))
    out = tmp_path / "mine"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    r = export_release(release.model_path, load_data("digits"), out, spectral_k=0, progress=False)
    assert moved[-1] == r.sidecar_path.name and r.model_path.name in moved and (out / "keep.txt").exists()


def test_stale_staging_folders_of_killed_exports_are_removed(tmp_path, release):
    stale = tmp_path / ".rel.export-999999999-abcd"
    stale.mkdir()
    (stale / "teacher.onnx").write_bytes(b"half")
    export_release(release.model_path, load_data("digits"), tmp_path / "rel", spectral_k=0, progress=False)
    assert not stale.exists()


def test_a_successful_distill_removes_its_checkpoint_unless_asked_to_keep_it(tmp_path, release):
    base = ["distill", "--teacher", str(release.model_path), "--data", "digits", "--student", "hinton-tiny",
            "--epochs", "1", "-q"]
    r = CliRunner().invoke(cli_main, base + ["-o", str(tmp_path / "s.onnx")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "s.onnx").is_file() and not (tmp_path / "s.onnx.ckpt").exists()
    r = CliRunner().invoke(cli_main, base + ["-o", str(tmp_path / "k.onnx"), "--keep-checkpoint"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "k.onnx.ckpt").is_file() and not (tmp_path / "k.onnx.lock").exists()


def test_a_student_without_parameters_is_a_one_line_error(tmp_path, release, monkeypatch):
    mod = tmp_path / "frozen_student.py"
    mod.write_text("import torch\n\ndef make(shape, classes):\n    return torch.nn.Sequential(torch.nn.Flatten(), "
                   "torch.nn.Unflatten(1, (1, -1)), torch.nn.AdaptiveAvgPool1d(classes), torch.nn.Flatten())\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    r = CliRunner().invoke(cli_main, ["distill", "--teacher", str(release.model_path), "--data", "digits", "--student",
                                      "frozen_student:make", "--epochs", "1", "-q", "-o", str(tmp_path / "s.onnx")])
    assert r.exit_code == 2 and "no trainable parameters" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "s.onnx").exists()


@pytest.mark.parametrize("content", [b"", b"\x08\x07", b"junk that is not protobuf \xff\xfe"])
@pytest.mark.parametrize("command", [["inspect", "{m}"], ["reconstruct", "--model", "{m}", "--sidecar", "{s}", "-o",
                                                            "{o}"],
                                     ["distill", "--teacher", "{m}", "--data", "digits", "--student", "hinton-tiny",
                                      "-o", "{o}"],
                                     ["export", "--model", "{m}", "--data", "digits", "-o", "{o}"]])
def test_empty_or_unreadable_onnx_files_are_one_line_errors_in_every_command(tmp_path, release, content, command):
    model = tmp_path / "bad.onnx"
    model.write_bytes(content)
    out = tmp_path / "out"
    args = [a.format(m=model, s=release.sidecar_path, o=out) for a in command]
    r = CliRunner().invoke(cli_main, args)
    assert r.exit_code in (1, 2) and (r.exception is None or isinstance(r.exception, SystemExit)), r.output
    lines = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "bad.onnx" in lines[0] and "Traceback" not in r.output, r.output
    assert not out.exists()


def test_digits_teacher_still_loads(tmp_path):
    # guard for the empty-model check: a real exported model is a model
    from dfkd_meta.onnx.inspect import load_model_proto

    assert load_model_proto(digits_teacher()).graph.node
