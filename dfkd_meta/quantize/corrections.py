"""DFQ's corrections on an ONNX graph (Nagel et al. 2019, "Data-Free Quantization Through Weight
Equalization and Bias Correction", ICCV), one function each, with no data.

- ``equalise``: cross-layer equalisation. For two layers joined by operations that commute with a
  positive scale per channel (Relu, LeakyRelu, MaxPool, AveragePool, Identity, and a Flatten into a
  dense layer), output channel i of the first is divided by s_i and the matching inputs of the second
  multiplied by it, s_i = sqrt(r1_i / r2_i) for the channels' weight ranges r1_i and r2_i: the function
  is unchanged and both ranges become sqrt(r1_i r2_i), which evens out what one scale per tensor must
  cover. Chains of more than two layers are swept until the scales settle. Residual joins (Add) and
  BatchNormalization end a chain.
- ``correct_bias``: the quantised weights W_q make each output channel's mean wrong by (W_q - W) E[x];
  subtracting it from the bias removes that expected error. E[x], the layer input's mean per channel,
  comes from the sidecar's recorded class means where it records that tensor, else from the float
  teacher on the calibration inputs (the caller's ``input_means``). W_q is read from the quantised
  model's DequantizeLinear nodes, so the correction follows whatever ONNX Runtime chose.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

PASS_THROUGH = {"Relu", "LeakyRelu", "MaxPool", "AveragePool", "GlobalMaxPool", "GlobalAveragePool", "Identity",
                "Dropout"}  # commute with x -> x / s, s > 0
LINEAR = {"Conv", "Gemm"}


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


class Graph:
    """Name indexes of an ONNX graph's initializers, producers and consumers, and edits of initializers."""

    def __init__(self, proto: onnx.ModelProto):
        self.proto = proto
        g = proto.graph
        self.init = {t.name: t for t in g.initializer}
        self.producer = {o: n for n in g.node for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in g.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.outputs = {o.name for o in g.output}
        names = [n.name for n in g.node if n.name]
        self.by_name = {n.name: n for n in g.node if n.name and names.count(n.name) == 1}

    def array(self, name: str) -> np.ndarray | None:
        return numpy_helper.to_array(self.init[name]) if name in self.init else None

    def shared(self, name: str) -> bool:
        return len(self.consumers.get(name, [])) != 1

    def set(self, name: str, value: np.ndarray) -> None:
        old = self.init[name]
        old.CopyFrom(numpy_helper.from_array(value.astype(numpy_helper.to_array(old).dtype), name))

    def add_initializer(self, name: str, value: np.ndarray) -> str:
        base, i = name, 0
        while name in self.init or name in self.producer:
            i += 1
            name = f"{base}_{i}"
        t = numpy_helper.from_array(value.astype(np.float32), name)
        self.proto.graph.initializer.append(t)
        self.init[name] = self.proto.graph.initializer[-1]
        return name


def weighted_layer(graph: Graph, node: onnx.NodeProto) -> bool:
    """A Conv (one group) or a Gemm (A not transposed) with a constant weight used by no other node."""
    if node.op_type not in LINEAR or len(node.input) < 2 or node.input[1] not in graph.init:
        return False
    a = _attrs(node)
    if node.op_type == "Conv":
        return a.get("group", 1) == 1 and not graph.shared(node.input[1])
    return a.get("transA", 0) == 0 and a.get("alpha", 1.0) == 1.0 and not graph.shared(node.input[1])


def _out_axis(node: onnx.NodeProto) -> int:
    """The weight axis of output channels."""
    return 1 if node.op_type == "Gemm" and not _attrs(node).get("transB", 0) else 0


def _in_axis(node: onnx.NodeProto) -> int:
    """The weight axis of input channels (input features)."""
    return 0 if node.op_type == "Gemm" and not _attrs(node).get("transB", 0) else 1


def _next_layer(graph: Graph, node: onnx.NodeProto) -> onnx.NodeProto | None:
    """The linear layer ``node``'s output reaches through per-channel positive-homogeneous operations only."""
    tensor, flattened = node.output[0], False
    while True:
        if tensor in graph.outputs or graph.shared(tensor):
            return None
        nxt = graph.consumers[tensor][0]
        if nxt.op_type in LINEAR:
            ok = nxt.input[0] == tensor and weighted_layer(graph, nxt) and (nxt.op_type == "Gemm" or not flattened)
            return nxt if ok else None
        if nxt.op_type in PASS_THROUGH:
            tensor = nxt.output[0]
        elif nxt.op_type == "Flatten" and _attrs(nxt).get("axis", 1) == 1 and node.op_type == "Conv":
            tensor, flattened = nxt.output[0], True
        else:
            return None


def _channel_ranges(w: np.ndarray, axis: int, channels: int) -> np.ndarray:
    """max |w| over each of ``channels`` equal blocks along ``axis`` (a flattened conv map: H*W inputs each)."""
    moved = np.moveaxis(np.abs(w), axis, 0)
    return moved.reshape(channels, -1).max(axis=1)


def _scale_along(w: np.ndarray, axis: int, scale: np.ndarray) -> np.ndarray:
    """``w`` with its ``axis`` scaled by ``scale`` repeated over equal blocks (one per channel)."""
    block = w.shape[axis] // len(scale)
    shape = [1] * w.ndim
    shape[axis] = w.shape[axis]
    return w * np.repeat(scale, block).reshape(shape)


def equalise(proto: onnx.ModelProto, sweeps: int = 20, tol: float = 1e-4
             ) -> tuple[onnx.ModelProto, dict, dict[str, np.ndarray]]:
    """Cross-layer equalisation of every pair of linear layers joined per channel; the function is unchanged.

    Returns the graph, a report, and for each second layer's input tensor the per-channel factor its values
    were divided by (what a mean of that tensor measured on the original graph must be divided by)."""
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    graph = Graph(proto)
    pairs = []
    for node in proto.graph.node:
        if weighted_layer(graph, node):
            nxt = _next_layer(graph, node)
            if nxt is not None:
                pairs.append((node, nxt))
    total = [np.ones(graph.array(a.input[1]).shape[_out_axis(a)]) for a, _ in pairs]
    for _ in range(sweeps if pairs else 0):
        largest = 0.0
        for k, (first, second) in enumerate(pairs):
            w1, w2 = graph.array(first.input[1]), graph.array(second.input[1])
            channels = w1.shape[_out_axis(first)]
            if w2.shape[_in_axis(second)] % channels:
                continue
            r1, r2 = _channel_ranges(w1, _out_axis(first), channels), _channel_ranges(w2, _in_axis(second), channels)
            s = np.where((r1 > 0) & (r2 > 0), np.sqrt(r1 / np.where(r2 > 0, r2, 1.0)), 1.0)
            graph.set(first.input[1], _scale_along(w1, _out_axis(first), 1.0 / s))
            if len(first.input) > 2 and first.input[2]:
                graph.set(first.input[2], graph.array(first.input[2]) / s)
            graph.set(second.input[1], _scale_along(w2, _in_axis(second), s))
            total[k] = total[k] * s
            largest = max(largest, float(np.abs(np.log(s)).max()))
        if largest < tol:
            break
    scales = {b.input[0]: t for (_, b), t in zip(pairs, total)}
    return proto, {"equalised_pairs": [[a.output[0], b.output[0]] for a, b in pairs]}, scales


def _quantised_node(quant: Graph, node: onnx.NodeProto) -> onnx.NodeProto | None:
    """``node``'s counterpart in the QDQ model: the node of the same name, else the producer of its output, past
    the QuantizeLinear/DequantizeLinear pair ONNX Runtime puts on a graph output."""
    if node.name in quant.by_name:
        found = quant.by_name[node.name]
        return found if found.op_type == node.op_type else None
    found = quant.producer.get(node.output[0])
    while found is not None and found.op_type in ("QuantizeLinear", "DequantizeLinear"):
        found = quant.producer.get(found.input[0])
    return found if found is not None and found.op_type == node.op_type else None


def _dequantised_weights(quant: Graph, node: onnx.NodeProto) -> np.ndarray | None:
    """The weight ONNX Runtime's QDQ model feeds ``node``'s counterpart: DequantizeLinear of its int8
    initializer, per tensor or per channel (``axis``)."""
    node = _quantised_node(quant, node)
    if node is None or len(node.input) < 2:
        return None
    dq = quant.producer.get(node.input[1])
    if dq is None or dq.op_type != "DequantizeLinear":
        return None
    q, scale = quant.array(dq.input[0]), quant.array(dq.input[1])
    zero = quant.array(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else None
    if q is None or scale is None:
        return None
    axis = _attrs(dq).get("axis", 1)
    shape = [1] * q.ndim
    if scale.ndim == 1 and scale.size > 1:
        shape[axis] = scale.size
    zero = np.zeros_like(scale) if zero is None else zero.astype(np.float64)
    return (q.astype(np.float64) - zero.reshape(shape)) * scale.astype(np.float64).reshape(shape)


def correct_bias(proto: onnx.ModelProto, quantised: onnx.ModelProto, input_means: dict[str, np.ndarray]
                 ) -> tuple[onnx.ModelProto, dict]:
    """``proto`` with each linear layer's bias lowered by (W_q - W) E[x]; layers without a mean are left alone."""
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    graph, quant = Graph(proto), Graph(quantised)
    corrected, largest = [], 0.0
    for node in list(proto.graph.node):
        if not weighted_layer(graph, node) or node.input[0] not in input_means:
            continue
        w = graph.array(node.input[1]).astype(np.float64)
        wq = _dequantised_weights(quant, node)
        if wq is None or wq.shape != w.shape:
            continue
        mean = np.asarray(input_means[node.input[0]], np.float64).reshape(-1)
        dw = wq - w
        if node.op_type == "Conv":
            if dw.shape[1] != mean.size:
                continue
            error = dw.reshape(dw.shape[0], dw.shape[1], -1).sum(-1) @ mean  # [O]
        else:
            dw = dw if _attrs(node).get("transB", 0) else dw.T  # [N, K]
            if dw.shape[1] != mean.size:
                continue
            error = dw @ mean * _attrs(node).get("alpha", 1.0)
        beta = _attrs(node).get("beta", 1.0) if node.op_type == "Gemm" else 1.0
        if len(node.input) > 2 and node.input[2]:
            if graph.shared(node.input[2]) or node.input[2] not in graph.init:
                continue
            bias = graph.array(node.input[2]).astype(np.float64)
            if bias.shape != error.shape:
                continue
            graph.set(node.input[2], bias - error / beta)
        else:
            name = graph.add_initializer(f"{node.output[0]}_bias_correction", -error / beta)
            node.input.append(name)
        corrected.append(node.output[0])
        largest = max(largest, float(np.abs(error).max()))
    return proto, {"bias_corrected_layers": corrected, "largest_correction": largest}


def layer_inputs(proto: onnx.ModelProto) -> list[str]:
    """The input tensors of the layers ``correct_bias`` can correct (their means are what it needs)."""
    graph = Graph(proto)
    return list(dict.fromkeys(n.input[0] for n in proto.graph.node if weighted_layer(graph, n)))
