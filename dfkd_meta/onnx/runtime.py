"""ONNX Runtime fast path: teacher outputs and named tensors when no gradient is needed."""
from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from ..errors import DfkdError
from .graph import load_onnx


def ort_providers(device: str) -> list[str]:
    """Execution providers for ``device`` ('cpu' or 'cuda'), CPU as the fallback."""
    available = ort.get_available_providers()
    if device.startswith("cuda") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def with_outputs(model: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph also outputs the tensors ``names`` (typed by shape inference)."""
    names = [n for n in dict.fromkeys(names) if n not in {o.name for o in model.graph.output}]
    if not names:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    try:
        inferred = onnx.shape_inference.infer_shapes(out).graph
        types = {vi.name: vi.type.tensor_type.elem_type for vi in list(inferred.value_info) + list(inferred.input)}
    except Exception:
        types = {}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    produced = {o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.input} | set(types)
    unknown = [n for n in names if n not in produced]
    if unknown:
        raise DfkdError(f"no tensors named {unknown} in the model; `dfkd-meta inspect MODEL` lists the tensors")
    for name in names:
        out.graph.output.append(helper.make_tensor_value_info(name, types.get(name, TensorProto.FLOAT), None))
    return out


class OrtModel:
    """An ONNX Runtime session over a checked model, returning outputs and tapped tensors by name."""

    def __init__(self, model: str | os.PathLike | onnx.ModelProto, taps: Iterable[str] = (), device: str = "cpu",
                 threads: int | None = None, spin: bool = True):
        proto = model if isinstance(model, onnx.ModelProto) else load_onnx(model)
        self.taps = list(dict.fromkeys(taps))
        proto = with_outputs(proto, self.taps)
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        if not spin:  # idle intra-op threads sleep instead of spinning: other work shares the cores
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(proto.SerializeToString(), opts, providers=ort_providers(device))
        except Exception as exc:
            raise DfkdError(f"{model if not isinstance(model, onnx.ModelProto) else 'model'}: ONNX Runtime cannot "
                            f"load it ({str(exc).strip().splitlines()[0]})") from None
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run_checked(self, x: np.ndarray, where: str = "model") -> dict[str, np.ndarray]:
        """``run``, with ONNX Runtime's failures (a hostile graph's shapes, allocations) as one-line DfkdErrors."""
        try:
            return self.run(x)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DfkdError(f"{where}: ONNX Runtime cannot run the model ({first[:300]})") from None

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        values = self.session.run(None, {self.input_name: np.ascontiguousarray(x)})
        return dict(zip(self.output_names, values))
