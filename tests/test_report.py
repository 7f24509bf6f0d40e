"""benchmarks/report.py: every published table is what its results file renders, and a stale page is caught."""
from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import report  # noqa: E402
import tables  # noqa: E402

PROSE_PAGES = [ROOT / "README.md", ROOT / "docs" / "benchmarks.md", ROOT / "docs" / "tried.md"]


def test_committed_pages_are_what_the_results_files_render(capsys):
    assert report.main(["--check"]) == 0, capsys.readouterr().err


def test_a_changed_result_makes_the_check_fail(tmp_path, monkeypatch, capsys):
    results = tmp_path / "results"
    shutil.copytree(ROOT / "benchmarks" / "results", results)
    demo = json.loads((results / "demo-fashion.json").read_text())
    demo["runs"][0]["rows"][3]["accuracy"] = 0.123  # the dafl row of the demo table
    (results / "demo-fashion.json").write_text(json.dumps(demo))
    monkeypatch.setattr(report, "Results", lambda: tables.Results(results))
    assert report.main(["--check"]) == 1
    assert "README.md: differs from its results files" in capsys.readouterr().err
    page = report.render_page(ROOT / "README.md", (ROOT / "README.md").read_text(), tables.Results(results))
    assert "| 0.123 |" in page and "| 0.123 |" not in (ROOT / "README.md").read_text()


@pytest.mark.parametrize("text, message", [
    ("a\n<!-- generated: no-such-table -->\n<!-- end: no-such-table -->\n", "unknown region 'no-such-table'"),
    ("a\n<!-- generated: fuzz -->\nstale\n", "region 'fuzz' has no '<!-- end: fuzz -->'"),
])
def test_a_broken_region_is_refused_naming_the_page(text, message):
    with pytest.raises(SystemExit) as e:
        report.render_page(Path("page.md"), text, tables.Results())
    assert str(e.value).startswith("page.md: ") and message in str(e.value)


def test_prose_around_a_region_is_kept_and_the_region_refilled():
    text = "before\n<!-- generated: fuzz-rules -->\nold text\n<!-- end: fuzz-rules -->\nafter\n"
    page = report.render_page(Path("p.md"), text, tables.Results())
    assert page.startswith("before\n<!-- generated: fuzz-rules -->\nMost frequent rules")
    assert page.endswith("<!-- end: fuzz-rules -->\nafter\n") and "old text" not in page


def test_the_headline_table_holds_the_results_means():
    """Values, not labels: the old rows' means over seeds, recomputed here from results/online.json."""
    res = tables.Results()
    old = res["online"]["rows"]
    body = tables.claim_headline(res)
    for prefix, label in [("mnist|lenet|dfad", "MNIST, LeNet-5"), ("fashion-mnist|lenet|dfad", "Fashion-MNIST, LeNet-5")]:
        line = next(row for row in body.splitlines() if row.startswith(f"| {label}"))
        for variant in ("no", "yes"):
            acc = [r["accuracy"] for k, r in old.items() if k.startswith(f"{prefix}|{variant}|10|")]
            assert len(acc) == 3 and f"{np.mean(acc):.4f} ({min(acc):.4f}..{max(acc):.4f})" in line


def test_every_renderer_renders_a_table_or_sentence():
    res = tables.Results()
    for name, render in tables.RENDERERS.items():
        text = render(res)
        # a missing value formatted as float('nan') reads "nan"; the prose's "NaN" is a word
        assert text.strip() and not re.search(r"(?<![A-Za-z])(nan|inf)(?![A-Za-z])", text), name


def _prose(text: str) -> str:
    """The page less its generated regions, code blocks and code spans."""
    text = report.REGION.sub("", text)
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"\]\([^)]*\)", "]", text)  # link targets
    return re.sub(r"`[^`\n]*`", "", text)


@pytest.mark.parametrize("page", PROSE_PAGES, ids=lambda p: p.name)
def test_no_measured_number_is_typed_into_the_prose(page):
    """Measured values (decimals, percentages, seconds) appear only inside generated regions."""
    prose = _prose(page.read_text())
    typed = re.findall(r"\b\d+\.\d+\b(?!\.\d)|\b\d+(?:\.\d+)?\s?%|\b\d+(?:\.\d+)?\s?s\b(?! of)", prose)
    assert not typed, f"{page.name}: numbers typed by hand: {typed}"
