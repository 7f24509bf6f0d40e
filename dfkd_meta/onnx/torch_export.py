"""Write a torch classifier as ONNX, with what dfkd-meta knows about it in the model's metadata.

Metadata (ONNX ``metadata_props``, merged, never cleared): the input convention the model was
trained with (``dfkd_meta.input_convention``) and, for teachers trained with dropout, the keep
probability of each hidden pre-activation (``dfkd_meta.dropout_keep_prob``).
"""
from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from ..convention import METADATA_KEY, InputConvention
from ..errors import UsageError
from ..fileio import atomic_path

INPUT_NAME, LOGITS_NAME = "input", "logits"
DROPOUT_KEY = "dfkd_meta.dropout_keep_prob"  # {tensor name: keep probability}
EXPORTERS = ("legacy", "dynamo")


def export_onnx(model: nn.Module, input_shape: tuple[int, ...], path: str | os.PathLike, *,
                exporter: str = "legacy", opset: int | None = None,
                convention: InputConvention | None = None, image_shape: tuple[int, ...] | None = None,
                dropout_keep: list[float | None] | None = None, keep_batchnorm: bool = False) -> Path:
    """Write ``model`` as ONNX with a dynamic batch axis, input 'input' and output 'logits', atomically.

    ``convention`` (with ``image_shape`` when the model takes flattened images) is recorded so that
    export and distill feed the model what it was trained on. ``dropout_keep`` (one entry per hidden
    layer, as models.hidden_dropout_keep_probs gives) is recorded for the sidecar. The dynamo
    exporter writes the weights to ``<name>.data`` beside the model. Both exporters fold BatchNorm
    into the convolutions; ``keep_batchnorm`` keeps the BatchNormalization nodes with their running
    statistics (legacy: no constant folding; dynamo: no graph optimisation), the prior that
    DeepInversion, CMI and FastDFKD read.
    """
    path = Path(path)
    model = model.eval().cpu()
    example = torch.zeros(2, *input_shape)
    if exporter not in EXPORTERS:
        raise UsageError(f"{{exporter}} {exporter!r}: expected one of {', '.join(EXPORTERS)}")
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            if exporter == "legacy":
                torch.onnx.export(model, (example,), str(tmp), dynamo=False, opset_version=opset or 17,
                                  do_constant_folding=not keep_batchnorm,
                                  input_names=[INPUT_NAME], output_names=[LOGITS_NAME],
                                  dynamic_axes={INPUT_NAME: {0: "batch"}, LOGITS_NAME: {0: "batch"}})
            else:
                exported = torch.onnx.export(model, (example,), dynamo=True, opset_version=opset or 18,
                                             optimize=not keep_batchnorm,
                                             input_names=[INPUT_NAME], output_names=[LOGITS_NAME],
                                             dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
                exported.save(str(tmp), external_data=True)
                data_file = tmp.parent / (tmp.name + ".data")
                # The temp name is baked into the model's external-data references: rewrite them.
                m = onnx.load(str(tmp), load_external_data=False)
                _relocate_external(m, data_file.name, path.name + ".data")
                onnx.save_model(m, str(tmp))
                os.replace(data_file, path.parent / (path.name + ".data"))
        finally:
            logging.disable(logging.NOTSET)
        props = {}
        if convention is not None:
            props[METADATA_KEY] = convention.to_metadata(image_shape)
        if dropout_keep is not None:
            mapping = _dropout_mapping(tmp, dropout_keep)
            if mapping:
                props[DROPOUT_KEY] = json.dumps(mapping)
        if props:
            set_metadata(tmp, props)
    return path


def _relocate_external(model: onnx.ModelProto, old: str, new: str) -> None:
    for t in model.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location" and entry.value == old:
                entry.value = new


def _dropout_mapping(path: Path, keep: list[float | None]) -> dict[str, float]:
    from .inspect import candidate_layers, model_facts

    model = onnx.load(str(path), load_external_data=False)
    hidden = [c.name for c in candidate_layers(model_facts(path, model), model)
              if c.default and c.kind == "pre_activation"]
    if len(hidden) != len(keep):
        return {}  # the graph's layers do not map one to one onto the module's: record nothing rather than guess
    return {name: p for name, p in zip(hidden, keep) if p is not None}


def set_metadata(path: str | os.PathLike, props: dict[str, str]) -> None:
    """Merge ``props`` into the ONNX file's metadata_props (other entries are kept), in place."""
    model = onnx.load(str(path), load_external_data=False)
    existing = {p.key: p.value for p in model.metadata_props}
    existing.update(props)
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, existing)
    onnx.save_model(model, str(path))


def model_metadata(model: onnx.ModelProto) -> dict[str, str]:
    """The model's metadata_props as a dict."""
    return {p.key: p.value for p in model.metadata_props}


def dropout_keep_from_metadata(model: onnx.ModelProto) -> dict[str, float]:
    text = model_metadata(model).get(DROPOUT_KEY)
    if text is None:
        return {}
    try:
        return {str(k): float(v) for k, v in json.loads(text).items()}
    except (ValueError, AttributeError, TypeError):
        return {}
