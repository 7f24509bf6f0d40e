"""The lopes2017 preset: the paper's settings resolve as documented, its loss term by hand, its init and clipping."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli.main import main as cli_main
from dfkd_meta.config import RECONSTRUCT_PRESETS, ExportConfig, Priors, ReconstructConfig, reconstruct_preset
from dfkd_meta.errors import UsageError
from dfkd_meta.reconstruct.objectives import SpectralLayerPairs, lopes2017_sq_error
from dfkd_meta.reconstruct.synthesize import reconstruct
from dfkd_meta.transfer import read_transfer

from .conftest import digits_release


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    r = digits_release(tmp_path_factory.mktemp("lopes"), "hinton-small", 20, spectral_k=8, cov_rank=4)
    return r.model_path, r.sidecar_path


def test_the_preset_is_the_papers_code_on_mnist():
    cfg = reconstruct_preset("lopes2017")
    # irapha/replayed_distillation: 40 batches of 64 per class, 1,000 Adam steps at 0.07, N(0.15, 0.1)
    assert (cfg.samples, cfg.batch_size, cfg.steps, cfg.lr) == (40 * 64 * 10, 64, 1000, 0.07)
    assert (cfg.init, cfg.init_normal, cfg.loss_form, cfg.schedule, cfg.clip) == \
        ("normal", (0.15, 0.1), "lopes2017", "constant", False)
    assert cfg.priors == Priors()  # none of this project's priors: like compares with like
    assert cfg.spectral_targets == "coefficients"  # the paper's spectral statistics, not the layers'
    assert reconstruct_preset("lopes2017", samples=10, objective="top_layer").samples == 10
    with pytest.raises(UsageError, match="expected one of lopes2017"):
        reconstruct_preset("lopes2016")
    assert set(RECONSTRUCT_PRESETS) == {"lopes2017"}


def test_the_paper_term_by_hand():
    value, target = torch.tensor([[-1.0, 2.0]]), torch.tensor([[1.0, 1.0]])
    # rectified: [0, 2] against [1, 1] -> squared errors [1, 1], mean 1, over 2 units
    assert lopes2017_sq_error(value, target).item() == pytest.approx(0.5)
    # coefficients are not rectified: [4, 1] -> mean 2.5, over 2 units
    assert lopes2017_sq_error(value, target, rectify=False).item() == pytest.approx(1.25)
    # a dropout mask scores the kept units only: unit 0 -> 1, over 2 units
    assert lopes2017_sq_error(value, target, torch.tensor([[1.0, 0.0]])).item() == pytest.approx(0.5)


def test_normal_init_draws_raw_values_and_no_clip_keeps_them(release, tmp_path):
    cfg = ReconstructConfig(samples=400, steps=0, batch_size=200, init="normal", init_normal=(0.15, 0.1), clip=False,
                            store="raw")
    raw = read_transfer(reconstruct(*release, tmp_path / "a.h5", cfg, device="cpu", progress=False).path).x
    assert raw.mean() == pytest.approx(0.15, abs=0.01) and raw.std() == pytest.approx(0.1, abs=0.01)
    assert raw.min() < 0.0  # about 7% of N(0.15, 0.1) is negative: not clipped to the domain [0, 1]
    clipped = read_transfer(reconstruct(*release, tmp_path / "b.h5", ReconstructConfig(**{**vars(cfg), "clip": True}),
                                        device="cpu", progress=False).path).x
    assert clipped.min() >= -1e-6 and np.allclose(clipped, np.clip(raw, 0.0, 1.0), atol=1e-5)  # float32 round trip


@pytest.mark.parametrize("objective", ["top_layer", "all_layers", "spectral_all_layers", "spectral_layer_pairs"])
def test_each_paper_objective_lowers_the_paper_loss(release, tmp_path, objective):
    base = dict(objective=objective, samples=40, batch_size=40, loss_form="lopes2017", init="normal",
                schedule="constant", clip=False, lr=0.07)
    before = read_transfer(reconstruct(*release, tmp_path / "a.h5", ReconstructConfig(**base, steps=0),
                                       device="cpu", progress=False).path).loss.mean()
    after = read_transfer(reconstruct(*release, tmp_path / "b.h5", ReconstructConfig(**base, steps=60),
                                      device="cpu", progress=False).path).loss.mean()
    assert after < 0.7 * before, (before, after)


def test_the_cli_preset_yields_to_explicit_options(release, tmp_path):
    model, sidecar = release
    r = CliRunner().invoke(cli_main, ["reconstruct", "--model", str(model), "--sidecar", str(sidecar), "--preset",
                                      "lopes2017", "--samples", "20", "--steps", "3", "--tv", "0.5", "-o",
                                      str(tmp_path / "t.h5"), "--json", "-q", "--device", "cpu",
                                      "--objective", "spectral_layer_pairs", "--spectral-targets", "layers"])
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)["settings"]
    assert (s["samples"], s["steps"], s["lr"], s["batch_size"], s["init"], s["loss_form"], s["clip"]) == \
        (20, 3, 0.07, 64, "normal", "lopes2017", False)
    assert s["priors"]["tv"] == 0.5 and s["priors"]["feature"] == 0.0
    assert (s["objective"], s["spectral_targets"]) == ("spectral_layer_pairs", "layers")
    bad = CliRunner().invoke(cli_main, ["reconstruct", "--model", str(model), "--sidecar", str(sidecar), "--preset",
                                        "lopes", "-o", str(tmp_path / "u.h5")])
    assert bad.exit_code == 2 and "lopes2017" in bad.output and not (tmp_path / "u.h5").exists()


def test_the_benchmark_ablations_name_real_settings():
    """Each ablation of benchmarks/lopes2017.py changes settings that exist, on objectives that exist."""
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "lopes2017.py"
    spec = importlib.util.spec_from_file_location("lopes2017_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # dataclasses look their module up there
    try:
        spec.loader.exec_module(bench)
    finally:
        del sys.modules[spec.name]
    recon_fields = {f.name for f in dataclasses.fields(ReconstructConfig)}
    export_fields = {f.name for f in dataclasses.fields(ExportConfig)}
    for name, ab in bench.ABLATIONS.items():
        assert ab.what and set(ab.objectives) <= set(bench.OBJECTIVES), name
        assert set(ab.reconstruct) <= recon_fields and set(ab.export) <= export_fields, name
        assert ab.reconstruct or ab.export or ab.independent_pairs, f"{name} changes nothing"
        with bench.ablation(name) as changes:
            assert changes == ab.reconstruct
            cfg = reconstruct_preset("lopes2017", **changes)
            assert all(getattr(cfg, k) == v for k, v in ab.reconstruct.items())
            assert SpectralLayerPairs.joint_draw is not ab.independent_pairs
        assert SpectralLayerPairs.joint_draw is True  # the switch is put back
        ExportConfig(**ab.export).check()


def test_spectral_targets_are_checked():
    ReconstructConfig(spectral_targets="layers").check()
    with pytest.raises(UsageError, match="spectral_targets.*coefficients, layers"):
        ReconstructConfig(spectral_targets="layer").check()
