"""Build the model binding (SPEC §6) of an ONNX file."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import DfkdError
from ..fileio import require_file, sha256_file
from ..onnx.inspect import model_facts, resolve_external_path
from .types import InputDomain, ModelBinding


def model_binding(model_path: str | os.PathLike, input_domain: InputDomain, *, logits_name: str | None = None,
                  class_names: list[str] | None = None) -> ModelBinding:
    """Hash the model (and its external-data files) and record its input and logits."""
    path = require_file(model_path, "model")
    facts = model_facts(path)
    if len(facts.inputs) != 1:
        raise DfkdError(f"{path}: the model has {len(facts.inputs)} inputs "
                        f"({[i.name for i in facts.inputs]}); dfkd-meta needs a single-input classifier")
    inp = facts.inputs[0]
    if inp.shape is None or not inp.shape or any(not isinstance(d, int) for d in inp.shape[1:]):
        raise DfkdError(f"{path}: input {inp.name!r} has shape {inp.shape}; every non-batch dimension must be "
                        "fixed (re-export with a fixed example shape and only the batch axis dynamic)")
    outputs = {o.name: o for o in facts.outputs}
    if logits_name is None:
        if len(outputs) != 1:
            raise DfkdError(f"{path}: the model has outputs {sorted(outputs)}; name the logits with {logits_name}")
        logits_name = next(iter(outputs))
    if logits_name not in outputs:
        raise DfkdError(f"{path}: {logits_name!r} is not an output; outputs are {sorted(outputs)}")
    out_shape = outputs[logits_name].shape
    if not out_shape or not isinstance(out_shape[-1], int) or len(out_shape) != 2:
        raise DfkdError(f"{path}: logits {logits_name!r} have shape {out_shape}; expected [batch, classes]")
    num_classes = out_shape[-1]
    if class_names is not None and len(class_names) != num_classes:
        raise DfkdError(f"{path}: {len(class_names)} class names for {num_classes} classes")
    external: dict[str, str] = {}
    for loc in facts.external_data:
        target = resolve_external_path(Path(path).parent, loc)
        if target is None or not target.is_file():
            raise DfkdError(f"{path}: external data {loc!r} is missing or outside the model's folder; "
                            "keep the .data file beside the model")
        external[loc] = sha256_file(target)
    return ModelBinding(
        file_name=path.name, sha256=sha256_file(path), ir_version=facts.ir_version,
        opset_imports=facts.opset_imports, input_name=inp.name, input_shape=(-1, *inp.shape[1:]),
        input_dtype=inp.dtype or "float32", logits_name=logits_name, num_classes=num_classes,
        input_domain=input_domain, external_data=external, class_names=class_names,
    )
