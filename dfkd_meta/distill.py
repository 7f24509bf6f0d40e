"""Knowledge distillation of a student from an ONNX teacher, on a transfer set or on real data.

Loss (Hinton et al. 2015): (1 - alpha) * KL(softmax(t / T) || softmax(s / T)) * T^2
+ alpha * CE(s, argmax t). The hard labels are the teacher's own predictions: no ground truth is
assumed. The teacher runs through ONNX Runtime (no gradient is needed).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .convention import InputConvention, from_domain, resolve
from .data import DataSource, Feed, fits
from .device import resolve_device
from .errors import DfkdError, UsageError
from .fileio import atomic_path, sha256_file
from .onnx.graph import OnnxModule, load_onnx
from .onnx.inspect import load_model_proto
from .onnx.runtime import OrtModel
from .onnx.torch_export import export_onnx, model_metadata
from .stats.export import DEFAULT_TEMPERATURE
from .stats.teacher_check import AccuracyMeter, default_min_accuracy, require_fit
from .transfer import TransferSet


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
            alpha: float = 0.0) -> torch.Tensor:
    """Mean over the batch of the distillation loss above."""
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    p_t = F.softmax(teacher_logits / temperature, dim=1)
    kl = F.kl_div(log_p_s, p_t, reduction="batchmean") * temperature ** 2
    if alpha == 0.0:
        return kl
    return (1 - alpha) * kl + alpha * F.cross_entropy(student_logits, teacher_logits.argmax(1))


@dataclass
class DistillConfig:
    temperature: float | None = None  # None: the transfer set's (the sidecar's) temperature, else DEFAULT_TEMPERATURE
    alpha: float = 0.0
    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    force: bool = False  # distill on real data even when the teacher fails the accuracy check there


@dataclass
class DistillResult:
    student: nn.Module
    report: dict = field(default_factory=dict)
    convention: InputConvention | None = None  # what the student takes, as the teacher does (None: unknown)
    image_shape: tuple[int, ...] | None = None  # the images behind a flat student input, when known


def teacher_logits(teacher: str | Path, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """The teacher's logits on model inputs ``x`` through ONNX Runtime (flattened first if the teacher takes vectors)."""
    runner = OrtModel(teacher)
    name = runner.output_names[0]
    shape = tuple(runner.session.get_inputs()[0].shape[1:])
    if all(isinstance(d, int) for d in shape) and tuple(x.shape[1:]) != shape:
        if not fits(tuple(x.shape[1:]), shape):
            raise DfkdError(f"{teacher}: takes inputs of shape {list(shape)}, the data has {list(x.shape[1:])}; "
                            "pass {resize} N or the matching data set")
        x = x.reshape(len(x), *shape)
    return np.concatenate([runner.run(x[i:i + batch_size])[name] for i in range(0, len(x), batch_size)])


@torch.no_grad()
def _predict(model: nn.Module, x: np.ndarray, device: torch.device, batch_size: int = 1024) -> np.ndarray:
    model.eval()
    return np.concatenate([model(torch.from_numpy(x[i:i + batch_size]).to(device)).argmax(1).cpu().numpy()
                           for i in range(0, len(x), batch_size)])


def evaluate_pair(teacher: str | Path, student: nn.Module, data: DataSource, split: str, device: torch.device,
                  feed: Feed) -> dict:
    """Top-1 accuracy of teacher and student on labelled data fed through ``feed``, and their agreement."""
    x, y = data.arrays(split, feed=feed)
    t = teacher_logits(teacher, x).argmax(1)
    s = _predict(student, x, device)
    return {"eval_data": data.spec or data.name, "eval_split": split, "eval_samples": int(len(y)),
            "teacher_accuracy": float((t == y).mean()), "student_accuracy": float((s == y).mean()),
            "agreement": float((t == s).mean())}


def teacher_convention(teacher: str | Path, source: TransferSet | DataSource,
                       input_norm: str | InputConvention | None = None,
                       eval_data: DataSource | None = None) -> InputConvention | None:
    """How to feed ``teacher``: the option, else what a transfer set records, else the teacher's metadata.

    The data whose statistics a ``data`` convention needs is ``source`` itself, or ``eval_data``
    for a transfer set.
    """
    if input_norm is None and isinstance(source, TransferSet) and source.input_domain is not None:
        return from_domain(source.input_domain)
    stats = source if isinstance(source, DataSource) else eval_data
    try:
        return resolve(input_norm, model_metadata(load_model_proto(teacher)), where=str(teacher),
                       data_stats=stats.channel_stats if stats else None,
                       scalar_data_stats=stats.scalar_stats if stats else None)
    except UsageError:
        if stats is None:  # a transfer set of format 1.0 and no data: nothing is fed raw, so nothing to know
            return None
        raise


def _save_checkpoint(path: Path, student: nn.Module, opt, sched, epoch: int, history: list) -> None:
    with atomic_path(path) as tmp:
        torch.save({"student": student.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "epoch": epoch, "history": json.dumps(history)}, tmp)


def _load_checkpoint(path: Path, student: nn.Module, opt, sched) -> tuple[int, list]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle arbitrary objects
        student.load_state_dict(state["student"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        return int(state["epoch"]), json.loads(state["history"])
    except Exception as exc:
        raise DfkdError(f"{path}: cannot resume from this checkpoint ({type(exc).__name__}: {exc}); "
                        "delete it to start over") from None


def distill(teacher: str | Path, student: nn.Module, source: TransferSet | DataSource, cfg: DistillConfig, *,
            input_norm: str | InputConvention | None = None, device: str = "auto",
            checkpoint: str | Path | None = None, resume: bool = False, eval_data: DataSource | None = None,
            progress: bool = True) -> DistillResult:
    """Train ``student`` to match the teacher on ``source``'s inputs (a transfer set, or real data's train split).

    The student takes what the teacher takes: a transfer set's model inputs, or real data fed
    through the teacher's input convention (``input_norm``, else the teacher's metadata, else raw
    values), in the data's own shape. On real data the teacher must pass the accuracy check first.
    """
    if cfg.epochs < 1 or cfg.batch_size < 1 or cfg.lr <= 0 or not 0 <= cfg.alpha <= 1:
        raise UsageError("{epochs} and {batch_size} must be >= 1, {lr} > 0 and 0 <= {alpha} <= 1")
    teacher = Path(teacher)
    dev = resolve_device(device)
    torch.manual_seed(cfg.seed)
    convention = teacher_convention(teacher, source, input_norm, eval_data)
    if isinstance(source, TransferSet):
        x = source.model_inputs()
        expected = source.provenance.get("model_sha256")
        if expected and expected != sha256_file(teacher):
            raise DfkdError(f"{teacher}: this is not the teacher the transfer set was reconstructed from "
                            f"(SHA-256 {expected[:16]}... expected); pass that teacher")
        temperature = cfg.temperature or source.temperature
        source_info = {"kind": "transfer", "input_space": source.input_space,
                       **{k: v for k, v in source.provenance.items()}}
        eval_feed = Feed(convention, tuple(x.shape[1:]))
    else:
        eval_feed = Feed(convention)
        x, y = source.arrays("train", feed=eval_feed)
        temperature = cfg.temperature or DEFAULT_TEMPERATURE
        source_info = {"kind": "data", "data": source.spec or source.name, "samples": int(len(x))}
    if temperature <= 0:
        raise UsageError(f"{{temperature}} {temperature}: must be > 0")
    t0 = time.perf_counter()
    t_logits = teacher_logits(teacher, x)
    if isinstance(source, DataSource):
        meter = AccuracyMeter()
        meter.update(t_logits, y)
        require_fit(meter, default_min_accuracy(t_logits.shape[1]), model=str(teacher),
                    data=source.spec or source.name, convention=convention.describe(), force=cfg.force)
        source_info["teacher_accuracy"] = meter.accuracy
    x_t, t_t = torch.from_numpy(x), torch.from_numpy(t_logits)
    student.to(dev)
    params = [p for p in student.parameters() if p.requires_grad]
    if not params:
        raise UsageError(f"{{student}} {type(student).__name__}: the student has no trainable parameters")
    opt = torch.optim.Adam(params, lr=cfg.lr)
    steps_per_epoch = -(-len(x) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps_per_epoch)
    ckpt = Path(checkpoint) if checkpoint else None
    start, history = 0, []
    if resume and ckpt is not None and ckpt.exists():
        start, history = _load_checkpoint(ckpt, student, opt, sched)
    for epoch in range(start, cfg.epochs):
        student.train()
        order = torch.from_numpy(np.random.default_rng([cfg.seed, epoch]).permutation(len(x)))
        losses = []
        bar = tqdm(range(steps_per_epoch), desc=f"distill epoch {epoch + 1}/{cfg.epochs}", leave=False,
                   disable=None if progress else True)
        for i in bar:
            idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            loss = kd_loss(student(x_t[idx].to(dev)), t_t[idx].to(dev), temperature, cfg.alpha)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            bar.set_postfix(kd=f"{np.mean(losses[-20:]):.4f}", refresh=False)
        history.append({"epoch": epoch + 1, "kd_loss": float(np.mean(losses))})
        if ckpt is not None:
            _save_checkpoint(ckpt, student, opt, sched, epoch + 1, history)
    student.eval()
    seconds = time.perf_counter() - t0
    agreement_on_inputs = float((_predict(student, x, dev) == t_logits.argmax(1)).mean())
    report = {"settings": {**asdict(cfg), "temperature": temperature}, "source": source_info,
              "teacher": str(teacher), "teacher_sha256": sha256_file(teacher), "samples": int(len(x)),
              "input_convention": None if convention is None else {
                  "name": convention.name, "source": convention.source, "norm_mean": list(convention.norm_mean),
                  "norm_std": list(convention.norm_std)},
              "distill_seconds": round(seconds, 3), "history": history,
              "agreement_on_training_inputs": agreement_on_inputs}
    if eval_data is not None:
        report.update(evaluate_pair(teacher, student, eval_data, "test" if eval_data.has_split("test") else "train",
                                    dev, eval_feed))
    image = source.input_domain.get("image_shape") if isinstance(source, TransferSet) and source.input_domain else None
    return DistillResult(student, report, convention, tuple(image) if image and len(x.shape) == 2 else None)


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
    from .transfer import read_transfer

    num_classes = OrtModel(teacher).session.get_outputs()[0].shape[-1]
    return read_transfer(transfer, num_classes if isinstance(num_classes, int) else None)
