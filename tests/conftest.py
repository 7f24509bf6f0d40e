"""Shared test fixtures: repository paths, the conformance corpus, optional real data."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "fixtures" / "conformance"
SHARED_DATA = ROOT.parent / "shared" / "data"


def corpus_expectations() -> dict[str, dict]:
    return json.loads((CORPUS / "expected.json").read_text())


@pytest.fixture
def corpus_copy(tmp_path: Path) -> Path:
    """A writable copy of the conformance corpus."""
    dst = tmp_path / "conformance"
    shutil.copytree(CORPUS, dst)
    return dst


def shared_dataset(name: str) -> Path:
    """../shared/data/<name>, or skip the test where it is absent (CI without the shared folder)."""
    path = SHARED_DATA / name
    if not (path / "SHA256SUMS").is_file():
        pytest.skip(f"real data set {name!r} not found at {path} (only present beside the project checkout)")
    return path


_TEACHERS: dict[tuple[str, int, str], Path] = {}


def digits_teacher(arch: str = "hinton-small", epochs: int = 40, exporter: str = "legacy") -> Path:
    """``arch`` trained on digits (seed 0) and written as ONNX (convention and dropout recorded).

    Trained once per test session for each (arch, epochs, exporter) and shared read-only: tests that
    change a model copy it first.
    """
    key = (arch, epochs, exporter)
    if key not in _TEACHERS:
        import tempfile

        import torch

        from dfkd_meta.data import load_data
        from dfkd_meta.models import build_model, hidden_dropout_keep_probs
        from dfkd_meta.onnx.torch_export import export_onnx
        from dfkd_meta.train import train_teacher

        data = load_data("digits")
        torch.manual_seed(0)
        trained = train_teacher(build_model(arch, data.input_shape, 10), data, epochs=epochs, progress=False,
                                device="cpu")
        folder = Path(tempfile.mkdtemp(prefix=f"dfkd-teacher-{arch}-{epochs}-{exporter}-"))
        _TEACHERS[key] = export_onnx(trained.model, data.input_shape, folder / f"{arch}.onnx", exporter=exporter,
                                     convention=trained.convention, dropout_keep=hidden_dropout_keep_probs(trained.model))
    return _TEACHERS[key]


def digits_release(folder: Path, arch: str = "hinton-small", epochs: int = 40, **export_kw):
    """The session's ``arch`` teacher (``digits_teacher``), copied into ``folder``, and its release there."""
    from dfkd_meta.data import load_data
    from dfkd_meta.stats.export import export_release

    src = digits_teacher(arch, epochs)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / src.name
    shutil.copyfile(src, path)
    return export_release(path, load_data("digits"), folder / "release", progress=False, **export_kw)


def recomputed_accuracy(result, data, model_shape=None) -> float:
    """The student's accuracy on ``data``'s evaluation split, computed here from its predictions (a check of the
    report's number that can fail, where a student trained a few steps has no accuracy to expect)."""
    import torch

    from dfkd_meta.convention import IDENTITY
    from dfkd_meta.data import Feed
    from dfkd_meta.distill.student import predict

    split = "test" if data.has_split("test") else "train"
    x, y = data.arrays(split, feed=Feed(result.convention or IDENTITY, model_shape))
    return float((predict(result.student, x, torch.device("cpu")) == y).mean())


def interrupt_online_run(monkeypatch, at: int, run) -> None:
    """Run ``run()`` (an online distillation with a checkpoint) until it has written the checkpoint of iteration
    ``at``, then stop it as a KeyboardInterrupt would; the checkpoint writer is restored afterwards."""
    import dfkd_meta.distill.online as online

    real_save = online._save

    def save_then_stop(path, run_, done, *args):
        real_save(path, run_, done, *args)
        if done == at:
            raise KeyboardInterrupt
    monkeypatch.setattr(online, "_save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run()
    monkeypatch.setattr(online, "_save", real_save)
