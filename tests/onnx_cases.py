"""Build single-op and small ONNX models, and run them through reference runtimes."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from dfkd_meta.onnx.runtime import with_outputs

ORT_MAX_OPSET = 26  # newest default-domain opset ONNX Runtime 1.31 runs; above it, onnx's reference evaluator
ONNX_MAX_OPSET = onnx.defs.onnx_opset_version()


def single_op(op_type: str, x: np.ndarray, consts: list[np.ndarray | None] = (), attrs: dict | None = None,
              opset: int = 17, n_out: int = 1) -> onnx.ModelProto:
    """A model computing ``op_type(x, *consts)``; consts are initializers, None an omitted input."""
    names, inits = ["x"], []
    for k, c in enumerate(consts):
        if c is None:
            names.append("")
        else:
            names.append(f"c{k}")
            inits.append(numpy_helper.from_array(np.asarray(c), f"c{k}"))
    outs = [f"y{k}" for k in range(n_out)]
    node = helper.make_node(op_type, names, outs, name=f"the_{op_type.lower()}", **(attrs or {}))
    elem = helper.np_dtype_to_tensor_dtype(x.dtype)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", elem, list(x.shape))],
                              [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in outs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              ir_version=10 if opset >= 21 else 8)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    types = {vi.name: vi.type for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
    for out in model.graph.output:  # ONNX Runtime needs typed outputs
        if out.name in types and types[out.name].tensor_type.elem_type:
            out.type.CopyFrom(types[out.name])
    return model


def reference_run(model: onnx.ModelProto, x: np.ndarray, outputs: list[str] | None = None) -> list[np.ndarray]:
    """ONNX Runtime where it supports the opset, else onnx.reference."""
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if outputs:
        model = with_outputs(model, outputs)
    if opset <= ORT_MAX_OPSET:
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return sess.run(outputs, {sess.get_inputs()[0].name: x})
    return list(ReferenceEvaluator(model).run(outputs, {model.graph.input[0].name: x}))


def assert_close(got: np.ndarray, ref: np.ndarray, rtol: float = 1e-5, what: str = "") -> None:
    """Within rtol of the reference, relative to the reference's largest magnitude."""
    got, ref = np.asarray(got), np.asarray(ref)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != {ref.shape}"
    if ref.dtype.kind in "biu":
        np.testing.assert_array_equal(got, ref, err_msg=what)
        return
    scale = max(float(np.abs(ref).max(initial=0.0)), 1.0)
    err = float(np.abs(got.astype(np.float64) - ref).max(initial=0.0))
    assert err <= rtol * scale, f"{what}: max abs error {err:.3g} > {rtol} x {scale:.3g}"
