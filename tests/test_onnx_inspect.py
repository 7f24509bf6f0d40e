"""`dfkd-meta inspect` and the candidate-layer listing."""
from __future__ import annotations

import json

import onnx
from click.testing import CliRunner
from onnx import TensorProto, helper

from cli.main import main as cli_main
from dfkd_meta.onnx.inspect import inspect_model

from .conftest import CORPUS


def test_mlp_candidates_and_kinds():
    info = inspect_model(CORPUS / "models/mlp.onnx")
    rows = {r["name"]: r for r in info["candidate_layers"]}
    assert rows["h_pre"] == {"name": "h_pre", "op": "Gemm", "shape": [16], "kind": "pre_activation", "default": True}
    assert rows["h"]["kind"] == "post_activation" and not rows["h"]["default"]
    assert rows["logits"]["kind"] == "logits" and rows["logits"]["default"] and rows["logits"]["shape"] == [10]
    assert info["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["batch", 64]}]
    assert all(o["supported"] for o in info["ops"])


def test_cnn_candidates_have_per_example_shapes():
    rows = {r["name"]: r for r in inspect_model(CORPUS / "models/cnn.onnx")["candidate_layers"]}
    assert rows["c_pre"]["shape"] == [4, 6, 6] and rows["c_pre"]["kind"] == "pre_activation"


def test_cli_inspect_marks_unsupported_ops(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["a"]),
                                                 helper.make_node("Hardmax", ["a"], ["y"])], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "m.onnx"
    onnx.save_model(model, str(path))
    result = CliRunner().invoke(cli_main, ["inspect", str(path)])
    assert result.exit_code == 0 and "Hardmax" in result.output and "UNSUPPORTED" in result.output
    doc = json.loads(CliRunner().invoke(cli_main, ["inspect", str(path), "--json"]).output)
    assert {o["op"]: o["supported"] for o in doc["ops"]} == {"Relu": True, "Hardmax": False}


def test_cli_inspect_rejects_non_onnx_with_one_line():
    result = CliRunner().invoke(cli_main, ["inspect", str(CORPUS / "models/not_onnx.onnx")])
    assert result.exit_code == 1 and "not a readable ONNX model" in result.output
    assert "Traceback" not in result.output


def test_model_bytes_counts_the_external_data_beside_the_graph(tmp_path):
    """A model whose weights live in a .data file (as the dynamo exporter writes them) weighs both files."""
    import numpy as np
    from onnx import numpy_helper

    from dfkd_meta.onnx.inspect import model_bytes

    w = numpy_helper.from_array(np.ones((64, 64), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [w])
    model = helper.make_model(graph)
    inline, external = tmp_path / "inline.onnx", tmp_path / "external.onnx"
    onnx.save(model, inline)
    onnx.save(model, external, save_as_external_data=True, all_tensors_to_one_file=True, location="external.data",
              size_threshold=0)
    assert model_bytes(inline) == inline.stat().st_size
    assert external.stat().st_size < 64 * 64 * 4 <= (tmp_path / "external.data").stat().st_size
    assert model_bytes(external) == external.stat().st_size + (tmp_path / "external.data").stat().st_size
