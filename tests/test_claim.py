"""The claim benchmark's protocol pieces, and docs/claim.md generated from its results files."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module(name: str):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_compared_rows_alternate_their_order_and_overruns_are_flagged():
    protocol = _module("protocol")
    assert protocol.order(["none", "sidecar"], 0) == ["none", "sidecar"]
    assert protocol.order(["none", "sidecar"], 1) == ["sidecar", "none"]
    assert protocol.order(["a", "b", "c"], 2) == ["a", "b", "c"]
    assert not protocol.overran(5.49, 5.0) and protocol.overran(5.51, 5.0)


def test_settings_split_into_loop_fields_and_method_options():
    claim = _module("claim")
    assert claim.parse_settings(["gaussian_mix=0.5", "feature=10", "lr=0.05"]) == {
        "gaussian_mix": 0.5, "lr": 0.05, "options": {"feature": 10.0}}
    assert claim.row_key("val", "t", "dfad", "sidecar", 3.0, 1, {}) == "val|t|dfad|sidecar|3|1|defaults"


def test_a_row_run_before_a_default_changed_is_outdated():
    """The rows record the student recipe and method settings they ran with; a change of a default since makes the
    row outdated (main runs it again), while a setting the row chose itself is not a change."""
    claim = _module("claim")
    from dfkd_meta.synthesis import METHODS
    cls = METHODS["fast"]
    row = {"settings": {"lr": None, "temperature": None, "loss": None, "options": {"feature": 5.0}},
           "student_recipe": dict(cls.student), "method_settings": {**cls.defaults, "feature": 5.0}}
    assert claim.outdated(row, "fast") is None
    old = {**row, "student_recipe": {**cls.student, "lr": 0.01}}
    assert claim.outdated(old, "fast") == f"student lr 0.01 -> {cls.student['lr']!r}"
    chosen = {**old, "settings": {**row["settings"], "lr": 0.01}}  # the row asked for 0.01: still what it says
    assert claim.outdated(chosen, "fast") is None
    moved = {**row, "method_settings": {**row["method_settings"], "steps": 3}}
    assert claim.outdated(moved, "fast") == f"steps 3 -> {cls.defaults['steps']!r}"


def test_readme_and_docs_are_generated_from_the_results_files():
    """docs/claim.md is what `report.py` writes from the committed results, byte for byte (the README's regions are
    checked by tests/test_report.py); every reported row read the test split and ran within 10 % of its budget or
    is marked for a rerun."""
    claim = _module("claim")
    test = json.loads((ROOT / "benchmarks" / "results" / "claim.json").read_text())
    val = json.loads((ROOT / "benchmarks" / "results" / "claim-val.json").read_text())
    assert claim.report(test, val) == (ROOT / "docs" / "claim.md").read_text(), "run: python benchmarks/report.py"
    for key, row in test["rows"].items():
        assert key.startswith("test|") and row["split"] == "test", key
        assert row["overran"] == (row["minutes"] > 1.1 * row["budget_minutes"]), key
        # a reported row measures today's defaults: one run before a default changed is superseded and run again
        assert claim.outdated(row, key.split("|")[2]) is None, key
    for key, row in val["rows"].items():
        assert key.startswith("val|") and row["split"] == "val", key
