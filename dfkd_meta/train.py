"""Teacher training on labelled data, and ONNX export of any torch classifier."""
from __future__ import annotations

import json
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn
from tqdm.auto import tqdm

from .data import DataSource
from .device import resolve_device
from .errors import DfkdError
from .fileio import atomic_path

INPUT_NAME, LOGITS_NAME = "input", "logits"
DROPOUT_KEY = "dfkd_meta.dropout_keep_prob"  # ONNX metadata_props entry: {tensor name: keep probability}


@torch.no_grad()
def evaluate(model: nn.Module, data: DataSource, split: str = "test", batch_size: int = 1024,
             device: str | torch.device = "cpu") -> float:
    """Top-1 accuracy of ``model`` on a labelled split."""
    device = torch.device(device)
    model.eval().to(device)
    correct = total = 0
    for x, y in data.batches(split, batch_size):
        pred = model(torch.from_numpy(x).to(device)).argmax(1).cpu().numpy()
        correct += int((pred == y).sum())
        total += len(y)
    return correct / max(total, 1)


@dataclass
class TrainResult:
    model: nn.Module
    test_accuracy: float | None
    seconds: float
    history: list[dict] = field(default_factory=list)


def train_teacher(model: nn.Module, data: DataSource, *, epochs: int = 10, batch_size: int = 128,
                  lr: float = 1e-3, seed: int = 0, device: str = "auto", progress: bool = True) -> TrainResult:
    """Cross-entropy training with Adam and a cosine schedule; returns the model in eval mode."""
    torch.manual_seed(seed)
    dev = resolve_device(device)
    model.to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * -(-data.size("train") // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    has_test = "test" in data.raw
    history, t0 = [], time.perf_counter()
    for epoch in range(epochs):
        model.train()
        bar = tqdm(data.batches("train", batch_size, shuffle=True, seed=seed + epoch),
                   total=-(-data.size("train") // batch_size), desc=f"epoch {epoch + 1}/{epochs}",
                   disable=None if progress else True, leave=False)
        losses = []
        for x, y in bar:
            logits = model(torch.from_numpy(x).to(dev))
            loss = nn.functional.cross_entropy(logits, torch.from_numpy(y).to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        acc = evaluate(model, data, "test", device=dev) if has_test else None
        history.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "test_accuracy": acc})
        if progress:
            tqdm.write(f"epoch {epoch + 1}/{epochs}: train loss {np.mean(losses):.4f}"
                       + (f", test accuracy {acc:.4f}" if acc is not None else ""))
    model.eval()
    return TrainResult(model, history[-1]["test_accuracy"] if history else None, time.perf_counter() - t0, history)


def export_onnx(model: nn.Module, input_shape: tuple[int, ...], path: str | os.PathLike, *,
                exporter: str = "legacy", opset: int | None = None,
                dropout_keep: list[float | None] | None = None) -> Path:
    """Write ``model`` as ONNX with a dynamic batch axis, input 'input' and output 'logits', atomically.

    ``dropout_keep`` (one entry per hidden layer, as models.hidden_dropout_keep_probs gives) is
    recorded in the model's metadata so that export can put it in the sidecar. The dynamo exporter
    writes the weights to ``<name>.data`` beside the model.
    """
    path = Path(path)
    model = model.eval().cpu()
    example = torch.zeros(2, *input_shape)
    if exporter not in ("legacy", "dynamo"):
        raise DfkdError(f"--exporter {exporter!r}: expected legacy or dynamo")
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            if exporter == "legacy":
                torch.onnx.export(model, (example,), str(tmp), dynamo=False, opset_version=opset or 17,
                                  input_names=[INPUT_NAME], output_names=[LOGITS_NAME],
                                  dynamic_axes={INPUT_NAME: {0: "batch"}, LOGITS_NAME: {0: "batch"}})
            else:
                exported = torch.onnx.export(model, (example,), dynamo=True, opset_version=opset or 18,
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
        if dropout_keep is not None:
            _record_dropout(tmp, dropout_keep)
    return path


def _relocate_external(model: onnx.ModelProto, old: str, new: str) -> None:
    for t in model.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location" and entry.value == old:
                entry.value = new


def _record_dropout(path: Path, keep: list[float | None]) -> None:
    from .onnx.inspect import candidate_layers, model_facts

    model = onnx.load(str(path), load_external_data=False)
    hidden = [c.name for c in candidate_layers(model_facts(path, model), model)
              if c.default and c.kind == "pre_activation"]
    if len(hidden) != len(keep):
        return  # the graph's layers do not map one to one onto the module's: record nothing rather than guess
    mapping = {name: p for name, p in zip(hidden, keep) if p is not None}
    if mapping:
        del model.metadata_props[:]
        onnx.helper.set_model_props(model, {DROPOUT_KEY: json.dumps(mapping)})
        onnx.save_model(model, str(path))


def dropout_keep_from_metadata(model: onnx.ModelProto) -> dict[str, float]:
    for prop in model.metadata_props:
        if prop.key == DROPOUT_KEY:
            try:
                return {str(k): float(v) for k, v in json.loads(prop.value).items()}
            except (ValueError, AttributeError):
                return {}
    return {}
