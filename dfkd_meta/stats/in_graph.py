"""Export's data pass: statistics reduced inside the ONNX Runtime session where that is cheaper.

Fetching a tapped layer copies every activation out of ONNX Runtime, and numpy then reduces it on
one core; that was 40 % of export time on a LeNet-5. For a model with few classes the reductions are
cheaper inside the graph, on ONNX Runtime's threads, and only [classes, units] sums leave it:

* per layer, the rows of each class are summed by a one-hot matrix product, after subtracting the
  class's running mean (the same shift ``ClassMoments.update`` uses, so float32 sums lose nothing
  that matters), once for the shifted values and once for their squares;
* per spectral block, the coefficients (the concatenated layers times the basis) are computed in
  the graph and only [batch, k] leaves it.

A batch with a class not seen before has no running mean to shift by: it fetches the layers and
takes the numpy path, as does every batch of a model with many classes (the one-hot product costs
4 * classes flops per activation), an opset before 7, or a tensor that is not float32. Layers with
a covariance sketch always take the numpy path: the sketch needs the values. Both paths give the
same statistics to float32 rounding.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import DfkdError
from ..onnx.runtime import OrtModel
from .moments import ClassMoments

MAX_GRAPH_CLASSES = 32  # beyond this the one-hot products cost more than the copies they save
MIN_OPSET = 7  # Gather, Sub, Mul, MatMul, Reshape and Concat as used here


@dataclass(frozen=True)
class Layer:
    key: str
    tensor: str
    units: int
    scale: float  # values are divided by it before any statistic (the temperature for logits, else 1)


@dataclass(frozen=True, eq=False)
class Block:
    key: str
    layers: list[Layer]
    basis: np.ndarray  # float32 [sum of units, k]


def _default_opset(proto: onnx.ModelProto) -> int:
    return max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)


def _float32_tensors(proto: onnx.ModelProto) -> set[str]:
    try:
        inferred = onnx.shape_inference.infer_shapes(proto).graph
    except Exception:
        return set()
    infos = list(inferred.value_info) + list(inferred.output) + list(inferred.input)
    return {vi.name for vi in infos if vi.type.tensor_type.elem_type == TensorProto.FLOAT}


class StatisticsPass:
    """One ONNX Runtime session that feeds every batch's statistics into ``ClassMoments``.

    ``layers`` get per-class moments (``moments[key]``), ``blocks`` per-class moments of their
    spectral coefficients (``coef[key]``); ``logits`` is fetched for the teacher check.
    """

    def __init__(self, proto: onnx.ModelProto, logits: str, layers: list[Layer], blocks: list[Block],
                 moments: dict[str, ClassMoments], coef: dict[str, ClassMoments], *, num_classes: int,
                 source: str = "model", device: str = "cpu", in_graph: bool | None = None):
        self.source = source
        self.logits, self.layers, self.blocks, self.moments, self.coef = logits, layers, blocks, moments, coef
        if in_graph is None:
            in_graph = num_classes <= MAX_GRAPH_CLASSES and _default_opset(proto) >= MIN_OPSET
        if in_graph:
            floats = _float32_tensors(proto)
            in_graph = all(layer.tensor in floats for layer in layers)
        # layers reduced in the graph (no sketch); the others are always fetched
        self.summed = [la for la in layers if in_graph and moments[la.key].sketch is None]
        self.fetched = [la for la in layers if la not in self.summed]
        self.in_graph = in_graph
        self._names: dict[str, str] = {}
        graph = self._augment(proto) if in_graph else proto
        taps = [la.tensor for la in self.fetched]
        if not in_graph:
            taps += [la.tensor for b in blocks for la in b.layers]
        self.runner = OrtModel(graph, taps=[*taps, *(la.tensor for la in self.summed)], device=device)
        self.input_name = self.runner.input_name
        self.batches_in_graph = self.batches_fetched = 0

    # --- graph ------------------------------------------------------------------------------------
    def _augment(self, proto: onnx.ModelProto) -> onnx.ModelProto:
        taken = {n for node in proto.graph.node for n in [*node.input, *node.output, node.name]}
        taken |= {t.name for t in [*proto.graph.input, *proto.graph.output, *proto.graph.initializer]}

        def fresh(stem: str) -> str:
            name, i = f"dfkd_stats/{stem}", 1
            while name in taken:
                name, i = f"dfkd_stats/{stem}_{i}", i + 1
            taken.add(name)
            self._names[stem] = name
            return name

        g = onnx.ModelProto()
        g.CopyFrom(proto)
        graph = g.graph
        nodes, inits, inputs, outputs = [], [], [], []
        onehot, pos = fresh("onehot"), fresh("pos")
        inputs += [helper.make_tensor_value_info(onehot, TensorProto.FLOAT, ["classes", "batch"]),
                   helper.make_tensor_value_info(pos, TensorProto.INT64, ["batch"])]
        flat: dict[str, str] = {}

        def flatten(layer: Layer) -> str:
            if layer.tensor not in flat:
                shape = fresh(f"shape/{layer.key}")
                inits.append(numpy_helper.from_array(np.array([-1, layer.units], np.int64), shape))
                flat[layer.tensor] = fresh(f"flat/{layer.key}")
                nodes.append(helper.make_node("Reshape", [layer.tensor, shape], [flat[layer.tensor]]))
            return flat[layer.tensor]

        for layer in self.summed:
            k = layer.key
            shift, rows, d, sq = fresh(f"shift/{k}"), fresh(f"rows/{k}"), fresh(f"d/{k}"), fresh(f"sq/{k}")
            s1, s2 = fresh(f"s1/{k}"), fresh(f"s2/{k}")
            inputs.append(helper.make_tensor_value_info(shift, TensorProto.FLOAT, ["classes", layer.units]))
            nodes += [helper.make_node("Gather", [shift, pos], [rows], axis=0),
                      helper.make_node("Sub", [flatten(layer), rows], [d]),
                      helper.make_node("MatMul", [onehot, d], [s1]),
                      helper.make_node("Mul", [d, d], [sq]),
                      helper.make_node("MatMul", [onehot, sq], [s2])]
            outputs += [helper.make_tensor_value_info(s, TensorProto.FLOAT, ["classes", layer.units]) for s in (s1, s2)]
        for block in self.blocks:
            basis = fresh(f"basis/{block.key}")
            # a layer's values divided by its scale, times the basis, is its values times the scaled basis
            rows = np.concatenate([np.full(la.units, 1.0 / la.scale, np.float32) for la in block.layers])
            inits.append(numpy_helper.from_array((block.basis * rows[:, None]).astype(np.float32), basis))
            signal = fresh(f"signal/{block.key}")
            nodes.append(helper.make_node("Concat", [flatten(la) for la in block.layers], [signal], axis=1))
            out = fresh(f"coef/{block.key}")
            nodes.append(helper.make_node("MatMul", [signal, basis], [out]))
            outputs.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, ["batch", block.basis.shape[1]]))
        graph.node.extend(nodes)
        graph.initializer.extend(inits)
        graph.input.extend(inputs)
        graph.output.extend(outputs)
        return g

    # --- data pass ----------------------------------------------------------------------------------
    def accumulate(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Add one batch (labels ``y`` sorted) to every statistic; returns the logits."""
        classes, pos, counts = np.unique(y, return_inverse=True, return_counts=True)
        in_graph = bool(self.summed) and all((self.moments[la.key].count[classes] > 0).all() for la in self.summed)
        feeds = {self.input_name: np.ascontiguousarray(x)}
        wanted = [self.logits, *(la.tensor for la in self.fetched)]
        if not in_graph:
            wanted += [la.tensor for la in self.summed]
        if not self.in_graph:
            wanted += [la.tensor for b in self.blocks for la in b.layers]
        shifts = {}
        if self.in_graph:
            # the graph path needs every input even when its outputs are not fetched: an empty one-hot
            # keeps the products free
            p = len(classes) if in_graph else 0
            onehot = np.zeros((p, len(y)), np.float32)
            if p:
                onehot[pos, np.arange(len(y))] = 1.0
            feeds[self._names["onehot"]] = onehot
            feeds[self._names["pos"]] = pos.astype(np.int64) if in_graph else np.zeros(len(y), np.int64)
            for la in self.summed:
                shifts[la.key] = (self.moments[la.key].shifts(classes) * np.float32(la.scale) if in_graph
                                  else np.zeros((1, la.units), np.float32))
                feeds[self._names[f"shift/{la.key}"]] = shifts[la.key]
            wanted += [self._names[f"{s}/{la.key}"] for la in self.summed for s in ("s1", "s2")] if in_graph else []
            wanted += [self._names[f"coef/{b.key}"] for b in self.blocks]
        wanted = list(dict.fromkeys(wanted))  # the logits may be a statistics layer too
        values = dict(zip(wanted, self.runner.session.run(wanted, feeds)))
        for la in self.layers:
            m = self.moments[la.key]
            if in_graph and la in self.summed:
                s1, s2 = values[self._names[f"s1/{la.key}"]], values[self._names[f"s2/{la.key}"]]
                scale = np.float64(la.scale)  # sums of scaled values; the statistics are of values / scale
                m.add_sums(classes, counts, shifts[la.key] / scale, s1 / scale, s2 / scale ** 2)
            else:
                m.update(self._flat(values[la.tensor], la, len(y)), y)
            if not (np.isfinite(m.mean).all() and np.isfinite(m.m2).all()):
                raise DfkdError(f"{self.source}: tensor {la.tensor!r} is not finite (or beyond float32 range) on "
                                "the data; check the model and its input convention ({input_norm})")
        for b in self.blocks:
            if self.in_graph:
                signal_coef = values[self._names[f"coef/{b.key}"]]
            else:
                signal = np.concatenate([self._flat(values[la.tensor], la, len(y)) for la in b.layers], axis=1)
                signal_coef = signal @ b.basis
            self.coef[b.key].update(signal_coef, y)
        if in_graph:
            self.batches_in_graph += 1
        else:
            self.batches_fetched += 1
        return values[self.logits]

    @staticmethod
    def _flat(v: np.ndarray, layer: Layer, batch: int) -> np.ndarray:
        v = v.reshape(batch, -1)
        return v / np.float32(layer.scale) if layer.scale != 1.0 else v


def make_layers(chosen, temperature: float) -> list[Layer]:
    """``Layer``s for export's chosen (key, tensor, kind, shape) tuples."""
    return [Layer(key, tensor, int(np.prod(shape)), float(temperature) if kind == "logits" else 1.0)
            for key, tensor, kind, shape in chosen]
