"""Run an ONNX graph with torch ops: a differentiable, device-movable teacher.

``OnnxModule(model)`` holds the graph's initializers as frozen buffers and executes its nodes in
order with the functions of ``ops.OPS``. ``module(x)`` returns the output(s);
``module.run(x, taps=[...])`` also returns any named intermediate tensors.
"""
from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from ..errors import DfkdError
from ..fileio import require_file
from .inspect import external_data_locations, load_model_proto, resolve_external_path
from .ops import DEFAULT_DOMAINS, OPS, OnnxOpError, OpFn


class UnsupportedOpsError(DfkdError):
    """The graph uses ops (or op variants) this package cannot run."""


def load_onnx(path: str | os.PathLike) -> onnx.ModelProto:
    """Load an ONNX file for execution: onnx.checker, then external data from inside its folder only."""
    path = require_file(path, "model")
    model = load_model_proto(path)
    for loc in external_data_locations(model):
        target = resolve_external_path(path.parent, loc)
        if target is None:
            raise DfkdError(f"{path}: external data {loc!r} points outside the model's folder; refusing to load it "
                            "(keep .data files beside the model, named without '..' or absolute paths)")
        if not target.is_file():
            raise DfkdError(f"{path}: external data file {loc!r} is missing; copy it beside the model")
    try:
        onnx.checker.check_model(os.fspath(path))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DfkdError(f"{path}: onnx.checker rejects the model ({first}); re-export it") from None
    if external_data_locations(model):
        try:
            onnx.load_external_data_for_model(model, str(path.parent))
        except Exception as exc:  # offsets or lengths past the file's end, unreadable files
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DfkdError(f"{path}: cannot load its external data ({first[:300]}); re-export the model") from None
    return model


def _attr_value(attr: onnx.AttributeProto) -> Any:
    value = helper.get_attribute_value(attr)
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, onnx.TensorProto):
        return _to_torch(numpy_helper.to_array(value))
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode("utf-8") for v in value]
    return value


def _to_torch(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(arr, copy=True))


@dataclass
class _Node:
    op_type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any]
    fn: OpFn


class OnnxModule(torch.nn.Module):
    """An ONNX classifier as a torch module. Weights are buffers: frozen, and moved by ``.to()``.

    ``ops`` overrides or extends the op registry for this module only (for example to replace
    Relu by the identity when linearising a network).
    """

    def __init__(self, model: onnx.ModelProto, *, ops: Mapping[str, OpFn] | None = None, source: str = "model"):
        super().__init__()
        self.source = source
        registry = {**OPS, **(ops or {})}
        self.opset = next((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), 1)
        g = model.graph
        unsupported = [f"{n.op_type} (node {n.name or '#' + str(k)}"
                       f"{', domain ' + n.domain if n.domain not in DEFAULT_DOMAINS else ''})"
                       for k, n in enumerate(g.node)
                       if n.domain not in DEFAULT_DOMAINS or n.op_type not in registry]
        if unsupported:
            raise UnsupportedOpsError(f"{source}: {len(unsupported)} unsupported ops: {', '.join(unsupported)}; "
                                      "supported: `dfkd-meta inspect` lists them")
        self._const_names: dict[str, str] = {}
        for k, init in enumerate(g.initializer):
            try:
                value = numpy_helper.to_array(init)
            except (ValueError, TypeError, KeyError) as exc:  # data that does not fill the declared dims, bad types
                raise DfkdError(f"{source}: initializer {init.name!r} is malformed ({exc}); re-export the model") \
                    from None
            self._add_const(init.name, _to_torch(value), k)
        inits = {i.name for i in g.initializer}
        self.input_names = [i.name for i in g.input if i.name not in inits]
        self.output_names = [o.name for o in g.output]
        self.dropout_ratios: dict[str, float] = {}
        self.nodes: list[_Node] = []
        for k, n in enumerate(g.node):
            try:
                attrs = {a.name: _attr_value(a) for a in n.attribute}
            except (ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
                raise DfkdError(f"{source}: node {n.name or k!r} has a malformed attribute ({exc}); re-export the model") \
                    from None
            attrs["_opset"], attrs["_num_outputs"] = self.opset, len(n.output)
            node = _Node(n.op_type, n.name or f"{n.op_type}_{k}", list(n.input), list(n.output), attrs,
                         registry[n.op_type])
            if n.op_type == "Constant":  # folded into a buffer once
                self._add_const(n.output[0], self._call(node, [])[0], len(self._const_names))
                continue
            if n.op_type == "Dropout":
                ratio = attrs.get("ratio", 0.5)
                if len(n.input) > 1 and n.input[1] in self._const_names:
                    ratio = float(self._const(n.input[1]).reshape(-1)[0])
                self.dropout_ratios[node.name] = float(ratio)
            self.nodes.append(node)
        self.known = set(self._const_names) | set(self.input_names) | {o for n in self.nodes for o in n.outputs}
        self._last_use: dict[str, int] = {}
        for k, node in enumerate(self.nodes):
            for name in node.inputs:
                self._last_use[name] = k

    @classmethod
    def from_file(cls, path: str | os.PathLike, **kw) -> OnnxModule:
        return cls(load_onnx(path), source=str(path), **kw)

    # -- constants ------------------------------------------------------------------------------------
    def _add_const(self, onnx_name: str, value: torch.Tensor, k: int) -> None:
        attr = f"const_{k}"
        while hasattr(self, attr):
            attr += "_"
        self.register_buffer(attr, value, persistent=True)
        self._const_names[onnx_name] = attr

    def _const(self, onnx_name: str) -> torch.Tensor:
        return getattr(self, self._const_names[onnx_name])

    # -- execution ------------------------------------------------------------------------------------
    def _call(self, node: _Node, args: list) -> tuple:
        try:
            out = node.fn(args, node.attrs)
        except OnnxOpError as exc:
            raise UnsupportedOpsError(f"{self.source}: node {node.name} ({node.op_type}): {exc} is not supported") from None
        except (RuntimeError, ValueError, IndexError, TypeError) as exc:
            shapes = [tuple(a.shape) if isinstance(a, torch.Tensor) else None for a in args]
            raise DfkdError(f"{self.source}: node {node.name} ({node.op_type}) failed on inputs of shapes {shapes}: "
                            f"{exc}") from exc
        return out if isinstance(out, tuple) else (out,)

    def check_taps(self, taps: Iterable[str]) -> list[str]:
        taps = list(dict.fromkeys(taps))
        unknown = [t for t in taps if t not in self.known]
        if unknown:
            hints = {t: difflib.get_close_matches(t, self.known, n=3) for t in unknown}
            raise DfkdError(f"{self.source}: no tensors named {unknown} (close: {hints}); "
                            "`dfkd-meta inspect MODEL` lists the tensors")
        return taps

    def run(self, inputs: torch.Tensor | Mapping[str, torch.Tensor], taps: Iterable[str] = (),
            inject: Mapping[str, torch.Tensor] | None = None,
            transform: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] | None = None) -> dict[str, torch.Tensor]:
        """Run the graph; return the outputs and every tensor named in ``taps``, by name.

        ``inject`` replaces intermediate tensors by given values: a node whose outputs are all
        injected is skipped, and everything downstream sees the injected value. ``transform``
        maps a tensor, where it is produced, through a function (e.g. a dropout mask); the tapped
        value is the transformed one.
        """
        inject = dict(inject or {})
        transform = dict(transform or {})
        self.check_taps(list(inject) + list(transform))
        if isinstance(inputs, torch.Tensor):
            if len(self.input_names) != 1:
                raise DfkdError(f"{self.source}: the model has inputs {self.input_names}; pass a dict")
            inputs = {self.input_names[0]: inputs}
        keep = set(self.check_taps(taps)) | set(self.output_names)
        env: dict[str, torch.Tensor] = {name: self._const(name) for name in self._const_names}
        env.update(inputs)
        for k, node in enumerate(self.nodes):
            if inject and all(not name or name in inject for name in node.outputs):
                env.update({name: inject[name] for name in node.outputs if name})
            else:
                args = [env[name] if name else None for name in node.inputs]
                for name, value in zip(node.outputs, self._call(node, args)):
                    if name:
                        value = inject.get(name, value)
                        env[name] = transform[name](value) if name in transform else value
            for name in node.inputs:  # free what no later node needs
                if name and self._last_use.get(name) == k and name not in keep and name not in self._const_names:
                    env.pop(name, None)
        return {name: env[name] for name in keep if name in env}

    def path_nodes(self, src: str, dst: str) -> tuple[list[int], list[str]]:
        """The nodes on some path from tensor ``src`` to tensor ``dst`` (graph order), and the non-constant tensors
        they read that no such node computes (besides ``src``): the rest of the graph only feeds them."""
        producer = {name: k for k, node in enumerate(self.nodes) for name in node.outputs if name}
        upstream, todo = set(), [dst]
        while todo:  # nodes dst depends on
            k = producer.get(todo.pop())
            if k is not None and k not in upstream:
                upstream.add(k)
                todo.extend(name for name in self.nodes[k].inputs if name)
        reached, on_path = {src}, []
        for k, node in enumerate(self.nodes):  # graph order is topological
            if k in upstream and any(name in reached for name in node.inputs):
                on_path.append(k)
                reached.update(name for name in node.outputs if name)
        made = {name for k in on_path for name in self.nodes[k].outputs if name}
        frontier = sorted({name for k in on_path for name in self.nodes[k].inputs
                           if name and name not in made and name != src and name not in self._const_names})
        return on_path, frontier

    def run_nodes(self, values: Mapping[str, torch.Tensor], nodes: Sequence[int], taps: Iterable[str]) -> dict:
        """Run only ``nodes`` (indices in graph order) on ``values`` (every tensor they read that they do not
        compute); returns the tensors named in ``taps``."""
        env: dict[str, torch.Tensor] = {name: self._const(name) for name in self._const_names}
        env.update(values)
        for k in nodes:
            node = self.nodes[k]
            for name, value in zip(node.outputs, self._call(node, [env[n] if n else None for n in node.inputs])):
                if name:
                    env[name] = value
        return {name: env[name] for name in taps}

    def forward(self, *inputs: torch.Tensor):
        values = self.run(dict(zip(self.input_names, inputs)))
        outs = tuple(values[name] for name in self.output_names)
        return outs[0] if len(outs) == 1 else outs

    def extra_repr(self) -> str:
        return f"source={self.source!r}, opset={self.opset}, nodes={len(self.nodes)}, inputs={self.input_names}, " \
               f"outputs={self.output_names}"


__all__ = ["OnnxModule", "UnsupportedOpsError", "load_onnx"]
