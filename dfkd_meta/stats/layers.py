"""Which tensors of a teacher export describes, and the group name each gets in the sidecar."""
from __future__ import annotations

import re
from pathlib import Path

from ..errors import DfkdError, UsageError
from ..onnx.inspect import candidate_layers


def layer_key(tensor: str, taken: set[str]) -> str:
    """A group name matching SPEC §8 for an ONNX tensor name, unique among ``taken``."""
    key = re.sub(r"[^A-Za-z0-9_.-]+", "_", tensor).strip("_.") or "layer"
    key = key[-60:]
    candidate, n = key, 1
    while candidate in taken:
        n += 1
        candidate = f"{key[:57]}_{n}"
    taken.add(candidate)
    return candidate


def choose_layers(proto, facts, logits: str, names: list[str] | None, path: Path) -> list[tuple]:
    """(key, tensor, kind, per-example shape) for each statistics layer, in graph order."""
    candidates = candidate_layers(facts, proto, logits)
    by_name = {c.name: c for c in candidates}
    if names is None:
        picked = [c for c in candidates if c.default]
    else:
        order = {o: k for k, n in enumerate(proto.graph.node) for o in n.output}
        unknown = [n for n in names if n not in order]
        if unknown:
            raise UsageError(f"{path}: {{layers}} names unknown tensors {unknown}; `dfkd-meta inspect {path}` lists them")
        picked = []
        for n in sorted(dict.fromkeys(names), key=order.__getitem__):
            if n in by_name:
                picked.append(by_name[n])
            else:
                info = facts.value_info.get(n)
                kind = "logits" if n == logits else "pre_activation"
                picked.append(type(candidates[0])(n, "", info.per_example_shape if info else None, kind, False)
                              if candidates else None)
    if not any(c.kind == "logits" for c in picked) and logits in by_name and names is None:
        picked.append(by_name[logits])
    taken: set[str] = set()
    out = []
    for c in picked:
        if c.shape is None:
            raise DfkdError(f"{path}: the shape of {c.name!r} is not known statically; choose other {{layers}}")
        out.append((layer_key("logits" if c.kind == "logits" else c.name, taken), c.name, c.kind, c.shape))
    if not out:
        raise DfkdError(f"{path}: no statistics layers found; name them with {{layers}} (see `dfkd-meta inspect`)")
    return out
