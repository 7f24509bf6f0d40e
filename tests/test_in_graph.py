"""Export's statistics reduced inside the ONNX Runtime graph equal the numpy path and a direct computation."""
from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from dfkd_meta.onnx.graph import load_onnx
from dfkd_meta.onnx.torch_export import export_onnx
from dfkd_meta.stats.in_graph import MAX_GRAPH_CLASSES, Block, Layer, StatisticsPass
from dfkd_meta.stats.moments import ClassMoments

CLASSES = 6


class _SmallConvNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 3, 3)
        self.fc = torch.nn.Linear(3 * 4 * 4, CLASSES)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


@functools.lru_cache(maxsize=1)
def _model() -> tuple[onnx.ModelProto, list[str]]:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        proto = load_onnx(export_onnx(_SmallConvNet().eval(), (1, 6, 6), Path(folder) / "net.onnx"))
    conv = next(n.output[0] for n in proto.graph.node if n.op_type == "Conv")
    return proto, [conv, proto.graph.output[0].name]


def _run(proto, layers, blocks, batches, *, in_graph, cov_key=None, classes=CLASSES):
    moments = {la.key: ClassMoments(classes, la.units, cov_rank=3 if la.key == cov_key else 0) for la in layers}
    coef = {b.key: ClassMoments(classes, b.basis.shape[1]) for b in blocks}
    data_pass = StatisticsPass(proto, proto.graph.output[0].name, layers, blocks, moments, coef,
                               num_classes=classes, in_graph=in_graph)
    logits = [data_pass.accumulate(x, y) for x, y in batches]
    return moments, coef, data_pass, np.concatenate(logits) if logits else None


@settings(max_examples=15, deadline=None)
@given(sizes=st.lists(st.integers(1, 40), min_size=1, max_size=5), first_classes=st.integers(1, CLASSES),
       temperature=st.sampled_from([1.0, 4.0, 20.0]), offset=st.sampled_from([0.0, 30.0]),
       cov=st.booleans(), seed=st.integers(0, 1000))
def test_in_graph_sums_equal_the_numpy_path_and_a_direct_computation(sizes, first_classes, temperature, offset,
                                                                      cov, seed):
    proto, (conv, logits) = _model()
    layers = [Layer("conv", conv, 3 * 4 * 4, 1.0), Layer("logits", logits, CLASSES, temperature)]
    rng = np.random.default_rng(seed)
    blocks = [Block("all", layers, rng.standard_normal((3 * 4 * 4 + CLASSES, 4)).astype(np.float32))]
    batches = []
    for i, n in enumerate(sizes):  # the first batch sees only some classes: later ones need the fallback
        y = np.sort(rng.integers(0, first_classes if i == 0 else CLASSES, n))
        batches.append(((rng.random((n, 1, 6, 6)) + offset).astype(np.float32), y))
    cov_key = "conv" if cov else None
    fast = _run(proto, layers, blocks, batches, in_graph=True, cov_key=cov_key)
    slow = _run(proto, layers, blocks, batches, in_graph=False, cov_key=cov_key)
    assert [la.key for la in fast[2].summed] == (["logits"] if cov else ["conv", "logits"])
    assert slow[2].summed == [] and slow[2].batches_in_graph == 0
    assert fast[2].batches_in_graph + fast[2].batches_fetched == len(sizes)
    np.testing.assert_array_equal(fast[3], slow[3])

    # the direct computation in float64 from the fetched tensors
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    from dfkd_meta.onnx.runtime import OrtModel
    out = OrtModel(proto, taps=[conv]).run(x)
    values = {"conv": out[conv].reshape(len(y), -1).astype(np.float64),
              "logits": out[logits].astype(np.float64) / np.float32(temperature)}
    for key, v in values.items():
        scale = np.abs(v).max() + 1e-30
        for moments in (fast[0], slow[0]):
            m = moments[key]
            for c in range(CLASSES):
                sel = v[y == c]
                assert m.count[c] == len(sel)
                if len(sel):
                    np.testing.assert_allclose(m.mean[c], sel.mean(0), rtol=0, atol=2e-6 * scale)
                    np.testing.assert_allclose(m.std()[c], sel.std(0), rtol=0, atol=2e-5 * scale)
    signal = np.concatenate([values["conv"], values["logits"]], axis=1) @ blocks[0].basis.astype(np.float64)
    for coef in (fast[1], slow[1]):
        for c in range(CLASSES):
            if (y == c).any():
                np.testing.assert_allclose(coef["all"].mean[c], signal[y == c].mean(0), rtol=0,
                                           atol=2e-5 * np.abs(signal).max())


def test_a_batch_of_seen_classes_is_reduced_in_the_graph_and_an_unseen_class_falls_back():
    proto, (conv, logits) = _model()
    layers = [Layer("conv", conv, 48, 1.0)]
    rng = np.random.default_rng(0)
    y0, y1, y2 = np.array([0, 0, 1]), np.array([0, 1, 1]), np.array([1, 2])
    batches = [(rng.random((len(y), 1, 6, 6), dtype=np.float32), y) for y in (y0, y1, y2)]
    _, _, data_pass, _ = _run(proto, layers, [], batches, in_graph=True)
    assert (data_pass.batches_in_graph, data_pass.batches_fetched) == (1, 2)


def test_many_classes_and_old_opsets_take_the_numpy_path():
    proto, (conv, _) = _model()
    layers = [Layer("conv", conv, 48, 1.0)]
    many = MAX_GRAPH_CLASSES + 1
    _, _, data_pass, _ = _run(proto, layers, [], [], in_graph=None, classes=many)
    assert data_pass.summed == []
    _, _, data_pass, _ = _run(proto, layers, [], [], in_graph=None)
    assert [la.key for la in data_pass.summed] == ["conv"]

    # opset 6, and a tensor already named like the graph path's inputs: no clash, no graph path
    w = numpy_helper.from_array(np.eye(4, 3, dtype=np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["dfkd_stats/onehot"]),
             helper.make_node("Relu", ["dfkd_stats/onehot"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])], [w])
    for opset, expect in ((6, []), (13, ["h"])):
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=7)
        moments = {"h": ClassMoments(2, 3)}
        data_pass = StatisticsPass(model, "y", [Layer("h", "dfkd_stats/onehot", 3, 1.0)], [], moments, {},
                                   num_classes=2)
        assert [la.key for la in data_pass.summed] == expect
        x = np.arange(24, dtype=np.float32).reshape(6, 4)
        y = np.array([0, 0, 0, 1, 1, 1])
        for _ in range(2):
            data_pass.accumulate(x, y)
        np.testing.assert_allclose(moments["h"].mean, np.stack([x[:3, :3].mean(0), x[3:, :3].mean(0)]), rtol=1e-6)
        assert moments["h"].count.tolist() == [6, 6]


def test_add_sums_refuses_a_sketch_and_shifts_need_a_seen_class():
    with pytest.raises(ValueError, match="sketch"):
        ClassMoments(2, 3, cov_rank=1).add_sums(np.array([0]), np.array([1]), np.zeros((1, 3)), np.zeros((1, 3)),
                                                np.zeros((1, 3)))
    with pytest.raises(ValueError, match="running mean"):
        ClassMoments(2, 3).shifts(np.array([1]))
