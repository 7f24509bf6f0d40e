"""Teachers exported with their BatchNormalization nodes kept: the prior DeepInversion, CMI and FastDFKD read."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from cli.main import main as cli_main
from dfkd_meta.device import resolve_device
from dfkd_meta.models import build_model
from dfkd_meta.onnx.graph import OnnxModule, load_onnx
from dfkd_meta.onnx.torch_export import export_onnx
from dfkd_meta.synthesis.context import SynthesisContext


def _trained_bn_cnn() -> torch.nn.Module:
    """bn-cnn with non-trivial running statistics (a few training-mode passes on random images)."""
    torch.manual_seed(0)
    model = build_model("bn-cnn", (1, 12, 12), 10).train()
    with torch.no_grad():
        for _ in range(5):
            model(torch.rand(32, 1, 12, 12) * 3 + 1)
    return model.eval()


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_keep_batchnorm_keeps_every_bn_node_with_its_running_statistics(tmp_path, exporter):
    model = _trained_bn_cnn()
    kept = export_onnx(model, (1, 12, 12), tmp_path / "kept.onnx", exporter=exporter, keep_batchnorm=True)
    folded = export_onnx(model, (1, 12, 12), tmp_path / "folded.onnx", exporter=exporter)
    count = lambda p: sum(n.op_type == "BatchNormalization" for n in onnx.load(str(p)).graph.node)  # noqa: E731
    assert count(kept) == 3 and count(folded) == 0
    x = torch.rand(8, 1, 12, 12)
    with torch.no_grad():
        ref = model(x)
        for path in (kept, folded):
            torch.testing.assert_close(OnnxModule(load_onnx(path))(x), ref, rtol=1e-4, atol=1e-4)
    ctx = SynthesisContext(kept, None, resolve_device("cpu"))
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(ctx.batchnorm) == 3
    for (_, mean, var), bn in zip(ctx.batchnorm, bns):  # graph order is the model's order
        np.testing.assert_allclose(mean.numpy(), bn.running_mean.numpy(), rtol=1e-6)
        np.testing.assert_allclose(var.numpy(), bn.running_var.numpy(), rtol=1e-6)
    assert SynthesisContext(folded, None, resolve_device("cpu")).batchnorm == []


def test_train_keep_batchnorm_is_refused_for_a_model_without_batchnorm(tmp_path):
    r = CliRunner().invoke(cli_main, ["train", "--model", "hinton-tiny", "--data", "digits", "--epochs", "1",
                                      "--keep-batchnorm", "-o", str(tmp_path / "t.onnx")])
    assert r.exit_code == 2, r.output
    assert r.output.count("\n") == 1 and "hinton-tiny has no BatchNorm layers" in r.output
    assert not (tmp_path / "t.onnx").exists()


def test_with_validation_carves_a_fixed_disjoint_split():
    from dfkd_meta.data import DataSource

    ids = np.arange(1000, dtype=np.float32)[:, None]  # each example's value is its index
    data = DataSource(name="ids", description="", license="", class_names=["a", "b"],
                      raw={"train": (ids, np.arange(1000) % 2), "test": (ids[:10], np.zeros(10, np.int64))})
    carved = data.with_validation(200, seed=3)
    (xt, yt), (xv, yv) = carved.raw["train"], carved.raw["val"]
    np.testing.assert_array_equal(yt, xt[:, 0].astype(int) % 2)
    assert len(xv) == 200 and len(xt) == 800 and carved.raw["test"] is data.raw["test"]
    assert sorted(np.concatenate([xt, xv])[:, 0]) == list(range(1000))  # disjoint, and nothing lost
    assert list(xt[:, 0]) == sorted(xt[:, 0])  # the rest keep their order
    np.testing.assert_array_equal(yv, xv[:, 0].astype(int) % 2)  # labels travel with their examples
    np.testing.assert_array_equal(data.with_validation(200, seed=3).raw["val"][0], xv)  # fixed by the seed
    assert not np.array_equal(data.with_validation(200, seed=4).raw["val"][0], xv)
    with pytest.raises(Exception, match="already has a 'val' split"):
        carved.with_validation(10)
    with pytest.raises(Exception, match="needs 0 < size"):
        data.with_validation(1000)


class _ViewNet(torch.nn.Module):
    """A CIFAR-style head, ``out.view(out.size(0), -1)``: without constant folding the graph keeps
    Shape -> Gather(scalar index) -> Unsqueeze -> Concat -> Reshape."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.fc = torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        out = torch.relu(self.bn(self.conv(x)))
        out = torch.nn.functional.avg_pool2d(out, 2)
        return self.fc(out.view(out.size(0), -1))


def test_a_teacher_that_reshapes_by_its_own_shape_runs_with_batchnorm_kept(tmp_path):
    """A scalar Gather from a Shape (kept when constant folding is off) gives a scalar, as ONNX says."""
    torch.manual_seed(0)
    model = _ViewNet().eval()
    path = export_onnx(model, (3, 10, 10), tmp_path / "view.onnx", keep_batchnorm=True)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"Shape", "Gather", "BatchNormalization"} <= ops
    x = torch.rand(6, 3, 10, 10)
    with torch.no_grad():
        torch.testing.assert_close(OnnxModule(load_onnx(path))(x), model(x), rtol=1e-4, atol=1e-5)
