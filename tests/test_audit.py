"""The leakage audit (dfkd_meta/audit.py): its figures by hand, and that it sees leakage where there is some."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from dfkd_meta.audit import advantage, auc, nearest_distances, psnr, ssim

from .conftest import digits_release


def test_psnr_and_ssim_by_hand():
    a = np.zeros((1, 8, 8))
    assert psnr(a, a + 0.1, 1.0) == pytest.approx(20.0)
    assert psnr(a, a + 0.1, 2.0) == pytest.approx(20.0 + 20 * math.log10(2))
    assert psnr(a, a, 1.0) == math.inf
    # constant images: the contrast-structure term is 1, the luminance term (2ab + C1) / (a^2 + b^2 + C1)
    c1 = (0.01 * 1.0) ** 2
    assert ssim(np.full((1, 16, 16), 0.2), np.full((1, 16, 16), 0.6), 1.0) == pytest.approx(
        (2 * 0.2 * 0.6 + c1) / (0.2 ** 2 + 0.6 ** 2 + c1))


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2 ** 31 - 1), st.floats(0.01, 0.5))
def test_ssim_is_one_for_an_image_with_itself_and_falls_with_noise(seed, noise):
    rng = np.random.default_rng(seed)
    x = rng.random((1, 12, 12))
    noisy = x + noise * rng.standard_normal(x.shape)
    assert ssim(x, x, 1.0) == pytest.approx(1.0)
    assert ssim(x, noisy, 1.0) == pytest.approx(ssim(noisy, x, 1.0))
    assert ssim(x, noisy, 1.0) < ssim(x, x + 0.5 * (noisy - x), 1.0) < 1.0


def test_auc_and_advantage_by_hand():
    assert auc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert auc(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == 0.0
    assert auc(np.array([1.0, 3.0]), np.array([2.0])) == 0.5
    assert auc(np.array([1.0]), np.array([1.0])) == 0.5  # a tie counts half
    assert advantage(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert advantage(np.array([1.0, 1.0]), np.array([1.0, 1.0])) == 0.0
    # threshold 2.5: TPR 2/3 (3, 4 of 1, 3, 4), FPR 0 (2): the best of every threshold
    assert advantage(np.array([1.0, 3.0, 4.0]), np.array([2.0])) == pytest.approx(2 / 3)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2 ** 31 - 1), st.integers(1, 40), st.integers(1, 30), st.integers(1, 9))
def test_nearest_distances_equal_brute_force(seed, n, m, d):
    rng = np.random.default_rng(seed)
    s, pool = rng.standard_normal((n, d)), rng.standard_normal((m, d))
    want = np.sqrt(((s[:, None] - pool[None]) ** 2).sum(-1)).min(1)
    np.testing.assert_allclose(nearest_distances(s, pool, chunk=7), want, rtol=1e-7, atol=1e-7)


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    """The digits teacher released with exact statistics, and with a small privacy budget."""
    root = tmp_path_factory.mktemp("audit")
    return (digits_release(root / "exact", spectral_k=0, min_class_count=0),
            digits_release(root / "private", spectral_k=0, min_class_count=0, dp_epsilon=0.5))


def test_an_exact_release_leaks_membership_and_class_means_and_a_private_one_much_less(releases):
    from dfkd_meta.audit import audit_release
    from dfkd_meta.data import load_data

    data = load_data("digits")
    exact, private = (audit_release(r.model_path, r.sidecar_path, data, members=300, samples=200)
                      for r in releases)
    # the first layer is dense over all 64 pixels: its exact class means pin the class-mean images down
    assert exact["class_means"]["best"] == "first_layer_mean"
    assert exact["class_means"]["psnr"] > 40 and exact["class_means"]["ssim"] > 0.99
    assert exact["membership"]["auc"] > 0.65 and exact["membership"]["advantage"] > 0.2  # about 0.70 and 0.32
    assert exact["membership"]["shadow_settings"]["dp_epsilon"] is None
    # noise calibrated to epsilon 0.5: the test is near a coin (its null spread at 300 + 300 is about 0.024)
    assert private["membership"]["shadow_settings"]["dp_epsilon"] == 0.5
    assert abs(private["membership"]["auc"] - 0.5) < 0.1
    assert private["class_means"]["psnr"] < exact["class_means"]["psnr"] - 10
    for report in (exact, private):
        nn = report["nearest_neighbours"]["first_layer_gaussian"]
        assert nn["samples"] == 200 and nn["pool"] == 300 and 0 <= nn["train_nearer_share"] <= 1
        assert nn["unseen_split"] == "test"  # digits holds no examples out of the train split
        assert len(report["class_means"]["candidates"]["first_layer_mean"]["psnr"]) == 10


def test_cli_audit_writes_its_report_and_refuses_what_cannot_run(releases, tmp_path):
    from cli.main import main

    out = tmp_path / "audit.json"
    folder = str(releases[0].sidecar_path.parent)
    r = CliRunner().invoke(main, ["audit", folder, "--data", "digits", "--members", "200", "--samples", "50", "-q",
                                  "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "membership" in r.output and "AUC" in r.output
    report = json.loads(out.read_text())
    assert report["membership"]["members"] == 200 and report["nearest_neighbours"]["first_layer_gaussian"]["samples"] == 50
    for extra, text in ((["--members", "5000"], "2 x 5000 train examples"),
                        (["--data", "bogus:x"], "bogus")):
        bad = tmp_path / "bad.json"
        args = ["audit", folder, "--data", "digits", "-q", "-o", str(bad), *extra]
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 2 and text in r.output and "Traceback" not in r.output, r.output
        assert not bad.exists()


def test_a_teacher_with_its_weights_in_an_external_data_file_is_audited(releases, tmp_path):
    """The dynamo exporter writes weights beside the graph (teacher.onnx.data): the audit copies and reads both."""
    import onnx

    from dfkd_meta.audit import audit_release
    from dfkd_meta.data import load_data
    from dfkd_meta.stats.export import export_release

    model = onnx.load(str(releases[0].model_path))
    path = tmp_path / "external" / "teacher.onnx"
    path.parent.mkdir()
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location="teacher.onnx.data", size_threshold=0)
    data = load_data("digits").with_validation(300)  # the release never sees the validation split
    release = export_release(path, data, tmp_path / "release", spectral_k=0, min_class_count=0, progress=False)
    assert (tmp_path / "release" / "teacher.onnx.data").is_file()
    report = audit_release(release.model_path, release.sidecar_path, data, members=200, samples=50)
    assert report["class_means"]["best"] == "first_layer_mean" and report["class_means"]["psnr"] > 40
    assert report["membership"]["members"] == 200
    nn = report["nearest_neighbours"]["first_layer_gaussian"]
    assert nn["unseen_split"] == "val" and nn["pool"] == 200
