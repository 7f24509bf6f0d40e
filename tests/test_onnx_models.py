"""Whole models from both torch exporters: parity with ONNX Runtime, gradients, opsets 13..newest."""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper, version_converter

from dfkd_meta.errors import DfkdError
from dfkd_meta.onnx.graph import OnnxModule, load_onnx
from dfkd_meta.onnx.runtime import OrtModel

from .onnx_cases import ONNX_MAX_OPSET, assert_close, reference_run


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(),
                                       torch.nn.Dropout(0.5), torch.nn.Linear(32, 16), torch.nn.ReLU(),
                                       torch.nn.Linear(16, 10))

    def forward(self, x):
        return self.net(x)


class LeNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = torch.nn.Conv2d(1, 6, 3, padding=1), torch.nn.Conv2d(6, 8, 3)
        self.fc1, self.fc2 = torch.nn.Linear(8 * 2 * 2, 20), torch.nn.Linear(20, 10)

    def forward(self, x):
        x = torch.nn.functional.max_pool2d(torch.relu(self.c1(x)), 2)
        x = torch.nn.functional.avg_pool2d(torch.tanh(self.c2(x)), 1)
        x = torch.nn.functional.max_pool2d(x, 1)
        return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))


class ResNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8),
                                        torch.nn.ReLU())
        self.b1 = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8),
                                      torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, padding=1, bias=False),
                                      torch.nn.BatchNorm2d(8))
        self.down = torch.nn.Conv2d(8, 16, 1, stride=2)
        self.b2 = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3, stride=2, padding=1), torch.nn.BatchNorm2d(16),
                                      torch.nn.GELU())
        self.head = torch.nn.Linear(16, 10)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.b1(x))
        x = self.down(x) + self.b2(x)
        return self.head(torch.nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))


def _trained_like(model: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(0)
    for m in model.modules():  # non-trivial BatchNorm statistics, as after training
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


ARCHS = {"mlp": (MLP, (1, 8, 8)), "lenet": (LeNet, (1, 8, 8)), "resnet": (ResNet, (1, 8, 8))}
EXPORTS = [(arch, exporter, opset) for arch in ARCHS for exporter, opset in
           (("legacy", 13), ("legacy", 17), ("dynamo", 18), ("dynamo", 23))]


def export(arch: str, exporter: str, opset: int, folder: Path, keep_bn: bool = False) -> Path:
    cls, shape = ARCHS[arch]
    torch.manual_seed(1)
    model = _trained_like(cls())
    x = torch.randn(2, *shape)
    path = folder / f"{arch}_{exporter}_{opset}{'_bn' if keep_bn else ''}.onnx"
    logging.disable(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "legacy":
            kw = {"training": torch.onnx.TrainingMode.PRESERVE, "do_constant_folding": False} if keep_bn else {}
            torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=opset, input_names=["x"],
                              output_names=["logits"], dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}}, **kw)
        else:
            torch.onnx.export(model, (x,), str(path), dynamo=True, opset_version=opset, input_names=["x"],
                              output_names=["logits"], dynamic_shapes=({0: torch.export.Dim("batch")},),
                              verbose=False)
    logging.disable(logging.NOTSET)
    return path


@pytest.fixture(scope="session")
def exported(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("exports")
    out = {key: export(*key, folder) for key in EXPORTS}
    out[("resnet", "legacy-bn", 17)] = export("resnet", "legacy", 17, folder, keep_bn=True)
    return out


def _float_tensors(model: onnx.ModelProto) -> list[str]:
    inferred = onnx.shape_inference.infer_shapes(model)
    floats = {vi.name for vi in inferred.graph.value_info if vi.type.tensor_type.elem_type == TensorProto.FLOAT}
    return [o for n in model.graph.node for o in n.output if o in floats]


@pytest.mark.parametrize("key", EXPORTS + [("resnet", "legacy-bn", 17)], ids=lambda k: "-".join(map(str, k)))
def test_outputs_and_every_intermediate_match_ort(exported, key):
    path = exported[key]
    model = load_onnx(path)
    if key[1] == "legacy-bn":
        assert "BatchNormalization" in {n.op_type for n in model.graph.node}
    taps = _float_tensors(model)
    assert taps, "the model has intermediate tensors"
    x = np.random.default_rng(3).normal(0, 1, (5, *ARCHS[key[0]][1])).astype(np.float32)
    ref = OrtModel(path, taps=taps).run(x)
    got = OnnxModule(model, source=str(path)).run(torch.from_numpy(x), taps=taps)
    for name in taps + ["logits"]:
        assert_close(got[name].detach().numpy(), ref[name], rtol=1e-5, what=f"{path.name}:{name}")


@pytest.mark.parametrize("arch", list(ARCHS))
def test_input_gradient_matches_finite_differences(exported, arch):
    module = OnnxModule.from_file(exported[(arch, "dynamo", 18)]).double()
    x = torch.randn(2, *ARCHS[arch][1], dtype=torch.float64, requires_grad=True)
    # GELU/tanh are smooth; ReLU and max-pool kinks are measure-zero for random inputs.
    assert torch.autograd.gradcheck(lambda t: module(t), (x,), eps=1e-6, atol=1e-5, rtol=1e-4)


def test_weights_are_frozen_buffers_and_move_with_the_module(exported):
    module = OnnxModule.from_file(exported[("resnet", "legacy", 17)])
    assert list(module.parameters()) == []
    assert all(not b.requires_grad for b in module.buffers())
    assert len(module.state_dict()) == len(list(module.buffers())) > 0
    module = module.to("cpu", torch.float64)
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    out = module(x)
    assert out.dtype == torch.float64 and out.shape == (3, 10)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_ort_fast_path_equals_torch_path(exported):
    path = exported[("lenet", "dynamo", 18)]
    taps = _float_tensors(load_onnx(path))[:4]
    x = np.random.default_rng(5).normal(0, 1, (7, 1, 8, 8)).astype(np.float32)
    fast = OrtModel(path, taps=taps).run(x)
    slow = OnnxModule.from_file(path).run(torch.from_numpy(x), taps=taps)
    assert set(fast) >= set(taps) | {"logits"}
    for name in taps + ["logits"]:
        assert_close(slow[name].detach().numpy(), fast[name], what=name)


def test_unknown_tap_names_are_reported_with_suggestions(exported):
    module = OnnxModule.from_file(exported[("mlp", "legacy", 17)])
    with pytest.raises(DfkdError, match=r"no tensors named \['logitz'\].*logits"):
        module.run(torch.zeros(1, 1, 8, 8), taps=["logitz"])


def _lenet_graph(opset: int) -> onnx.ModelProto:
    rng = np.random.default_rng(7)
    w = {"K1": rng.normal(0, .5, (4, 1, 3, 3)), "B1": rng.normal(0, .1, 4), "K2": rng.normal(0, .3, (6, 4, 3, 3)),
         "S": rng.uniform(.5, 1.5, 6), "O": rng.normal(0, .1, 6), "M": rng.normal(0, .1, 6), "V": rng.uniform(.5, 2, 6),
         "W": rng.normal(0, .3, (24, 10)), "b": rng.normal(0, .1, 10), "shape": np.array([0, -1])}
    inits = [numpy_helper.from_array(v.astype(np.int64 if k == "shape" else np.float32), k) for k, v in w.items()]
    n = helper.make_node
    nodes = [n("Conv", ["x", "K1", "B1"], ["c1"], pads=[1, 1, 1, 1]), n("Relu", ["c1"], ["r1"]),
             n("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
             n("Conv", ["p1", "K2"], ["c2"], pads=[1, 1, 1, 1]),
             n("BatchNormalization", ["c2", "S", "O", "M", "V"], ["bn"]), n("LeakyRelu", ["bn"], ["r2"], alpha=0.1),
             n("AveragePool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
             n("Reshape", ["p2", "shape"], ["f"]), n("MatMul", ["f", "W"], ["mm"]), n("Add", ["mm", "b"], ["pre"]),
             n("Softmax", ["pre"], ["probs"], axis=1), n("Identity", ["pre"], ["logits"])]
    graph = helper.make_graph(nodes, "lenet", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10]),
                               helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7)
    return model if opset == 13 else version_converter.convert_version(model, opset)


@pytest.mark.parametrize("opset", list(range(13, ONNX_MAX_OPSET + 1)))
def test_every_opset_from_13_to_the_newest(opset):
    model = _lenet_graph(opset)
    onnx.checker.check_model(model)
    x = np.random.default_rng(opset).normal(0, 1, (3, 1, 8, 8)).astype(np.float32)
    refs = reference_run(model, x, ["logits", "probs", "c2", "p1"])
    got = OnnxModule(model).run(torch.from_numpy(x), taps=["c2", "p1"])
    for name, ref in zip(["logits", "probs", "c2", "p1"], refs):
        assert_close(got[name].numpy(), ref, what=f"opset {opset} {name}")


def test_dropout_ratio_is_reported():
    n = helper.make_node
    graph = helper.make_graph(
        [n("Dropout", ["x", "ratio"], ["d"], name="drop_hidden"), n("Relu", ["d"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(np.array(0.3, np.float32), "ratio")])
    module = OnnxModule(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert module.dropout_ratios == {"drop_hidden": pytest.approx(0.3)}
    x = torch.randn(5, 4)
    assert torch.equal(module(x), torch.relu(x))  # inference: identity


def _external_model(folder: Path, location: str) -> Path:
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                              [numpy_helper.from_array(np.ones((4, 3), np.float32), "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = folder / "m.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    if location != "m.onnx.data":  # rewrite the reference after the fact, as a hostile file would
        m = onnx.load(str(path), load_external_data=False)
        for entry in m.graph.initializer[0].external_data:
            if entry.key == "location":
                entry.value = location
        path.write_bytes(m.SerializeToString())
    return path


def test_external_data_inside_the_folder_loads(tmp_path):
    module = OnnxModule.from_file(_external_model(tmp_path, "m.onnx.data"))
    assert torch.equal(module(torch.ones(2, 4)), torch.full((2, 3), 4.0))


@pytest.mark.parametrize("location", ["../m.onnx.data", "/etc/passwd", "sub/../../m.onnx.data"])
def test_external_data_outside_the_folder_is_refused(tmp_path, location):
    inner = tmp_path / "inner"
    inner.mkdir()
    path = _external_model(inner, location)
    with pytest.raises(DfkdError, match="outside the model's folder"):
        load_onnx(path)


def test_external_data_symlink_out_of_the_folder_is_refused(tmp_path):
    inner = tmp_path / "inner"
    inner.mkdir()
    path = _external_model(inner, "m.onnx.data")
    outside = tmp_path / "secret.data"
    (inner / "m.onnx.data").rename(outside)
    os.symlink(outside, inner / "m.onnx.data")
    with pytest.raises(DfkdError, match="outside the model's folder"):
        load_onnx(path)


def test_checker_failure_is_a_clear_error(tmp_path):
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [], [])
    path = tmp_path / "bad.onnx"
    path.write_bytes(helper.make_model(graph).SerializeToString())
    with pytest.raises(DfkdError, match=r"bad\.onnx: onnx.checker rejects"):
        load_onnx(path)
    (tmp_path / "junk.onnx").write_bytes(b"\x00\xff junk")
    with pytest.raises(DfkdError, match="not a readable ONNX model"):
        load_onnx(tmp_path / "junk.onnx")
