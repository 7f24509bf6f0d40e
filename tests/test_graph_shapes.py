"""Export never writes a file its own validator rejects: every graph shape, default settings (issue 29)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dfkd_meta.data import load_data
from dfkd_meta.models import MODELS, build_model
from dfkd_meta.onnx.torch_export import export_onnx
from dfkd_meta.sidecar import validate
from dfkd_meta.stats.export import export_release

from .graph_shapes import SHAPES


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n in ("concat", "tanh") else pytest.mark.slow)
                                  for n in sorted(SHAPES)])
def test_every_graph_shape_exports_with_defaults_and_validates(tmp_path, name):
    data = load_data("digits")
    torch.manual_seed(0)
    cls = SHAPES[name]
    shape = (64,) if getattr(cls, "flat", False) else data.input_shape
    model = export_onnx(cls(data.input_shape, 10).eval(), shape, tmp_path / f"{name}.onnx", exporter="legacy")
    result = export_release(model, data, tmp_path / "release", progress=False, force=True)
    report = validate(result.sidecar_path, result.model_path)
    assert report.valid, [f.format() for f in report.errors]
    blocks = {b["key"] for b in result.summary["spectral_blocks"]}
    omitted = result.summary["spectral_omitted"]
    # a block is either written or said to be left out, never both, never silently missing
    assert not blocks & {o.split(":")[0] for o in omitted}
    if name in ("concat", "gated_mul"):  # parallel branches: the pair between them has no weight path
        assert any("no weight connects" in o for o in omitted)
    if name in ("flat_input", "sigmoid"):
        assert omitted == [] and "all_layers" in blocks


@pytest.mark.slow
@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
@pytest.mark.parametrize("arch", sorted(MODELS))
def test_every_reference_model_exports_with_defaults_and_validates(tmp_path, arch, exporter):
    """Random weights on random 1x32x32 images (every reference architecture takes them): bn-cnn's pair block
    once came out with eigenvalues a rounding error out of order (DM712), which its writer then refused."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.integers(0, 256, (300, 1, 32, 32)).astype(np.uint8), y=np.arange(300) % 10)
    data = load_data(f"npz:{tmp_path / 'd.npz'}")
    torch.manual_seed(0)
    model = export_onnx(build_model(arch, data.input_shape, 10).eval(), data.input_shape, tmp_path / f"{arch}.onnx",
                        exporter=exporter)
    result = export_release(model, data, tmp_path / "release", progress=False, force=True)
    assert validate(result.sidecar_path, result.model_path).valid

