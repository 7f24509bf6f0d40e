"""The validator over the conformance corpus, in-process and isolated, and its failure modes."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from cli.main import main as cli_main
from dfkd_meta.errors import UsageError
from dfkd_meta.sidecar import scan as scan_mod
from dfkd_meta.sidecar import validator as validate_mod
from dfkd_meta.sidecar import values as values_mod
from dfkd_meta.sidecar.validator import Report, validate, validate_in_process

from .conftest import CORPUS, corpus_expectations

EXPECTED = corpus_expectations()


def _run(name: str, isolate: bool) -> Report:
    e = EXPECTED[name]
    model = CORPUS / e["model"] if e["model"] else None
    return validate(CORPUS / name, model, isolate=isolate)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_file_gives_exactly_its_rules(name):
    report = _run(name, isolate=False)
    assert sorted(report.rules) == EXPECTED[name]["rules"], [f.format() for f in report.findings]
    assert report.valid == name.startswith("valid/")
    for f in report.findings:
        assert f.path.startswith("/") and f.section and f.fix and f.message


def test_corpus_isolated_matches_in_process():
    # The CLI path (child process, plugins disabled) must agree with the in-process checker.
    # Each file is its own child process: four at a time (they mostly wait on interpreter start-up).
    from concurrent.futures import ThreadPoolExecutor

    names = sorted(EXPECTED)
    with ThreadPoolExecutor(4) as pool:
        reports = list(pool.map(lambda n: _run(n, isolate=True), names))
    for name, report in zip(names, reports):
        assert sorted(report.rules) == EXPECTED[name]["rules"], name


def test_findings_cite_the_schema_section():
    report = _run("invalid/nan_mean.dfkd.h5", isolate=False)
    (f,) = report.findings
    assert (f.rule, f.section, f.severity, f.path) == ("DM611", "8", "error", "/layers/fc1/mean")
    assert "1 non-finite" in f.message and "[2, 5]" in f.message


def test_report_json_round_trip():
    report = _run("invalid/negative_std.dfkd.h5", isolate=False)
    again = Report.from_dict(json.loads(json.dumps(report.to_dict())))
    assert again.findings == report.findings and again.valid is False


def test_missing_paths_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        validate(tmp_path / "nope.dfkd.h5")
    with pytest.raises(UsageError, match="not a regular file"):
        validate(tmp_path)
    with pytest.raises(UsageError, match="model does not exist"):
        validate(CORPUS / "valid/mlp_full.dfkd.h5", tmp_path / "nope.onnx")


def test_child_crash_is_reported_as_dm103(monkeypatch):
    crash = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"]
    monkeypatch.setattr(validate_mod, "worker_command", lambda *a: crash)
    report = validate(CORPUS / "valid/mlp_full.dfkd.h5")
    assert [f.rule for f in report.findings] == ["DM103"] and not report.valid
    assert "SIGSEGV" in report.findings[0].message


def test_child_past_its_wall_clock_limit_is_dm116_not_a_verdict_on_the_file(monkeypatch):
    hang = [sys.executable, "-c", "import time; time.sleep(60)"]
    monkeypatch.setattr(validate_mod, "worker_command", lambda *a: hang)
    t0 = time.monotonic()
    report = validate(CORPUS / "valid/mlp_full.dfkd.h5", timeout=1.0)
    assert time.monotonic() - t0 < 20
    assert [f.rule for f in report.findings] == ["DM116"] and "within 1 s" in report.findings[0].message
    assert "hostile" not in report.findings[0].fix and not report.valid


def test_internal_failure_is_a_finding_not_a_traceback(monkeypatch):
    def boom(state):
        raise ZeroDivisionError("simulated bug")
    monkeypatch.setattr(scan_mod, "scan", boom)
    report = validate_in_process(CORPUS / "valid/mlp_full.dfkd.h5")
    assert [f.rule for f in report.findings] == ["DM199"]


def test_plugins_are_disabled_while_reading():
    validate_in_process(CORPUS / "valid/mlp_full.dfkd.h5")
    assert h5py.h5pl.size() == 0


def test_external_link_target_is_never_opened(tmp_path):
    # The link points at a file that would be valid HDF5; the validator must not resolve it.
    target = tmp_path / "target.h5"
    with h5py.File(target, "w") as f:
        f["x"] = np.arange(10)
    side = tmp_path / "s.dfkd.h5"
    shutil.copy(CORPUS / "valid/mlp_minimal.dfkd.h5", side)
    with h5py.File(side, "r+") as f:
        del f["/dataset/class_counts"]
        f["/dataset/class_counts"] = h5py.ExternalLink(str(target), "/x")
    target.unlink()  # if the validator tried to follow it, libhdf5 would raise: the rules would differ
    assert sorted(validate_in_process(side).rules) == ["DM104"]


def test_large_valid_file_is_read_in_bounded_blocks(tmp_path, monkeypatch):
    # A 48 MB dataset is checked block by block: with 1 MiB blocks every row block is visited.
    side = tmp_path / "big.dfkd.h5"
    shutil.copy(CORPUS / "valid/mlp_minimal.dfkd.h5", side)
    big = np.zeros((10, 16, 75_000), np.float32)
    with h5py.File(side, "r+") as f:
        f.create_dataset("/layers/fc1/cov_factors", data=big)
    seen = []
    real = values_mod.blocks

    def spy(ds, prefix=(), budget=None):
        for origin, block in real(ds, prefix, budget=budget):
            if len(origin) == len(prefix) + 1:  # count each block once, not again in the recursion
                seen.append(block.nbytes)
            yield origin, block
    monkeypatch.setattr(values_mod, "BLOCK_BYTES", 1 << 20)
    monkeypatch.setattr(values_mod, "blocks", spy)
    report = validate_in_process(side)
    assert report.valid, [f.format() for f in report.findings]
    assert sum(seen) >= big.nbytes  # every value was read ...
    assert max(seen) <= 1 << 20  # ... in blocks within the budget, though one class's row is 4.8 MB
    big[3, 2, 7] = np.nan
    with h5py.File(side, "r+") as f:
        f["/layers/fc1/cov_factors"][...] = big
    report = validate_in_process(side)
    assert sorted(report.rules) == ["DM611"] and "first at [3, 2, 7]" in report.findings[0].message


# --------------------------------------------------------------------------- CLI

def test_cli_exit_codes_and_json():
    runner = CliRunner()
    ok = runner.invoke(cli_main, ["validate", str(CORPUS / "valid/mlp_full.dfkd.h5"), "--model",
                                  str(CORPUS / "models/mlp.onnx")])
    assert ok.exit_code == 0 and "valid (0 errors" in ok.output
    bad = runner.invoke(cli_main, ["validate", str(CORPUS / "invalid/nan_mean.dfkd.h5"), "--json"])
    assert bad.exit_code == 1
    doc = json.loads(bad.output)
    assert doc["valid"] is False and doc["findings"][0]["rule"] == "DM611"
    missing = runner.invoke(cli_main, ["validate", "/no/such/file.dfkd.h5"])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    usage = runner.invoke(cli_main, ["validate"])
    assert usage.exit_code == 2


def test_installed_console_script_prints_one_line_errors():
    exe = shutil.which("dfkd-meta")
    if exe is None:
        pytest.skip("dfkd-meta console script not installed (pip install -e .)")
    proc = subprocess.run([exe, "validate", "/no/such/file.dfkd.h5"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    proc = subprocess.run([exe, "validate", str(CORPUS / "invalid/truncated.dfkd.h5")], capture_output=True, text=True)
    assert proc.returncode == 1 and "DM102" in proc.stdout and "Traceback" not in proc.stdout + proc.stderr
