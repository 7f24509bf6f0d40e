"""Static facts about an ONNX model file: inputs, outputs, tensors, shapes, external data.

Nothing here runs the model or loads external weights; it only parses the graph.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from ..errors import DfkdError
from .op_names import is_supported

Dim = int | str | None  # fixed size, symbolic name, or unknown


def dtype_name(elem_type: int) -> str:
    """ONNX element type as a numpy-style name ('float32', 'int64', ...)."""
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name
    except (KeyError, TypeError, ValueError):
        return TensorProto.DataType.Name(elem_type).lower()


@dataclass
class TensorInfo:
    name: str
    dtype: str | None
    shape: list[Dim] | None  # None when the rank is unknown

    @property
    def per_example_shape(self) -> tuple[int, ...] | None:
        """Shape without the batch axis, when every other dimension is a known integer."""
        if not self.shape or any(not isinstance(d, int) for d in self.shape[1:]):
            return None
        return tuple(self.shape[1:])


@dataclass
class ModelFacts:
    path: Path
    ir_version: int
    opset_imports: dict[str, int]
    inputs: list[TensorInfo]  # graph inputs that are not initializers
    outputs: list[TensorInfo]
    initializers: set[str]
    node_outputs: dict[str, str]  # tensor name -> op type that produced it
    value_info: dict[str, TensorInfo]  # every tensor whose type shape inference found
    external_data: list[str] = field(default_factory=list)  # locations, as written in the model
    ops: list[str] = field(default_factory=list)  # op types in graph order, unique


def _tensor_info(vi: onnx.ValueInfoProto) -> TensorInfo:
    tt = vi.type.tensor_type
    try:
        dtype = dtype_name(tt.elem_type) if tt.elem_type else None
    except (ValueError, KeyError):  # an element type this onnx does not know
        dtype = f"unknown type {tt.elem_type}"
    if not tt.HasField("shape"):
        return TensorInfo(vi.name, dtype, None)
    dims: list[Dim] = []
    for d in tt.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value) if d.dim_value >= 0 else None)  # a negative size is no size: unknown
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return TensorInfo(vi.name, dtype, dims)


def external_data_locations(model: onnx.ModelProto) -> list[str]:
    """Every external-data file the model references (initializers and Constant nodes), once each."""
    seen: dict[str, None] = {}
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        tensors += [a.t for a in node.attribute if a.type == onnx.AttributeProto.TENSOR]
    for t in tensors:
        if t.data_location == TensorProto.EXTERNAL:
            for entry in t.external_data:
                if entry.key == "location":
                    seen.setdefault(entry.value)
    return list(seen)


def resolve_external_path(model_dir: Path, location: str) -> Path | None:
    """The file ``location`` names inside ``model_dir``, or None if it would escape the folder.

    Refuses absolute paths, '..' components and symbolic links whose target leaves the folder.
    """
    if not isinstance(location, str) or not location or os.path.isabs(location) or location.startswith(("/", "\\")):
        return None
    parts = Path(location.replace("\\", "/")).parts
    if any(p == ".." for p in parts) or (parts and ":" in parts[0]):
        return None
    root = model_dir.resolve()
    target = (model_dir / Path(*parts)).resolve()
    if root != target and root not in target.parents:
        return None
    return target


MAX_INPUT_ELEMENTS = 1 << 28  # per example: 1 GiB of float32, far beyond any classifier's input


def require_input_shape(facts: ModelFacts, where: str) -> tuple[int, ...]:
    """The model's one input's per-example shape, or a one-line error: unknown or absurd sizes are refused
    before anything is allocated for them."""
    if len(facts.inputs) != 1 or facts.inputs[0].per_example_shape is None:
        raise DfkdError(f"{where}: needs one input of fixed per-example shape (has "
                        f"{[(i.name, i.shape) for i in facts.inputs]}); re-export with only the batch axis dynamic")
    shape = tuple(facts.inputs[0].per_example_shape)
    if any(d <= 0 for d in shape) or math.prod(shape) > MAX_INPUT_ELEMENTS:
        raise DfkdError(f"{where}: input shape {list(shape)} is empty or over {MAX_INPUT_ELEMENTS:,} values per "
                        "example; this is not a classifier input dfkd-meta can feed")
    return shape


def num_classes(facts: ModelFacts, where: str) -> int:
    """The class count of a classifier with one [batch, classes] output, or a one-line error."""
    out = facts.outputs[0].shape if len(facts.outputs) == 1 else None
    if not out or len(out) != 2 or not isinstance(out[-1], int) or out[-1] < 2:
        raise DfkdError(f"{where}: needs one logits output of shape [batch, classes] (has "
                        f"{[(o.name, o.shape) for o in facts.outputs]})")
    return int(out[-1])


def copy_model(folder, path: str | os.PathLike, under: str = "model"):
    """Copy an ONNX file and the external-data files it references (those inside its folder) into the
    private ``folder`` (``fileio.PrivateFolder``) under ``under/``; the model's Snapshot. A reference that
    leaves the model's folder is not copied: reading the copy reports it."""
    path = Path(path)
    snap = folder.copy(path, "model", name=f"{under}/{path.name}")
    try:
        proto = load_model_proto(snap.path)
    except DfkdError:
        return snap  # not ONNX: whoever reads the copy says so
    for loc in external_data_locations(proto):
        src, dst = resolve_external_path(path.parent, loc), resolve_external_path(snap.path.parent, loc)
        if src is None or dst is None or not src.is_file() or dst.exists():
            continue
        folder.copy(src, "external data", name=str(dst.relative_to(folder.path.resolve())))
    return snap


def model_bytes(path: str | os.PathLike) -> int:
    """The size of an ONNX model on disk: the file and the external-data files it references inside its folder
    (the dynamo exporter keeps the weights beside a small graph file)."""
    path = Path(path)
    total = path.stat().st_size
    for loc in external_data_locations(load_model_proto(path)):
        target = resolve_external_path(path.parent, loc)
        if target is not None and target.is_file():
            total += target.stat().st_size
    return total


def load_model_proto(path: str | os.PathLike) -> onnx.ModelProto:
    """Parse an ONNX file without loading external data; raise DfkdError if it is not ONNX."""
    try:
        model = onnx.load(os.fspath(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError, RuntimeWarning-derived errors, ...
        raise DfkdError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc}); "
                        "pass a .onnx file written by an ONNX exporter") from None
    # protobuf parses an empty file (and some junk) as an empty message: a model needs a graph to be one
    if model.ir_version <= 0 or not model.HasField("graph") or not model.graph.node:
        size = os.path.getsize(path)
        what = "is empty (0 bytes)" if size == 0 else f"holds no ONNX graph ({size} bytes, ir_version {model.ir_version})"
        raise DfkdError(f"{path}: {what}; pass a .onnx file written by an ONNX exporter")
    return model


def model_facts(path: str | os.PathLike, model: onnx.ModelProto | None = None) -> ModelFacts:
    """Read the static facts of an ONNX file (shape inference included, no weights loaded)."""
    path = Path(path)
    model = model if model is not None else load_model_proto(path)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # inference is best effort: unknown shapes are reported as unknown
        inferred = model
    g = inferred.graph
    inits = {t.name for t in model.graph.initializer}
    value_info = {vi.name: _tensor_info(vi) for vi in list(g.value_info) + list(g.input) + list(g.output)}
    node_outputs: dict[str, str] = {}
    ops: dict[str, None] = {}
    for node in model.graph.node:
        ops.setdefault(node.op_type)
        for out in node.output:
            if out:
                node_outputs[out] = node.op_type
    return ModelFacts(
        path=path,
        ir_version=int(model.ir_version),
        opset_imports={o.domain: int(o.version) for o in model.opset_import},
        inputs=[_tensor_info(i) for i in model.graph.input if i.name not in inits],
        outputs=[_tensor_info(o) for o in model.graph.output],
        initializers=inits,
        node_outputs=node_outputs,
        value_info=value_info,
        external_data=external_data_locations(model),
        ops=list(ops),
    )


def check_model(path: str | os.PathLike) -> str | None:
    """Run onnx.checker on the file (external data included); return the problem, or None."""
    try:
        onnx.checker.check_model(os.fspath(path), full_check=False)
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    return None


# Candidate statistics layers --------------------------------------------------------------------

ACTIVATION_OPS = frozenset({"Relu", "LeakyRelu", "Sigmoid", "Tanh", "Gelu", "Elu", "Selu", "PRelu", "HardSigmoid",
                            "HardSwish", "Softplus", "Softsign", "Clip"})
LINEAR_OPS = frozenset({"Gemm", "MatMul", "Conv", "ConvTranspose", "BatchNormalization", "Add"})


@dataclass
class Candidate:
    """A tensor worth recording statistics for."""

    name: str
    op: str  # op type that produced it
    shape: tuple[int, ...] | None  # per example
    kind: str  # pre_activation | post_activation | logits
    default: bool  # chosen by default: hidden pre-activations and the logits


def candidate_layers(facts: ModelFacts, model: onnx.ModelProto, logits: str | None = None) -> list[Candidate]:
    """Pre-activations (inputs of activation ops), post-activations and the logits, in graph order."""
    logits = logits or (facts.outputs[0].name if len(facts.outputs) == 1 else None)
    feeds_activation = {i for n in model.graph.node if n.op_type in ACTIVATION_OPS for i in n.input[:1]}
    out: list[Candidate] = []
    seen: set[str] = set()
    for node in model.graph.node:
        for name in node.output:
            if not name or name in seen:
                continue
            info = facts.value_info.get(name)
            if info is not None and info.dtype not in (None, "float32", "float16", "float64"):
                continue
            shape = info.per_example_shape if info is not None else None
            if name == logits:
                kind, default = "logits", True
            elif node.op_type in ACTIVATION_OPS:
                kind, default = "post_activation", False
            elif name in feeds_activation and node.op_type in LINEAR_OPS | {"Reshape", "Flatten", "Identity"}:
                kind, default = "pre_activation", True
            else:
                continue
            seen.add(name)
            out.append(Candidate(name, node.op_type, shape, kind, default))
    return out


def inspect_model(path: str | os.PathLike) -> dict:
    """Everything a publisher needs to choose layers, as plain data (what `dfkd-meta inspect` prints)."""
    path = Path(path)
    model = load_model_proto(path)
    facts = model_facts(path, model)
    counts: dict[str, int] = {}
    domains: dict[str, str] = {}
    for n in model.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
        domains.setdefault(n.op_type, n.domain)
    return {
        "model": str(path), "ir_version": facts.ir_version, "opset_imports": facts.opset_imports,
        "nodes": len(model.graph.node), "external_data": facts.external_data,
        "inputs": [{"name": t.name, "dtype": t.dtype, "shape": t.shape} for t in facts.inputs],
        "outputs": [{"name": t.name, "dtype": t.dtype, "shape": t.shape} for t in facts.outputs],
        "ops": [{"op": op, "count": counts[op], "supported": is_supported(op, domains[op])} for op in facts.ops],
        "candidate_layers": [{"name": c.name, "op": c.op, "shape": list(c.shape) if c.shape else None,
                              "kind": c.kind, "default": c.default} for c in candidate_layers(facts, model)],
    }


def final_dense_layer(model: onnx.ModelProto, logits: str) -> tuple[np.ndarray, str] | None:
    """The dense layer producing ``logits`` (through Add/Identity): its [C, H] weight (float64) and the
    tensor it reads (the penultimate features), or None when the logits do not come from one."""
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {t.name: t for t in model.graph.initializer}
    name = logits
    for _ in range(8):
        node = producers.get(name)
        if node is None:
            return None
        if node.op_type == "Gemm" and node.input[1] in inits:
            w = numpy_helper.to_array(inits[node.input[1]])
            transposed = any(a.name == "transB" and a.i for a in node.attribute)
            return (w if transposed else w.T).astype(np.float64), node.input[0]
        if node.op_type == "MatMul" and node.input[1] in inits:
            return numpy_helper.to_array(inits[node.input[1]]).T.astype(np.float64), node.input[0]
        name = next((i for i in node.input if i not in inits), None) if node.op_type in ("Add", "Identity") else None
        if name is None:
            return None
    return None


def batchnorm_statistics(model: onnx.ModelProto) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(input tensor, running mean, running variance) of every BatchNormalization node whose statistics are
    initializers: the metadata-free feature prior of DeepInversion. Torch's exporters fold BatchNorm into the
    preceding convolution in inference mode, so most exported teachers have none."""
    inits = {t.name: t for t in model.graph.initializer}
    out = []
    for node in model.graph.node:
        if node.op_type == "BatchNormalization" and len(node.input) >= 5 and \
                node.input[3] in inits and node.input[4] in inits:
            out.append((node.input[0], numpy_helper.to_array(inits[node.input[3]]).astype(np.float64),
                        numpy_helper.to_array(inits[node.input[4]]).astype(np.float64)))
    return out


def forward_flops(facts: ModelFacts, model: onnx.ModelProto) -> int:
    """FLOPs of one example's forward pass, counting 2 per multiply-accumulate of Gemm, MatMul and Conv.

    Element-wise ops, pooling and normalisation are left out: in the networks this package targets
    they are a few percent of the total. Shapes come from ONNX shape inference.
    """
    shapes = {k: v.shape for k, v in facts.value_info.items()}
    inits = {t.name: list(t.dims) for t in model.graph.initializer}
    shape = lambda n: inits.get(n) or shapes.get(n)  # noqa: E731
    total = 0
    for node in model.graph.node:
        out = shape(node.output[0]) if node.output else None
        if node.op_type in ("Gemm", "MatMul"):
            a, b = shape(node.input[0]), shape(node.input[1])
            if not a or not b:
                continue
            trans_a = any(x.name == "transA" and x.i for x in node.attribute)
            trans_b = any(x.name == "transB" and x.i for x in node.attribute)
            k = a[0] if trans_a else a[-1]
            n = b[0] if trans_b and node.op_type == "Gemm" else b[-1]
            rows = 1 if node.op_type == "Gemm" else math.prod(d for d in a[1:-1] if isinstance(d, int))
            if isinstance(k, int) and isinstance(n, int):
                total += 2 * rows * k * n
        elif node.op_type == "Conv" and out and all(isinstance(d, int) for d in out[1:]):
            w = shape(node.input[1])  # [Cout, Cin / group, k...]: each output position costs prod(w[1:]) MACs
            if w:
                total += 2 * out[1] * math.prod(out[2:]) * math.prod(w[1:])
        elif node.op_type == "ConvTranspose":
            x, w = shape(node.input[0]), shape(node.input[1])  # w: [Cin, Cout / group, k...]
            if x and w and all(isinstance(d, int) for d in x[2:]):
                total += 2 * math.prod(x[2:]) * math.prod(w)
    return total
