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
