"""The demo: the embedded Fashion-MNIST release, its test slice, its rows, and the table's verdict."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli.main import main as cli_main
from dfkd_meta import assets, validate_release
from dfkd_meta.config import ReconstructConfig
from dfkd_meta.data import load_data
from dfkd_meta.demo import FASHION_ROWS, Consumer, DemoConfig, DemoResult, OfflineRow, OnlineRow, run_demo
from dfkd_meta.errors import UsageError
from dfkd_meta.fileio import sha256_file
from dfkd_meta.onnx.graph import OnnxModule, load_onnx
from dfkd_meta.reconstruct.objectives import OBJECTIVES
from dfkd_meta.reconstruct.synthesize import reconstruct
from dfkd_meta.sidecar import read_sidecar
from dfkd_meta.sidecar.card import read_card
from dfkd_meta.transfer import read_transfer

from .conftest import ROOT


def test_the_embedded_release_validates_as_a_folder_and_its_card_names_its_files():
    report = validate_release(assets.FASHION_RELEASE)
    assert report.valid, report.summary()
    assert not [f for f in report.findings if f.severity in ("error", "warning")], report.summary()
    meta = read_card(assets.FASHION_RELEASE / "README.md")[0]["dfkd_meta"]
    assert meta["model_sha256"] == sha256_file(assets.FASHION_TEACHER)
    assert meta["sidecar_sha256"] == sha256_file(assets.FASHION_SIDECAR)
    assert meta["data"] == "fashion-mnist" and meta["data_license"] == "MIT"
    licence = (assets.FASHION_DEMO / "LICENSE").read_text()
    assert "MIT" in licence and "Zalando" in licence
    size = sum(p.stat().st_size for p in assets.FASHION_DEMO.rglob("*") if p.is_file())
    assert size < 6e6, f"the shipped demo grew to {size / 1e6:.1f} MB"


def test_the_test_slice_is_held_out_balanced_and_in_the_teachers_input_shape():
    data = load_data("fashion-demo")
    x, y = data.raw["test"]
    assert not data.has_split("train") and data.input_shape == (1, 32, 32) and x.dtype == np.uint8
    assert np.bincount(y).tolist() == [200] * 10
    assert x[:, :, :2].max() == 0 and x[:, :, :, -2:].max() == 0  # padded 28 -> 32 with black, as in training
    sc = read_sidecar(assets.FASHION_SIDECAR, assets.FASHION_TEACHER)
    assert tuple(sc.model.input_shape[1:]) == data.input_shape
    with np.load(assets.FASHION_SLICE, allow_pickle=False) as f:
        idx = f["test_indices"]
    assert len(np.unique(idx)) == 2000 and idx.max() < 10_000  # indices into the 10,000-image test split
    with pytest.raises(UsageError, match="no 'train' split"):
        data.arrays("train", feed=lambda a: a)


def test_the_build_script_draws_a_sorted_balanced_slice():
    sys.path.insert(0, str(ROOT / "fixtures"))
    try:
        from make_fashion_demo import test_slice
    finally:
        sys.path.pop(0)
    y = np.random.default_rng(1).integers(0, 10, 5000)
    idx = test_slice(y, 50, seed=3)
    assert np.all(np.diff(idx) > 0) and np.bincount(y[idx]).tolist() == [50] * 10
    assert np.array_equal(idx, test_slice(y, 50, seed=3)) and not np.array_equal(idx, test_slice(y, 50, seed=4))


def test_first_layer_gaussian_draws_inputs_whose_first_layer_has_the_recorded_class_means(tmp_path):
    assert OBJECTIVES["first_layer_gaussian"].uses_sidecar and not OBJECTIVES["noise"].uses_sidecar
    assert not OBJECTIVES["zskd"].uses_sidecar
    rc = reconstruct(assets.FASHION_TEACHER, assets.FASHION_SIDECAR, tmp_path / "t.h5",
                     ReconstructConfig(objective="first_layer_gaussian", samples=1000, steps=50, batch_size=500),
                     device="cpu", progress=False)
    assert rc.summary["teacher_forward_examples"] == 1000  # no optimisation: one labelling pass, whatever --steps says
    ts = read_transfer(rc.path)
    sc = read_sidecar(assets.FASHION_SIDECAR, assets.FASHION_TEACHER)
    first = sc.layers_in_order()[0]
    module = OnnxModule(load_onnx(assets.FASHION_TEACHER)).eval()
    with torch.no_grad():
        h = module.run(torch.from_numpy(ts.model_inputs()), [first.tensor_name])[first.tensor_name].numpy()
    h = h.reshape(len(h), -1)
    for c in (0, 5):
        got = h[ts.classes == c].mean(0)
        want = first.mean[c].reshape(-1)
        # clamping to the input domain moves the draws a little: compare the class mean map as a whole
        assert np.corrcoef(got, want)[0, 1] > 0.9
    # the teacher mostly agrees that the draws belong to the class they were drawn for
    assert rc.summary["teacher_agreement"] > 0.5


def test_with_the_sidecar_a_tiny_budget_already_beats_random_inputs(tmp_path):
    consumer = Consumer(assets.FASHION_TEACHER, assets.FASHION_SIDECAR, "lenet5-half", load_data("fashion-demo"),
                        tmp_path, seed=0, device="cpu", progress=False)
    noise = OfflineRow("noise", samples=3000, steps=0, epochs=4).run(consumer)
    gaussian = OfflineRow("first_layer_gaussian", samples=3000, steps=0, epochs=4).run(consumer)
    assert noise["metadata"] == "none" and gaussian["metadata"] == "sidecar"
    assert 0.85 < gaussian["teacher_accuracy"] < 0.92  # the release's teacher on the held-out slice
    # measured 0.40-0.48 against 0.10 over seeds 0-2
    assert gaussian["accuracy"] > noise["accuracy"] + 0.25, (gaussian, noise)
    assert noise["teacher_examples"] == gaussian["teacher_examples"] == 6000  # labelled at reconstruction and distillation
    assert "--objective first_layer_gaussian" in gaussian["command"]


def test_the_fashion_rows_pair_each_metadata_free_baseline_with_a_sidecar_method():
    online = [r for r in FASHION_ROWS if isinstance(r, OnlineRow)]
    assert {(r.method, r.sidecar) for r in online} == {("dafl", False), ("dafl", True)}
    assert len({r.iterations for r in online}) == 1  # the same method, the same iterations, with and without
    offline = {r.objective: r for r in FASHION_ROWS if isinstance(r, OfflineRow)}
    assert {"noise", "zskd", "first_layer_gaussian"} <= set(offline)
    assert (offline["noise"].samples, offline["noise"].epochs) == (offline["first_layer_gaussian"].samples,
                                                                   offline["first_layer_gaussian"].epochs)
    assert DemoConfig().rows() == FASHION_ROWS and DemoConfig().student == "lenet5-half"


def test_the_verdict_compares_the_best_row_of_each_side():
    result = DemoResult(rows=[
        {"method": "teacher", "metadata": "", "accuracy": 0.9},
        {"method": "a", "metadata": "none", "accuracy": 0.4}, {"method": "b", "metadata": "none", "accuracy": 0.5},
        {"method": "c", "metadata": "sidecar", "accuracy": 0.7}, {"method": "d", "metadata": "sidecar", "accuracy": 0.6},
    ])
    assert result.verdict().endswith("difference +0.200") and "0.700 (c)" in result.verdict()
    assert DemoResult(rows=[{"method": "a", "metadata": "none", "accuracy": 0.4}]).verdict() is None
    assert result.table().count("\n") == 6


def test_the_fashion_demo_refuses_whole_pipeline_settings_in_one_line():
    r = CliRunner().invoke(cli_main, ["demo", "--teacher-epochs", "3", "--objectives", "zskd"])
    assert r.exit_code == 2
    assert "--teacher-epochs, --objectives" in r.output and "--data" in r.output and "Traceback" not in r.output


def _demo_seeds():
    import importlib.util

    spec = importlib.util.spec_from_file_location("demo_seeds", ROOT / "benchmarks" / "demo_seeds.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_table_is_the_demos_own_output():
    """The README's demo table is a real run's output (results/demo-fashion.json), byte for byte, value by value."""
    import re

    demo_seeds = _demo_seeds()
    results = json.loads((ROOT / "benchmarks" / "results" / "demo-fashion.json").read_text())
    region = re.search(r"<!-- generated: demo-table -->\n(.*?)\n<!-- end: demo-table -->",
                       (ROOT / "README.md").read_text(), re.S)
    assert region and region.group(1) == demo_seeds.readme_block(results), "run: python benchmarks/report.py"
    cells = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in region.group(1).splitlines()
             if line.startswith("| ") and not line.startswith("| ---")}
    for row in results["runs"][0]["rows"]:
        assert float(cells[row["method"]][2]) == pytest.approx(row["accuracy"], abs=5e-4), row["method"]
        if row.get("seconds") is not None:
            assert float(cells[row["method"]][4]) == pytest.approx(row["seconds"], abs=0.05), row["method"]
    assert results["worst_seed_margin"] > 0, "the best sidecar row no longer beats the best metadata-free row on every seed"
    assert [t["method"] for t in results["table"]][1:] == [row.label for row in FASHION_ROWS]
    assert Path(results["runs"][0]["rows"][1]["command"].split()[0]).name == "dfkd-meta"


@pytest.mark.parametrize("row", [OfflineRow("first_layer_gaussian", samples=600, steps=0, epochs=1),
                                 OnlineRow("dafl", sidecar=True, iterations=3)], ids=["offline", "online"])
def test_a_rows_recorded_command_reproduces_its_student(tmp_path, row):
    import shutil
    import subprocess

    if shutil.which("dfkd-meta") is None:
        pytest.skip("the dfkd-meta console script is not installed (pip install -e .)")
    consumer = Consumer(assets.FASHION_TEACHER, assets.FASHION_SIDECAR, "lenet5-half", load_data("fashion-demo"),
                        tmp_path, seed=3, device="cpu", progress=False)
    result = row.run(consumer)
    work = tmp_path / "by-hand"
    work.mkdir()
    done = subprocess.run(result["command"] + " -q --device cpu", shell=True, cwd=work, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    report = json.loads((work / "student.json").read_text())
    assert report["student_accuracy"] == pytest.approx(result["accuracy"], abs=1e-9), (report, result)


@pytest.mark.slow
def test_the_demo_run_today_reproduces_the_committed_table(tmp_path):
    """Seed 0 of the shipped demo, run now: every row within its committed seeds' band (mean +- their spread + 0.03).

    The same seed is not the same student on another CPU (oneDNN's kernels differ; a 95-iteration DAFL run on
    two machines gave 0.4985 and 0.5695), so a row is held to the spread its seeds showed, not to one number.
    """
    results = json.loads((ROOT / "benchmarks" / "results" / "demo-fashion.json").read_text())
    band = {t["method"]: (t["mean"], t["spread"] + 0.03) for t in results["table"]}
    result = run_demo(DemoConfig.for_data("fashion", seed=results["runs"][0]["seed"]), tmp_path, progress=False,
                      log=lambda *_: None)
    for row in result.rows:
        mean, width = band[row["method"]]
        assert abs(row["accuracy"] - mean) <= width, (row["method"], row["accuracy"], mean, width)
