"""The demo: one table that shows what the sidecar buys a consumer.

``demo`` (the default, ``data="fashion"``) is the consumer's side only. The package ships a release
(a LeNet-5 trained on Fashion-MNIST, its ONNX file and its sidecar) and 2,000 held-out test images.
The demo validates the release, then trains the same student once per row, every row within the
same budget (about 30 s on 2 CPU cores): metadata-free baselines (random inputs, ZSKD, DAFL with the
student in the loop) beside the same kinds of method given the sidecar.

``demo --data digits`` (or ``mnist:DIR``, ``npz:FILE``) runs the whole pipeline on that data:
train a teacher, export its release, validate it, then distil from real data, random inputs and
each reconstruction objective.

A row is a small recipe (``OfflineRow``, ``OnlineRow``, ``RealDataRow``) run against a
``Consumer``: the teacher, the sidecar, the student architecture and the evaluation data.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import assets
from .config import DistillConfig, OnlineConfig, ReconstructConfig, settings
from .data import DataSource, load_data, load_fashion_slice
from .distill import distill, distill_online
from .errors import DfkdError
from .fileio import atomic_path
from .models import build_model, hidden_dropout_keep_probs
from .reconstruct.objectives import OBJECTIVES
from .sidecar import validate


@dataclass
class Consumer:
    """What every row trains against: the release, the student architecture, the evaluation data."""

    teacher: Path
    sidecar: Path
    student: str
    eval_data: DataSource
    work: Path  # transfer sets go here
    seed: int = 0
    device: str = "auto"
    progress: bool = True
    train_data: DataSource | None = None  # for the real-data row only

    def eval_flags(self) -> str:
        """The ``--eval`` flags that score a student on this consumer's evaluation data from the command line."""
        resize = f" --resize {self.eval_data.resize}" if self.eval_data.resize else ""
        return f"--eval {self.eval_data.spec or self.eval_data.name}{resize}"

    def new_student(self) -> torch.nn.Module:
        torch.manual_seed(self.seed)
        return build_model(self.student, self.eval_data.input_shape, self.eval_data.num_classes)


def _row(label: str, metadata: str, report: dict, seconds: float, teacher_examples: int | None, command: str) -> dict:
    return {"method": label, "metadata": metadata, "accuracy": report["student_accuracy"],
            "agreement": report["agreement"], "seconds": round(seconds, 1), "teacher_examples": teacher_examples,
            "teacher_accuracy": report["teacher_accuracy"], "command": command}


@dataclass(frozen=True)
class OfflineRow:
    """Reconstruct a transfer set with ``objective``, then distil the student on it for ``epochs``."""

    objective: str
    samples: int
    steps: int
    epochs: int
    lr: float = ReconstructConfig.lr
    batch_size: int = ReconstructConfig.batch_size

    @property
    def uses_sidecar(self) -> bool:
        return OBJECTIVES[self.objective].uses_sidecar

    @property
    def label(self) -> str:
        steps = f", {self.steps} steps" if self.steps and OBJECTIVES[self.objective].optimise else ""
        return f"{self.objective} ({self.samples:,} inputs{steps}, {self.epochs} epochs)"

    def run(self, c: Consumer) -> dict:
        from .reconstruct.synthesize import reconstruct
        from .transfer import read_transfer

        t0 = time.perf_counter()
        rc = reconstruct(c.teacher, c.sidecar, c.work / f"transfer_{self.objective}.h5",
                         ReconstructConfig(objective=self.objective, samples=self.samples, steps=self.steps,
                                           lr=self.lr, batch_size=self.batch_size, seed=c.seed),
                         device=c.device, progress=c.progress)
        r = distill(c.teacher, c.new_student(), read_transfer(rc.path), DistillConfig(epochs=self.epochs, seed=c.seed),
                    device=c.device, eval_data=c.eval_data, progress=c.progress)
        examples = rc.summary["teacher_forward_examples"] + r.report["samples"]  # reconstruction, then labelling
        command = (f"dfkd-meta reconstruct --model {c.teacher} --sidecar {c.sidecar} --objective {self.objective} "
                   f"--samples {self.samples} --steps {self.steps} --lr {self.lr} --batch-size {self.batch_size} "
                   f"--seed {c.seed} -o transfer.h5 && dfkd-meta distill --teacher {c.teacher} --transfer transfer.h5 "
                   f"--student {c.student} --epochs {self.epochs} --seed {c.seed} {c.eval_flags()} -o student.onnx")
        return _row(self.label, "sidecar" if self.uses_sidecar else "none", r.report, time.perf_counter() - t0,
                    examples, command)


@dataclass(frozen=True)
class OnlineRow:
    """Train the student on batches ``method`` synthesises with the student in the loop (with or without the sidecar)."""

    method: str
    sidecar: bool
    iterations: int

    @property
    def uses_sidecar(self) -> bool:
        return self.sidecar

    @property
    def label(self) -> str:
        return f"{self.method} online{' + sidecar' if self.sidecar else ''} ({self.iterations} iterations)"

    def run(self, c: Consumer) -> dict:
        t0 = time.perf_counter()
        cfg = OnlineConfig(method=self.method, iterations=self.iterations, seed=c.seed,
                           checkpoint_every=self.iterations)
        r = distill_online(c.teacher, c.new_student(), cfg, sidecar=c.sidecar if self.sidecar else None,
                           device=c.device, eval_data=c.eval_data, progress=c.progress, log=lambda _: None)
        command = (f"dfkd-meta distill --teacher {c.teacher} --method {self.method} "
                   f"{f'--sidecar {c.sidecar} ' if self.sidecar else ''}--iterations {self.iterations} "
                   f"--student {c.student} --seed {c.seed} {c.eval_flags()} -o student.onnx")
        return _row(self.label, "sidecar" if self.uses_sidecar else "none", r.report, time.perf_counter() - t0,
                    r.report["teacher_forward_examples"], command)


@dataclass(frozen=True)
class RealDataRow:
    """Vanilla KD on the real training data: the cap every data-free row is judged against."""

    epochs: int
    uses_sidecar = False

    @property
    def label(self) -> str:
        return f"KD on the real training data ({self.epochs} epochs)"

    def run(self, c: Consumer) -> dict:
        if c.train_data is None:
            raise DfkdError("the real-data row needs training data; the consumer-side demo has none")
        t0 = time.perf_counter()
        r = distill(c.teacher, c.new_student(), c.train_data, DistillConfig(epochs=self.epochs, seed=c.seed),
                    device=c.device, eval_data=c.eval_data, progress=c.progress)
        resize = f" --resize {c.train_data.resize}" if c.train_data.resize else ""
        command = (f"dfkd-meta distill --teacher {c.teacher} --data {c.train_data.spec}{resize} --student {c.student} "
                   f"--epochs {self.epochs} --seed {c.seed} {c.eval_flags()} -o student.onnx")
        return _row(self.label, "real data", r.report, time.perf_counter() - t0, r.report["samples"], command)


# The consumer-side demo's rows, each about 25 s on 2 CPU cores (measured: README). DAFL is the best
# metadata-free online method at this budget (0.45 at 70 iterations against DFAD's 0.31 at 150
# iterations, 52 s); it runs with and without the sidecar. The noise and first_layer_gaussian rows
# distil the same number of inputs for the same epochs: they differ only in where the inputs come from.
FASHION_ROWS = (
    OfflineRow("noise", samples=16_000, steps=0, epochs=12),
    OfflineRow("zskd", samples=3_000, steps=50, epochs=10),
    OnlineRow("dafl", sidecar=False, iterations=95),
    OnlineRow("dafl", sidecar=True, iterations=95),
    OfflineRow("first_layer_gaussian", samples=16_000, steps=0, epochs=12),
)


_DEFAULTS = {  # per kind of demo; None fields of DemoConfig take these
    "fashion": {"teacher": "lenet5", "student": "lenet5-half", "objectives": ()},
    "digits": {"teacher": "hinton-small", "student": "hinton-tiny", "teacher_epochs": 40, "student_epochs": 30,
               "samples": 2000, "steps": 200, "batch_size": 500},
    "other": {"teacher": "hinton1200", "student": "hinton800", "teacher_epochs": 10, "student_epochs": 10,
              "samples": 12000, "steps": 200, "batch_size": 1000},  # the paper's MNIST pair
}
_OBJECTIVES = ("top_layer", "all_layers", "all_layers_dropout", "spectral_all_layers", "spectral_layer_pairs", "zskd")


@dataclass
class DemoConfig:
    """``data`` "fashion" is the embedded release (consumer side); any other data spec runs the whole pipeline.

    Settings left None take the defaults for that kind of demo; the whole-pipeline settings (teacher,
    epochs, samples, steps, objectives) do not apply to the fashion demo, whose rows are fixed.
    """

    data: str = "fashion"
    resize: int | None = None
    teacher: str | None = None
    student: str | None = None
    teacher_epochs: int | None = None
    student_epochs: int | None = None
    objectives: tuple[str, ...] | None = None
    samples: int | None = None
    steps: int | None = None
    batch_size: int | None = None
    seed: int = 0
    device: str = "auto"

    def __post_init__(self):
        kind = self.data if self.data in ("fashion", "digits") else "other"
        for key, value in {"objectives": _OBJECTIVES, **_DEFAULTS[kind]}.items():
            if getattr(self, key) is None or (key == "objectives" and kind == "fashion"):
                setattr(self, key, value)

    @property
    def consumer_only(self) -> bool:
        return self.data == "fashion"

    @classmethod
    def for_data(cls, data: str, **overrides) -> DemoConfig:
        """The defaults for ``data``, with the ``overrides`` that are not None."""
        return cls(data=data, **{k: v for k, v in overrides.items() if v is not None})

    def rows(self) -> tuple:
        if self.consumer_only:
            return FASHION_ROWS
        return (RealDataRow(self.student_epochs),
                *(OfflineRow(o, self.samples, self.steps, self.student_epochs, batch_size=self.batch_size)
                  for o in ("noise", *self.objectives)))


@dataclass
class DemoResult:
    rows: list[dict] = field(default_factory=list)
    folder: Path | None = None

    def table(self) -> str:
        lines = ["| student trained on | metadata | test accuracy | agreement with teacher | seconds | teacher examples |",
                 "| --- | --- | ---: | ---: | ---: | ---: |"]
        for r in self.rows:
            fmt = lambda v, p=".3f": "" if v is None else format(v, p)  # noqa: E731
            lines.append(f"| {r['method']} | {r['metadata']} | {fmt(r['accuracy'])} | {fmt(r.get('agreement'))} | "
                         f"{fmt(r.get('seconds'), '.1f')} | {fmt(r.get('teacher_examples'), ',')} |")
        return "\n".join(lines)

    def verdict(self) -> str | None:
        """One line: the best row with the sidecar against the best row without any metadata."""
        best = {m: max((r for r in self.rows if r["metadata"] == m), key=lambda r: r["accuracy"], default=None)
                for m in ("sidecar", "none")}
        if best["sidecar"] is None or best["none"] is None:
            return None
        gap = best["sidecar"]["accuracy"] - best["none"]["accuracy"]
        return (f"best with the sidecar: {best['sidecar']['accuracy']:.3f} ({best['sidecar']['method']}); best without "
                f"metadata: {best['none']['accuracy']:.3f} ({best['none']['method']}); difference {gap:+.3f}")


def run_demo(cfg: DemoConfig, out_dir: str | Path = "runs/demo", progress: bool = True, log=print) -> DemoResult:
    """Run the demo's rows (training and exporting a teacher first unless ``cfg.consumer_only``); writes demo.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = cfg.rows()
    if cfg.consumer_only:
        teacher, sidecar, eval_data, train_data = assets.FASHION_TEACHER, assets.FASHION_SIDECAR, load_fashion_slice(), None
        log(f"[1/2] validating the embedded release ({assets.FASHION_RELEASE})")
        _require_valid(sidecar, teacher)
        teacher_label = "teacher lenet5 (the release's)"
    else:
        teacher, sidecar, eval_data = _train_and_export(cfg, out, progress, log)
        train_data = eval_data
        teacher_label = f"teacher {cfg.teacher}"
    consumer = Consumer(teacher, sidecar, cfg.student, eval_data, out, cfg.seed, cfg.device, progress, train_data)
    result = DemoResult(folder=out)
    step = "[2/2]" if cfg.consumer_only else "[4/4]"
    log(f"{step} training student {cfg.student} {len(rows)} times, once per row, seed {cfg.seed}")
    for i, row in enumerate(rows, 1):
        r = row.run(consumer)
        result.rows.append(r)
        log(f"      {i}/{len(rows)} {r['method']}: accuracy {r['accuracy']:.3f} ({r['seconds']:.0f} s)")
    result.rows.insert(0, {"method": teacher_label, "metadata": "", "accuracy": result.rows[0]["teacher_accuracy"],
                           "agreement": 1.0, "seconds": None, "teacher_examples": None, "command": None})
    with atomic_path(out / "demo.json") as tmp:
        tmp.write_text(json.dumps({"config": settings(cfg), "release": {"teacher": str(teacher), "sidecar": str(sidecar)},
                                   "rows": result.rows, "verdict": result.verdict()}, indent=2, default=str))
    return result


def _require_valid(sidecar: Path, teacher: Path) -> None:
    report = validate(sidecar, teacher)
    if not report.valid:
        raise DfkdError(report.summary())


def _train_and_export(cfg: DemoConfig, out: Path, progress: bool, log) -> tuple[Path, Path, DataSource]:
    from .onnx.torch_export import export_onnx
    from .stats.export import export_release
    from .train import train_teacher

    data = load_data(cfg.data, cfg.resize)
    torch.manual_seed(cfg.seed)
    log(f"[1/4] training teacher {cfg.teacher} on {cfg.data} ({cfg.teacher_epochs} epochs)")
    trained = train_teacher(build_model(cfg.teacher, data.input_shape, data.num_classes), data,
                            epochs=cfg.teacher_epochs, seed=cfg.seed, device=cfg.device, progress=progress)
    teacher_path = export_onnx(trained.model, data.input_shape, out / "teacher.onnx", convention=trained.convention,
                               dropout_keep=hidden_dropout_keep_probs(trained.model))
    log(f"[2/4] exporting the release (ONNX + sidecar) to {out / 'release'}")
    release = export_release(teacher_path, data, out / "release", progress=progress,
                             overwrite=True)  # the demo owns its folder: a rerun replaces it
    log("[3/4] validating the sidecar against the model")
    _require_valid(release.sidecar_path, release.model_path)
    return release.model_path, release.sidecar_path, data


__all__ = ["Consumer", "DemoConfig", "DemoResult", "FASHION_ROWS", "OfflineRow", "OnlineRow", "RealDataRow",
           "run_demo"]
