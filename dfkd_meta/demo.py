"""The whole pipeline end to end: train -> export -> validate -> reconstruct -> distill -> table."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import settings
from .data import load_data
from .distill import DistillConfig, distill, evaluate_pair
from .fileio import atomic_path
from .models import build_model, hidden_dropout_keep_probs
from .onnx.torch_export import export_onnx
from .reconstruct.synthesize import ReconstructConfig, reconstruct
from .sidecar import validate
from .stats.export import export_release
from .train import train_teacher
from .transfer import read_transfer


@dataclass
class DemoConfig:
    data: str = "digits"
    resize: int | None = None
    teacher: str = "hinton-small"
    student: str = "hinton-tiny"
    teacher_epochs: int = 40
    student_epochs: int = 30
    objectives: tuple[str, ...] = ("top_layer", "all_layers", "all_layers_dropout", "spectral_all_layers",
                                   "spectral_layer_pairs", "zskd")
    samples: int = 2000
    steps: int = 200
    batch_size: int = 500
    seed: int = 0
    device: str = "auto"

    @classmethod
    def for_data(cls, data: str, **overrides) -> DemoConfig:
        """Defaults for the data set: small MLPs on digits, the paper's hinton1200 -> hinton800 on MNIST."""
        base = {} if data == "digits" else {"teacher": "hinton1200", "student": "hinton800", "teacher_epochs": 10,
                                             "student_epochs": 10, "samples": 12000, "steps": 200, "batch_size": 1000}
        return cls(data=data, **{**base, **{k: v for k, v in overrides.items() if v is not None}})


@dataclass
class DemoResult:
    rows: list[dict] = field(default_factory=list)
    folder: Path | None = None

    def table(self) -> str:
        lines = ["| method | test accuracy | agreement with teacher | reconstruct s | distill s |",
                 "| --- | ---: | ---: | ---: | ---: |"]
        for r in self.rows:
            fmt = lambda v, p=".3f": "" if v is None else format(v, p)  # noqa: E731
            lines.append(f"| {r['method']} | {fmt(r['accuracy'])} | {fmt(r.get('agreement'))} | "
                         f"{fmt(r.get('reconstruct_seconds'), '.1f')} | {fmt(r.get('distill_seconds'), '.1f')} |")
        return "\n".join(lines)


def run_demo(cfg: DemoConfig, out_dir: str | Path = "runs/demo", progress: bool = True, log=print) -> DemoResult:
    out = Path(out_dir)
    data = load_data(cfg.data, cfg.resize)
    dev = cfg.device
    torch.manual_seed(cfg.seed)
    log(f"[1/5] training teacher {cfg.teacher} on {cfg.data} ({cfg.teacher_epochs} epochs)")
    trained = train_teacher(build_model(cfg.teacher, data.input_shape, data.num_classes), data,
                            epochs=cfg.teacher_epochs, seed=cfg.seed, device=dev, progress=progress)
    teacher_path = export_onnx(trained.model, data.input_shape, out / "teacher.onnx", convention=trained.convention,
                               dropout_keep=hidden_dropout_keep_probs(trained.model))
    log(f"[2/5] exporting the release (ONNX + sidecar) to {out / 'release'}")
    release = export_release(teacher_path, data, out / "release", progress=progress,
                             overwrite=True)  # the demo owns its folder: a rerun replaces it
    log("[3/5] validating the sidecar against the model")
    report = validate(release.sidecar_path, release.model_path)
    if not report.valid:
        raise RuntimeError(report.summary())
    result = DemoResult(folder=out)
    result.rows.append({"method": f"teacher {cfg.teacher}", "accuracy": trained.test_accuracy, "agreement": 1.0})

    def student_row(method: str, source, recon_s=None):
        torch.manual_seed(cfg.seed)
        student = build_model(cfg.student, data.input_shape, data.num_classes)
        r = distill(release.model_path, student, source, DistillConfig(epochs=cfg.student_epochs, seed=cfg.seed),
                    device=dev, eval_data=data, progress=progress)
        result.rows.append({"method": method, "accuracy": r.report["student_accuracy"],
                            "agreement": r.report["agreement"], "reconstruct_seconds": recon_s,
                            "distill_seconds": r.report["distill_seconds"]})
        log(f"      {method}: student accuracy {r.report['student_accuracy']:.3f}")

    log(f"[4/5] distilling {cfg.student} with the real data (vanilla KD baseline)")
    student_row(f"student {cfg.student}, KD on real data", data)
    log(f"[5/5] reconstructing transfer sets ({cfg.samples} samples, {cfg.steps} steps) and distilling")
    for objective in ("noise", *cfg.objectives):
        t0 = time.perf_counter()
        rc = reconstruct(release.model_path, release.sidecar_path, out / f"transfer_{objective}.h5",
                         ReconstructConfig(objective=objective, samples=cfg.samples, steps=cfg.steps,
                                           batch_size=cfg.batch_size, seed=cfg.seed), device=dev, progress=progress)
        label = "noise (data-free baseline)" if objective == "noise" else \
            "zskd (metadata-free baseline)" if objective == "zskd" else f"sidecar: {objective}"
        student_row(f"student from {label}", read_transfer(rc.path), time.perf_counter() - t0)
    with atomic_path(out / "demo.json") as tmp:
        tmp.write_text(json.dumps({"config": settings(cfg), "rows": result.rows}, indent=2, default=str))
    return result


__all__ = ["DemoConfig", "DemoResult", "run_demo", "evaluate_pair"]
