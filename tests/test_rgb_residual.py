"""The consumer side on a 3-channel residual teacher from a budgeted (per-channel) sidecar: reconstruct and every
online method, with and without the sidecar, a residual student, and 3-channel inputs throughout."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dfkd_meta.config import OnlineConfig, ReconstructConfig
from dfkd_meta.data.stream import from_batches
from dfkd_meta.distill import distill_online
from dfkd_meta.errors import DfkdError
from dfkd_meta.models import build_model
from dfkd_meta.onnx.torch_export import export_onnx
from dfkd_meta.reconstruct.synthesize import reconstruct
from dfkd_meta.sidecar import read_sidecar
from dfkd_meta.stats.budget import MB, LayerChoice, plan_budget
from dfkd_meta.stats.export import export_release
from dfkd_meta.synthesis import METHODS
from dfkd_meta.transfer import read_transfer

from .test_synthesis import SMALL

SHAPE, CLASSES = (3, 16, 16), 10


class _Images:
    """Re-iterable random RGB images whose class shifts their colour (a teacher can tell them apart)."""

    def __iter__(self):
        rng = np.random.default_rng(0)
        for _ in range(4):
            y = rng.integers(0, CLASSES, 50)
            tint = (np.arange(3)[None, :, None, None] + 1) * y[:, None, None, None] / (3 * CLASSES)
            yield np.clip(rng.random((50, *SHAPE)) * 0.5 + tint, 0, 1).astype(np.float32), y


@pytest.fixture(scope="module")
def rgb_release(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rgb")
    torch.manual_seed(0)
    teacher = build_model("resnet8", SHAPE, CLASSES).eval()
    path = export_onnx(teacher, SHAPE, folder / "resnet8.onnx")
    data = from_batches(_Images(), num_classes=CLASSES)
    # 200 random images (about 20 a class): under the default per-class guard, which is not what this tests
    full = export_release(path, data, folder / "probe", force=True, spectral_k=0, min_class_count=0, progress=False)
    shapes = [(x["key"], tuple(x["shape"]), 0) for x in full.summary["layers"]]
    # a budget between the coarsest and half the per-unit size: the widest maps go to channels
    coarsest = sum(LayerChoice(k, s, "channel" if len(s) > 1 else "unit").nbytes(CLASSES) for k, s, _ in shapes)
    budget = (coarsest + full.summary["estimated_bytes"]) / 2
    assert plan_budget(shapes, CLASSES, int(budget)).coarsened()
    return export_release(path, data, folder / "release", force=True, spectral_k=0, max_size=budget / MB,
                          min_class_count=0, progress=False)


def test_the_release_stores_its_wide_maps_per_channel(rgb_release):
    sc = read_sidecar(rgb_release.sidecar_path, rgb_release.model_path)
    assert sc.format_version == "2.0.0" and sc.model.input_shape[1:] == SHAPE
    coarse = [x for x in sc.layers if not x.per_unit]
    assert coarse and all(x.channel.mean.shape == (CLASSES, x.shape[0]) for x in coarse)
    assert rgb_release.sidecar_path.stat().st_size <= rgb_release.summary["size_budget_bytes"]


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("with_sidecar", [False, True])
def test_every_online_method_trains_a_residual_student_on_rgb_inputs(rgb_release, method, with_sidecar):
    torch.manual_seed(0)
    student = build_model("resnet8", SHAPE, CLASSES)
    before = [p.detach().clone() for p in student.parameters()]
    cfg = OnlineConfig(method=method, iterations=3, batch_size=16, options=SMALL[method], checkpoint_every=3)
    result = distill_online(rgb_release.model_path, student, cfg, device="cpu", progress=False,
                            sidecar=rgb_release.sidecar_path if with_sidecar else None)
    r = result.report
    assert r["iterations"] == 3 and r["teacher_forward_examples"] > 0
    assert all(np.isfinite(h["loss"]) for h in r["history"] if "loss" in h)
    assert any(not torch.equal(a, b) for a, b in zip(before, result.student.parameters()))
    assert r["distill_seconds"] > 0
    if with_sidecar:  # the moment prior works from the per-channel layers; no per-unit first layer, no Gaussian
        assert r["context"]["moment_layers"] and r["gaussian_per_batch"] == 0


def test_reconstruct_writes_rgb_inputs_from_channel_statistics(rgb_release, tmp_path):
    cfg = ReconstructConfig(objective="all_layers", samples=8, steps=3, batch_size=8)
    out = reconstruct(rgb_release.model_path, rgb_release.sidecar_path, tmp_path / "t.h5", cfg, device="cpu",
                      progress=False)
    ts = read_transfer(out.path)
    assert ts.x.shape == (8, *SHAPE) and np.isfinite(ts.x).all()


def test_first_layer_init_refuses_a_per_channel_first_layer_in_one_line(rgb_release, tmp_path):
    from dfkd_meta.reconstruct.init import FirstLayerGaussian

    sc = read_sidecar(rgb_release.sidecar_path)
    if sc.layers_in_order()[0].per_unit:
        pytest.skip("the budget kept the first layer per unit")
    import onnx

    with pytest.raises(DfkdError, match="per-unit statistics on the first stored layer") as err:
        FirstLayerGaussian(sc, onnx.load(str(rgb_release.model_path)), "s.dfkd.h5")
    assert "\n" not in str(err.value)
