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


def digits_release(folder: Path, arch: str = "hinton-small", epochs: int = 40, **export_kw):
    """Train ``arch`` on digits (seed 0), write it as ONNX (convention and dropout recorded), export its release."""
    import torch

    from dfkd_meta.data import load_data
    from dfkd_meta.models import build_model, hidden_dropout_keep_probs
    from dfkd_meta.onnx.torch_export import export_onnx
    from dfkd_meta.stats.export import export_release
    from dfkd_meta.train import train_teacher

    data = load_data("digits")
    torch.manual_seed(0)
    trained = train_teacher(build_model(arch, data.input_shape, 10), data, epochs=epochs, progress=False,
                            device="cpu")
    path = export_onnx(trained.model, data.input_shape, folder / f"{arch}.onnx", convention=trained.convention,
                       dropout_keep=hidden_dropout_keep_probs(trained.model))
    return export_release(path, data, folder / "release", progress=False, **export_kw)
