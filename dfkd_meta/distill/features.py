"""Intermediate features for the feature losses (losses.py): the teacher's tensors named from its ONNX graph, the
student's module outputs by module path, and how the two pair.

Automatic pairing, by stage: feature maps [C, H, W] are grouped by their spatial size, and at every size both
networks have, the teacher's last post-activation tensor there (graph order) pairs with the student module that
finishes last with an output of that size (forward order, so a residual block or a stage container wins over
the layers inside it). The *embedding* pair is the input of each network's final dense layer. Pairs named as
``TEACHER_TENSOR=STUDENT.MODULE.PATH`` (``...PATH:input`` for a module's input) replace the automatic ones;
``dfkd-meta inspect`` lists the teacher's tensors.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import onnx
import torch
import torch.nn as nn

from ..errors import UsageError
from ..onnx.inspect import ModelFacts, candidate_layers, final_dense_layer

EMBEDDING = "embedding"


@dataclass(frozen=True)
class FeaturePair:
    key: str  # the name both sides' features carry in Outputs.features
    teacher: str  # tensor name in the teacher's graph
    student: str  # module path, ":input" for the module's input
    teacher_shape: tuple[int, ...]  # per example
    student_shape: tuple[int, ...]


def teacher_features(facts: ModelFacts, model: onnx.ModelProto, every: bool = False
                     ) -> list[tuple[str, tuple[int, ...]]]:
    """(tensor, per-example shape) of the teacher's post-activation tensors in graph order (``every``: its
    pre-activations too, as ``dfkd-meta inspect`` lists them, for named pairs), then the input of its final dense
    layer (named ``embedding`` when paired automatically)."""
    kinds = ("post_activation", "pre_activation") if every else ("post_activation",)
    out = [(c.name, tuple(c.shape)) for c in candidate_layers(facts, model)
           if c.kind in kinds and c.shape and all(isinstance(d, int) and d > 0 for d in c.shape)]
    dense = final_dense_layer(model, facts.outputs[0].name) if len(facts.outputs) == 1 else None
    if dense is not None:
        info = facts.value_info.get(dense[1])
        shape = info.per_example_shape if info is not None else None
        if shape and all(isinstance(d, int) for d in shape):
            out = [(n, s) for n, s in out if n != dense[1]] + [(dense[1], tuple(shape))]
    return out


@torch.no_grad()
def student_features(student: nn.Module, input_shape: tuple[int, ...]) -> list[tuple[str, tuple[int, ...]]]:
    """(module path, per-example output shape) of every module of ``student`` in the order their forwards finish on
    a probe batch, then ``path:input`` of its last dense layer (the embedding)."""
    seen: list[tuple[str, tuple[int, ...]]] = []
    last_dense: list[tuple[str, tuple[int, ...]]] = []
    hooks = []
    for path, module in student.named_modules():
        if not path:
            continue

        def record(module, inputs, output, path=path):
            if isinstance(output, torch.Tensor):
                seen.append((path, tuple(output.shape[1:])))
            if isinstance(module, nn.Linear) and inputs and isinstance(inputs[0], torch.Tensor):
                last_dense[:] = [(f"{path}:input", tuple(inputs[0].shape[1:]))]
        hooks.append(module.register_forward_hook(record))
    was_training = student.training
    try:
        student.eval()
        param = next(student.parameters(), None)
        student(torch.zeros(2, *input_shape, device=param.device if param is not None else "cpu"))
    finally:
        for h in hooks:
            h.remove()
        student.train(was_training)
    return seen + last_dense


def pair_features(teacher: list[tuple[str, tuple[int, ...]]], student: list[tuple[str, tuple[int, ...]]],
                  named: list[str] | tuple[str, ...] = ()) -> list[FeaturePair]:
    """The pairs ``named`` (``TEACHER=STUDENT``), else the automatic ones (see the module docstring)."""
    t_shapes, s_shapes = dict(teacher), dict(student)
    if named:
        pairs = []
        for spec in named:
            t, sep, s = spec.partition("=")
            if not sep or not t or not s:
                raise UsageError(f"{{features}} {spec!r}: expected TEACHER_TENSOR=STUDENT_MODULE, e.g. "
                                 f"{teacher[-1][0] if teacher else 'relu_3'}={student[-1][0] if student else 'body.2'}")
            if t not in t_shapes:
                raise UsageError(f"{{features}} {spec!r}: the teacher has no feature tensor {t!r}; one of "
                                 f"{_listing(t_shapes)} (dfkd-meta inspect lists them)")
            if s not in s_shapes:
                raise UsageError(f"{{features}} {spec!r}: the student has no module {s!r}; one of {_listing(s_shapes)}")
            pairs.append(FeaturePair(f"{t}={s}", t, s, t_shapes[t], s_shapes[s]))
        return pairs
    pairs = []
    for size in _common_sizes(teacher, student):
        t = [n for n, shape in teacher if len(shape) == 3 and shape[1:] == size][-1]
        s = [p for p, shape in student if len(shape) == 3 and shape[1:] == size][-1]
        pairs.append(FeaturePair(f"stage {size[0]}x{size[1]}", t, s, t_shapes[t], s_shapes[s]))
    if teacher and student and len(teacher[-1][1]) == 1 and student[-1][0].endswith(":input"):
        pairs.append(FeaturePair(EMBEDDING, teacher[-1][0], student[-1][0], teacher[-1][1], student[-1][1]))
    if not pairs:
        raise UsageError("{features}: no feature maps of the same spatial size and no final dense layers to pair "
                         "automatically; name the pairs as TEACHER_TENSOR=STUDENT_MODULE")
    return pairs


def _common_sizes(teacher, student) -> list[tuple[int, int]]:
    t_sizes = {shape[1:] for _, shape in teacher if len(shape) == 3}
    ordered = []
    for _, shape in student:  # in the student's forward order: the shallow stages first
        if len(shape) == 3 and shape[1:] in t_sizes and shape[1:] not in ordered:
            ordered.append(shape[1:])
    return ordered


def _listing(shapes: dict) -> str:
    names = list(shapes)
    return ", ".join(names[:12]) + (f" and {len(names) - 12} more" if len(names) > 12 else "")


@contextmanager
def student_taps(student: nn.Module, pairs: list[FeaturePair]) -> Iterator[dict[str, torch.Tensor]]:
    """While open, each forward of ``student`` fills the yielded dict with the paired features, by pair key."""
    modules = dict(student.named_modules())
    captured: dict[str, torch.Tensor] = {}
    hooks = []
    for pair in pairs:
        path, _, which = pair.student.partition(":")
        if path not in modules:
            raise UsageError(f"{{features}}: the student has no module {path!r}")

        def grab(module, inputs, output, key=pair.key, use_input=which == "input"):
            captured[key] = inputs[0] if use_input else output
        hooks.append(modules[path].register_forward_hook(grab))
    try:
        yield captured
    finally:
        for h in hooks:
            h.remove()
        captured.clear()
