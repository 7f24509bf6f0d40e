"""Run settings: every command's knobs are one dataclass, each default in one place, recorded whole.

``settings(cfg)`` is what a run records in its provenance (the transfer file, the student's
report, a checkpoint); ``changed(recorded, cfg)`` names what differs, so resuming with another
setting is refused by name instead of silently mixing two runs.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from .errors import UsageError


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.compare}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def settings(cfg) -> dict:
    """The whole config as plain JSON-able data (nested dataclasses included)."""
    return json.loads(json.dumps(_plain(cfg), sort_keys=True, default=str))


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def changed(recorded: dict, cfg_or_settings) -> list[str]:
    """``name: recorded -> now`` for every setting that differs (nested names dotted: ``priors.tv``)."""
    now = cfg_or_settings if isinstance(cfg_or_settings, dict) else settings(cfg_or_settings)
    a, b = _flatten(recorded), _flatten(now)
    return [f"{k}: {a.get(k, '(absent)')!r} -> {b.get(k, '(absent)')!r}" for k in sorted(set(a) | set(b))
            if a.get(k, "(absent)") != b.get(k, "(absent)")]


# --- the commands' settings, one default each -------------------------------------------------------

DEFAULT_TEMPERATURE = 8.0  # logits temperature of export, and distillation's when no transfer set says
INITS = ("uniform", "first-layer", "normal")
LOSS_FORMS = ("normalised", "lopes2017")
# where a spectral objective's coefficient targets come from: the stored coefficient statistics, or the
# basis projections of per-layer draws (with covariance factors: coefficients correlated as in the data)
SPECTRAL_TARGETS = ("coefficients", "layers")
SCHEDULES = ("cosine", "constant")
FEATURE_LAYERS = ("all", "channels")
STORE_SPACES = ("model", "raw")


@dataclass
class TrainConfig:
    """Teacher training (``dfkd-meta train``)."""

    input_norm: str = "data"  # the convention the teacher trains under, recorded in its ONNX metadata
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3  # Adam, cosine schedule
    seed: int = 0


@dataclass
class ExportConfig:
    """Every setting of an export (``dfkd-meta export``), with its one default (recorded in the summary)."""

    layers: list[str] | None = None  # tensor names; None: hidden pre-activations and the logits
    temperature: float = DEFAULT_TEMPERATURE  # logits are recorded divided by it
    cov_rank: int = 0  # per-class low-rank covariance factors (0: none)
    spectral_k: int | None = None  # eigenvectors per spectral block (None: 64 all layers, 32 per pair; 0: none)
    split: str = "train"
    batch_size: int | None = None  # None: up to 512, fewer when the tapped activations would pass TAP_BYTES
    limit: int | None = None  # only the first N examples of the split
    input_norm: Any = None  # str or InputConvention; None: the teacher's metadata, else raw values
    value_range: tuple[float, float] | None = None  # raw value range; None: the convention's, else the data's
    min_accuracy: float | None = None  # None: halfway between chance and 1, at least 0.5
    force: bool = False  # export even when the teacher fails the accuracy check
    max_size: float | None = None  # sidecar size budget in MB; None: the larger of 2x the model and 64 MB
    spectral_max_nodes: int = 1 << 13  # units of one spectral block at most; larger blocks are left out (recorded)
    min_class_count: int = 50  # refuse a class with fewer examples (0: no guard); see docs/publishing.md
    dp_epsilon: float | None = None  # differential privacy: the budget (None: exact statistics); docs/privacy.md
    dp_delta: float = 1e-5
    dp_clip: float = 2.0  # per-unit RMS bound on one example's values in a layer (chosen on validation: docs/privacy.md)

    def check(self) -> None:
        if self.max_size is not None and not (math.isfinite(self.max_size) and self.max_size > 0):
            raise UsageError(f"{{max_size}} {self.max_size}: must be a positive number of megabytes")
        if not self.temperature > 0:
            raise UsageError(f"{{temperature}} {self.temperature}: must be > 0")
        if self.cov_rank < 0 or (self.spectral_k is not None and self.spectral_k < 0):
            raise UsageError("{cov_rank} and {spectral_k} must be >= 0")
        if self.dp_epsilon is not None:
            from .privacy import check_budget  # here, not at the top: it imports scipy, which every command need not
            check_budget(self.dp_epsilon, self.dp_delta, self.dp_clip)
            if self.cov_rank:
                raise UsageError("{cov_rank} with {dp_epsilon}: covariance factors have no private release yet "
                                 "(SPEC §10.1); export with a covariance rank of 0")
        if not (isinstance(self.min_class_count, int) and self.min_class_count >= 0):
            raise UsageError(f"{{min_class_count}} {self.min_class_count}: must be a whole number >= 0")
        if self.spectral_max_nodes < 2:
            raise UsageError(f"{{spectral_max_nodes}} {self.spectral_max_nodes}: must be >= 2")
        if (self.batch_size is not None and self.batch_size < 1) or (self.limit is not None and self.limit < 1):
            raise UsageError("{batch_size} and {limit} must be >= 1")
        if self.min_accuracy is not None and not 0 <= self.min_accuracy <= 1:
            raise UsageError(f"{{min_accuracy}} {self.min_accuracy}: must be in [0, 1]")
        if self.value_range is not None and not (len(self.value_range) == 2 and
                                                 math.isfinite(self.value_range[0]) and
                                                 math.isfinite(self.value_range[1]) and
                                                 self.value_range[0] < self.value_range[1]):
            raise UsageError(f"{{value_range}} {self.value_range}: expected two finite numbers LO < HI")


@dataclass
class Priors:
    """Weights of reconstruction's optional priors; all off by default."""

    tv: float = 0.0  # total variation (mean absolute difference of neighbouring pixels)
    l2: float = 0.0  # mean squared input value
    jitter: int = 0  # random shift of up to this many pixels per step (image inputs)
    flip: bool = False  # random horizontal flips per step (only for flip-symmetric classes)
    feature: float = 0.0  # batch moment matching of hidden layers (channel stats where stored, else unit stats)
    feature_layers: str = "all"  # "all" hidden layers, or only "channels": the layers with channel statistics

    def __post_init__(self):
        if self.feature_layers not in FEATURE_LAYERS:
            raise ValueError(f"feature_layers {self.feature_layers!r}: expected one of {FEATURE_LAYERS}")

    def image_options(self) -> list[str]:
        """The options set that need image inputs, as parameter placeholders for messages."""
        return [f"{{{name}}}" for name, on in (("tv", self.tv), ("jitter", self.jitter), ("flip", self.flip)) if on]


@dataclass
class ReconstructConfig:
    """Offline reconstruction of a transfer set (``dfkd-meta reconstruct``)."""

    objective: str = "all_layers"  # a name in reconstruct.objectives.OBJECTIVES
    samples: int = 1000
    steps: int = 200  # optimisation steps per batch (Adam on the inputs, cosine schedule)
    batch_size: int = 256
    lr: float = 0.05
    seed: int = 0
    priors: Priors = field(default_factory=Priors)
    init: str = "uniform"  # starting inputs: "uniform" over the input domain, "first-layer" (init.py), or "normal"
    init_normal: tuple[float, float] = (0.15, 0.1)  # raw mean and std of the "normal" init (Lopes et al. on MNIST)
    store: str = "model"  # the transfer file's x: "model" inputs (normalised) or "raw" values
    loss_form: str = "normalised"  # layer terms: over the class variance, or "lopes2017": rectified, over the size
    schedule: str = "cosine"  # the input step size over the steps: cosine to 0, or "constant"
    clip: bool = True  # keep inputs inside the recorded input domain after every step
    spectral_targets: str = "coefficients"  # SPECTRAL_TARGETS; only spectral objectives read it

    def check(self) -> None:
        if self.samples < 1 or self.batch_size < 1 or self.steps < 0 or not self.lr > 0:
            raise UsageError("{samples} and {batch_size} must be >= 1, {steps} >= 0 and {lr} > 0")
        for name, value, allowed in (("init", self.init, INITS), ("loss_form", self.loss_form, LOSS_FORMS),
                                     ("schedule", self.schedule, SCHEDULES), ("store", self.store, STORE_SPACES),
                                     ("spectral_targets", self.spectral_targets, SPECTRAL_TARGETS)):
            if value not in allowed:
                raise UsageError(f"{{{name}}} {value!r}: expected one of {', '.join(allowed)}")
        if not (len(self.init_normal) == 2 and all(math.isfinite(v) for v in self.init_normal)
                and self.init_normal[1] > 0):
            raise UsageError(f"{{init_normal}} {self.init_normal}: expected a finite MEAN and a STD > 0")


# Named settings of published methods: a preset fills every field it names; options a user passes
# explicitly override it. Each entry says where its values come from.
RECONSTRUCT_PRESETS: dict[str, dict[str, Any]] = {
    # Lopes, Fenu & Starner 2017, as their code runs on MNIST (irapha/replayed_distillation,
    # procedures/optimize_dataset.py and _optimization_objectives.py): 40 batches of 64 per class,
    # 1,000 Adam steps at 0.07 (constant), inputs from N(0.15, 0.1) in raw pixel values, loss
    # sum over layers of mean((relu(target) - relu(activation))^2) / layer size, no clipping on MNIST,
    # no image priors; spectral targets from the spectral statistics (the code has no spectral loss).
    "lopes2017": {"samples": 25_600, "batch_size": 64, "steps": 1000, "lr": 0.07, "schedule": "constant",
                  "init": "normal", "init_normal": (0.15, 0.1), "loss_form": "lopes2017", "clip": False,
                  "spectral_targets": "coefficients", "priors": Priors()},
}


def reconstruct_preset(name: str, **overrides) -> ReconstructConfig:
    """The preset's ReconstructConfig, with ``overrides`` (fields a user set explicitly) on top."""
    if name not in RECONSTRUCT_PRESETS:
        raise UsageError(f"{{preset}} {name!r}: expected one of {', '.join(sorted(RECONSTRUCT_PRESETS))}")
    return ReconstructConfig(**{**RECONSTRUCT_PRESETS[name], **overrides})


@dataclass
class DistillConfig:
    """Student training (``dfkd-meta distill``)."""

    temperature: float | None = None  # None: the transfer set's (the sidecar's), else DEFAULT_TEMPERATURE
    loss: str = "kd"  # a name in distill.losses.LOSSES, or a composition "kd,at:1000" (name[:weight], comma-separated)
    alpha: float = 0.0  # weight of cross-entropy on the teacher's argmax
    features: tuple[str, ...] = ()  # feature pairs TEACHER_TENSOR=STUDENT_MODULE for feature losses; () pairs by stage
    epochs: int = 20  # with ``minutes``: at most this many
    minutes: float | None = None  # wall-clock budget of the training loop; the cosine schedule then follows the time
    batch_size: int = 128
    lr: float = 1e-3  # Adam, cosine schedule
    seed: int = 0
    force: bool = False  # distill on real data even when the teacher fails the accuracy check there
    stop_on_stall: bool = False  # end the run when the student stops learning (distill.monitor), not only warn


@dataclass
class OnlineConfig:
    """Distillation with inputs synthesised online, the student in the loop (``dfkd-meta distill --method``)."""

    method: str = "dfad"  # a name in synthesis.METHODS
    iterations: int = 2000  # student updates (with ``minutes``: at most this many)
    minutes: float | None = None  # wall-clock budget of the loop; the cosine schedule then follows the time spent
    batch_size: int = 256
    lr: float | None = None  # the student's; None: the method's published setting
    temperature: float | None = None  # KD temperature; None: the method's published setting
    loss: str | None = None  # the student's loss, a name in distill.losses.LOSSES or a composition "kd,at:1000";
    # None: the method's published one
    features: tuple[str, ...] = ()  # feature pairs TEACHER_TENSOR=STUDENT_MODULE for feature losses; () by stage
    seed: int = 0
    gaussian_mix: float = 0.5  # with a sidecar that implies a first-layer Gaussian: share of each batch drawn from it
    # (0.5 re-chosen on the validation split, dfad, 3 min: Fashion LeNet-5 0.8458 -> 0.8522, ResNet-8 0.7034 -> 0.7210)
    options: dict[str, float] = field(default_factory=dict)  # the method's own settings, by name
    input_norm: str | None = None  # how the teacher takes raw values (convention spec); None: sidecar, else metadata
    checkpoint_every: int = 100  # student updates between checkpoints
    save_samples: int = 10_000  # inputs written by --save-transfer
    stop_on_stall: bool = False  # end the run when the student stops learning (distill.monitor), not only warn

    def check(self) -> None:
        if self.iterations < 1 or self.batch_size < 2 or self.checkpoint_every < 1 or self.save_samples < 1:
            raise UsageError("{iterations}, {checkpoint_every} and {save_samples} must be >= 1, {batch_size} >= 2")
        if self.minutes is not None and not (math.isfinite(self.minutes) and self.minutes > 0):
            raise UsageError(f"{{minutes}} {self.minutes}: must be a positive number of minutes")
        if not 0.0 <= self.gaussian_mix < 1.0:
            raise UsageError(f"{{gaussian_mix}} {self.gaussian_mix}: must be in [0, 1)")
        if (self.lr is not None and not self.lr > 0) or (self.temperature is not None and not self.temperature > 0):
            raise UsageError("{lr} and {temperature} must be > 0")


CALIBRATION_METHODS = ("minmax", "entropy", "percentile")  # ONNX Runtime's calibrators
CORRECTIONS = ("equalise", "bias")  # DFQ's corrections (Nagel et al. 2019), applied in this order


@dataclass
class QuantizeConfig:
    """Static INT8 quantisation of a teacher, calibrated without its data (``dfkd-meta quantize``)."""

    calibration: str = "sidecar"  # a name in quantize.calibration.CALIBRATIONS, or data:SPEC (real data, for comparison)
    samples: int = 512  # calibration inputs, class-balanced
    batch_size: int = 64
    method: str = "minmax"  # ONNX Runtime's calibration method, CALIBRATION_METHODS
    per_channel: bool = True  # weights quantised per output channel (else one scale per tensor)
    corrections: tuple[str, ...] = ()  # CORRECTIONS to apply before quantising (measured: benchmarks/quantize.py)
    reconstruct_steps: int = 100  # input-optimisation steps when calibration inputs are reconstructed
    seed: int = 0
    input_norm: str | None = None  # how the teacher takes raw values (convention spec); None: sidecar, else metadata

    def check(self) -> None:
        if self.samples < 1 or self.batch_size < 1 or self.reconstruct_steps < 0:
            raise UsageError("{samples} and {batch_size} must be >= 1, {reconstruct_steps} >= 0")
        if self.method not in CALIBRATION_METHODS:
            raise UsageError(f"{{method}} {self.method!r}: expected one of {', '.join(CALIBRATION_METHODS)}")
        unknown = [c for c in self.corrections if c not in CORRECTIONS]
        if unknown or len(set(self.corrections)) != len(self.corrections):
            raise UsageError(f"{{corrections}} {list(self.corrections)}: expected distinct names from "
                             f"{', '.join(CORRECTIONS)}")
