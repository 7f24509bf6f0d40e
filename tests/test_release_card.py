"""The release folder's model card (SPEC §13): written by export, read as hostile text by validate."""
from __future__ import annotations

import json
import os
import shutil

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli.main import main as cli_main
from dfkd_meta import validate_release
from dfkd_meta.data import load_data
from dfkd_meta.errors import UsageError
from dfkd_meta.fileio import sha256_file
from dfkd_meta.sidecar import read_sidecar
from dfkd_meta.sidecar.card import CARD_NAME, MAX_CARD_BYTES, CardError, read_card
from dfkd_meta.stats.export import export_release

from .conftest import digits_release


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return digits_release(tmp_path_factory.mktemp("card"))


@pytest.fixture
def folder(tmp_path, release):
    """A writable copy of the release folder."""
    dst = tmp_path / "release"
    shutil.copytree(release.model_path.parent, dst)
    return dst


def _rules(report) -> dict[str, str]:
    return {f.rule: f.severity for f in report.findings}


def test_export_writes_a_card_that_states_the_release(release):
    front, body = read_card(release.model_path.parent / CARD_NAME)
    sc = read_sidecar(release.sidecar_path, release.model_path)
    facts = front["dfkd_meta"]
    assert front["library_name"] == "onnx" and front["datasets"] == ["digits"]
    assert facts["model"] == release.model_path.name and facts["sidecar"] == release.sidecar_path.name
    assert facts["model_sha256"] == sha256_file(release.model_path) == sc.model.sha256
    assert facts["sidecar_sha256"] == sha256_file(release.sidecar_path)
    assert facts["classes"] == 10 and facts["input_shape"] == [1, 8, 8]
    assert facts["teacher_accuracy"] == pytest.approx(sc.dataset.teacher_check.accuracy, abs=1e-6)
    assert facts["privacy"].startswith("none") and facts["data_license"] == sc.dataset.license
    for needed in ("## What the release holds", "## The teacher", "## The data the statistics describe",
                   "Privacy:", "dfkd-meta validate RELEASE/", "dfkd-meta distill --teacher RELEASE/"):
        assert needed in body


def test_the_exported_release_folder_validates_whole(release):
    report = validate_release(release.model_path.parent)
    assert report.valid and not {"DM951", "DM952", "DM953", "DM954"} & set(_rules(report)), report.findings


def test_validate_release_dir_reports_a_missing_card_as_information(folder):
    (folder / CARD_NAME).unlink()
    r = CliRunner().invoke(cli_main, ["validate", str(folder), "--json"])
    assert r.exit_code == 0, r.output
    assert {f["rule"]: f["severity"] for f in json.loads(r.output)["findings"]} == {"DM951": "info"}


def test_a_card_that_contradicts_the_release_makes_it_invalid(folder):
    card = folder / CARD_NAME
    text = card.read_text()
    fake = "ab" * 32
    card.write_text(text.replace("model_sha256: ", f"model_sha256: {fake}\n  old_model_sha256: ", 1)
                    .replace("classes: 10", "classes: 9"))
    r = CliRunner().invoke(cli_main, ["validate", str(folder)])
    assert r.exit_code == 1
    assert "DM953" in r.output and "model_sha256" in r.output and "classes" in r.output and fake[:20] in r.output


def test_a_card_claiming_another_accuracy_is_caught_within_tolerance(folder):
    card = folder / CARD_NAME
    front, _ = read_card(card)
    acc = front["dfkd_meta"]["teacher_accuracy"]
    card.write_text(card.read_text().replace(f"teacher_accuracy: {acc}", f"teacher_accuracy: {acc + 3e-5:.6f}"))
    assert _rules(validate_release(folder)).get("DM953") is None  # rounding, not a different claim
    card.write_text(card.read_text().replace(f"teacher_accuracy: {acc + 3e-5:.6f}", "teacher_accuracy: 0.99"))
    assert _rules(validate_release(folder))["DM953"] == "error"


HOSTILE = {
    "alias bomb": "---\na: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\n"
                  "c: [*b, *b, *b, *b, *b, *b, *b, *b]\n---\n",
    "python tag": "---\ndfkd_meta: !!python/object/apply:os.system ['echo owned']\n---\n",
    "custom tag": "---\ndfkd_meta: !thing {}\n---\n",
    "no front matter": "# just a readme\n",
    "unclosed front matter": "---\ndfkd_meta: {}\n",
    "not yaml": "---\ndfkd_meta: [unclosed\n---\n",
    "a list": "---\n- dfkd_meta\n---\n",
    "no block": "---\nlibrary_name: onnx\n---\n",
    "block not a mapping": "---\ndfkd_meta: 3\n---\n",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_cards_are_a_warning_never_an_error_of_the_reader(folder, name):
    (folder / CARD_NAME).write_text(HOSTILE[name])
    report = validate_release(folder)
    dm952 = [f for f in report.findings if f.rule == "DM952"]
    assert report.valid and len(dm952) == 1 and dm952[0].severity == "warning", report.findings


def test_oversized_non_text_and_linked_cards_are_refused_before_parsing(folder, tmp_path):
    card = folder / CARD_NAME
    card.write_bytes(b"---\n" + b"x" * MAX_CARD_BYTES)
    with pytest.raises(CardError, match="bytes, at most"):
        read_card(card)
    card.write_bytes(b"---\ndfkd_meta: {}\n---\n\xff\xfe")
    with pytest.raises(CardError, match="not UTF-8"):
        read_card(card)
    card.unlink()
    (tmp_path / "elsewhere.md").write_text("---\ndfkd_meta: {}\n---\n")
    os.symlink(tmp_path / "elsewhere.md", card)
    with pytest.raises(CardError, match="not a regular file"):
        read_card(card)
    if hasattr(os, "mkfifo"):
        card.unlink()
        os.mkfifo(card)  # reading a pipe would block forever
        with pytest.raises(CardError, match="not a regular file"):
            read_card(card)
    assert "DM952" in _rules(validate_release(folder))


@given(st.binary(max_size=600) | st.text(max_size=400).map(lambda t: ("---\n" + t + "\n---\n").encode()))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_reading_any_bytes_either_parses_or_raises_card_error(tmp_path, data):
    path = tmp_path / "card.md"
    path.write_bytes(data)
    try:
        front, body = read_card(path)
    except CardError as exc:
        assert str(exc)
    else:
        assert isinstance(front, dict) and isinstance(body, str)


def test_stray_files_in_a_release_folder_are_information(folder):
    (folder / "notes.txt").write_text("x")
    rules = _rules(validate_release(folder))
    assert rules.get("DM954") == "info"


def test_export_refuses_a_folder_with_a_readme_unless_told_to_overwrite(tmp_path, release):
    out = tmp_path / "mine"
    out.mkdir()
    (out / CARD_NAME).write_text("my project\n")
    with pytest.raises(UsageError, match=r"already holds a model card \(README.md\); pass overwrite"):
        export_release(release.model_path, load_data("digits"), out, spectral_k=0, progress=False)
    assert (out / CARD_NAME).read_text() == "my project\n" and len(list(out.iterdir())) == 1
    export_release(release.model_path, load_data("digits"), out, spectral_k=0, progress=False, overwrite=True)
    assert read_card(out / CARD_NAME)[0]["dfkd_meta"]["model"] == release.model_path.name
