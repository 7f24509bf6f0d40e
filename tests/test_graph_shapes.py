"""Export never writes a file its own validator rejects: every graph shape, default settings (issue 29)."""
from __future__ import annotations

import pytest
import torch

from dfkd_meta.data import load_data
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
