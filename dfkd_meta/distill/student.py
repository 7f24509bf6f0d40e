"""The student after training: its accuracy beside the teacher's, and its ONNX file."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from ..convention import InputConvention
from ..data import DataSource, Feed, fits
from ..errors import DfkdError
from ..fileio import atomic_path
from ..onnx.graph import OnnxModule, load_onnx
from ..onnx.runtime import OrtModel
from ..onnx.torch_export import export_onnx
from ..transfer import TransferSet, read_transfer


def teacher_logits(teacher: str | Path, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """The teacher's logits on model inputs ``x`` through ONNX Runtime (flattened first if the teacher takes vectors)."""
    run = _teacher_runner(teacher)
    return np.concatenate([run(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def _teacher_runner(teacher: str | Path):
    """One ONNX Runtime session over ``teacher``: a function from a batch of model inputs to its logits."""
    runner = OrtModel(teacher)
    name = runner.output_names[0]
    return lambda x: runner.run(teacher_input(runner, x, teacher))[name]


def teacher_input(runner: OrtModel, x: np.ndarray, teacher: str | Path) -> np.ndarray:
    """Model inputs ``x`` in the shape the teacher's session takes (a teacher of flat vectors fed images)."""
    shape = tuple(runner.session.get_inputs()[0].shape[1:])
    if all(isinstance(d, int) for d in shape) and tuple(x.shape[1:]) != shape:
        if not fits(tuple(x.shape[1:]), shape):
            raise DfkdError(f"{teacher}: takes inputs of shape {list(shape)}, the data has {list(x.shape[1:])}; "
                            "pass {resize} N or the matching data set")
        return x.reshape(len(x), *shape)
    return x


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray, device: torch.device, batch_size: int = 1024) -> np.ndarray:
    model.eval()
    return np.concatenate([model(torch.from_numpy(x[i:i + batch_size]).to(device)).argmax(1).cpu().numpy()
                           for i in range(0, len(x), batch_size)])


class ScaledLogits(nn.Module):
    """A student whose logits are its network's outputs times a fixed ``scale``: trained with an L1 loss divided by
    ``scale``, the network learns the teacher's logits in units of their spread, so one learning rate serves
    teachers of any logit scale, and the student still answers in the teacher's units (the scale is exported)."""

    def __init__(self, net: nn.Module, scale: float):
        super().__init__()
        self.net = net
        self.register_buffer("scale", torch.tensor(float(scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * self.scale


def evaluate_pair(teacher: str | Path, student: nn.Module, data: DataSource, split: str, device: torch.device,
                  feed: Feed) -> dict:
    """Top-1 accuracy of teacher and student on labelled data fed through ``feed``, and their agreement; the split
    is streamed one batch at a time (an image folder's test split need not fit in memory)."""
    run = _teacher_runner(teacher)
    n = teacher_right = student_right = agree = 0
    for x, y in data.batches(split, 512, feed=feed):
        t, s = run(x).argmax(1), predict(student, x, device)
        n += len(y)
        teacher_right, student_right, agree = (teacher_right + int((t == y).sum()), student_right + int((s == y).sum()),
                                               agree + int((t == s).sum()))
    if n == 0:
        raise DfkdError(f"{data.spec or data.name}: its {split} split has no examples to evaluate on; pass data with "
                        "labelled examples")
    return {"eval_data": data.spec or data.name, "eval_split": split, "eval_samples": n,
            "teacher_accuracy": teacher_right / n, "student_accuracy": student_right / n, "agreement": agree / n}


def write_student(student: nn.Module, input_shape: tuple[int, ...], path: str | Path, report: dict | None = None,
                  *, convention: InputConvention | None = None, image_shape: tuple[int, ...] | None = None) -> Path:
    """The student as ONNX (checked with onnx.checker, parity with torch checked), plus ``<path>.json``.

    ``convention`` (the teacher's, which the student was trained under) is recorded in the ONNX
    metadata, so the student can be exported or distilled further without guessing.
    """
    path = export_onnx(student.cpu().eval(), input_shape, path, convention=convention, image_shape=image_shape)
    onnx.checker.check_model(str(path))
    x = torch.randn(4, *input_shape)
    with torch.no_grad():
        ref = student(x).numpy()
    got = OnnxModule(load_onnx(path), source=str(path))(x).detach().numpy()
    if not np.allclose(got, ref, rtol=1e-4, atol=1e-5):
        raise DfkdError(f"{path}: the exported student differs from the torch student; report this as a bug")
    if report is not None:
        with atomic_path(path.with_suffix(".json")) as tmp:
            tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return path


def load_transfer_for(teacher: str | os.PathLike, transfer: str | os.PathLike) -> TransferSet:
    num_classes = OrtModel(teacher).session.get_outputs()[0].shape[-1]
    return read_transfer(transfer, num_classes if isinstance(num_classes, int) else None)
