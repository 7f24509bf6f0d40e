"""Distillation losses, one small unit each, in a registry keyed by the names the CLI takes.

A loss compares the student's and the teacher's outputs on the same inputs (``Outputs``: logits, and
the paired intermediate features, keyed alike on both sides) and returns the batch's mean loss. A
*logit* loss reads the logits and the temperature; a *feature* loss reads every feature pair and
averages its per-pair value over the pairs. Each unit carries the weight its paper (or the
benchmark that compared them all, Tian et al. 2020, "Contrastive Representation Distillation")
runs it at: ``--loss NAME`` uses that weight, ``--loss NAME:W`` multiplies the loss as written
below by ``W``. Trainable parts (FitNet's regressors) are made per pair by ``bind`` once the
feature shapes are known, and are parameters of the unit, so they train, checkpoint and resume
with the student.

Adding a loss is adding one decorated class here.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UsageError


@dataclass
class Outputs:
    logits: torch.Tensor
    features: dict[str, torch.Tensor] = field(default_factory=dict)


class Loss(nn.Module):
    """A distillation loss: ``forward(student, teacher, temperature)`` -> the batch's mean loss."""

    name: ClassVar[str] = ""
    weight: ClassVar[float] = 1.0  # the weight its paper runs it at
    uses: ClassVar[str] = "logits"  # or "features"

    def forward(self, student: Outputs, teacher: Outputs, temperature: float) -> torch.Tensor:
        raise NotImplementedError


LOSSES: dict[str, type[Loss]] = {}


def loss(name: str, *, weight: float = 1.0):
    """Register a ``Loss`` subclass under ``name`` with its paper's weight; a plain function
    ``fn(student, teacher, temperature)`` is registered as a logit loss."""
    def register(obj):
        if name in LOSSES:
            raise ValueError(f"loss {name!r} registered twice")
        cls = obj if isinstance(obj, type) else type(obj.__name__, (Loss,), {
            "__doc__": obj.__doc__, "forward": lambda self, s, t, temperature: obj(s, t, temperature)})
        cls.name, cls.weight = name, weight
        LOSSES[name] = cls
        return obj
    return register


# --- logit losses ---------------------------------------------------------------------------------------------

@loss("kd")
class KD(Loss):
    """Hinton et al. 2015: KL(softmax(t/T) || softmax(s/T)) * T^2."""

    def forward(self, student, teacher, temperature):
        log_p_s = F.log_softmax(student.logits / temperature, dim=1)
        p_t = F.softmax(teacher.logits / temperature, dim=1)
        return F.kl_div(log_p_s, p_t, reduction="batchmean") * temperature ** 2


@loss("ce")
class CE(Loss):
    """Cross-entropy on the teacher's argmax (hard labels, no temperature)."""

    def forward(self, student, teacher, temperature):
        return F.cross_entropy(student.logits, teacher.logits.argmax(1))


@loss("l1")
class L1(Loss):
    """Mean absolute difference of the logits (the student loss of DFAD, Fang et al. 2019)."""

    def forward(self, student, teacher, temperature):
        return (student.logits - teacher.logits).abs().mean()


@loss("dkd")
class DKD(Loss):
    """Zhao et al. 2022, decoupled KD: alpha * TCKD + beta * NCKD (alpha 1, beta 8), the target the teacher's argmax.

    TCKD is the KL divergence of the binary (target, rest) probabilities, NCKD that of the distributions over the
    non-target classes, both at temperature T and times T^2; KD = TCKD + (1 - p_t[target]) * NCKD."""

    alpha, beta = 1.0, 8.0

    def forward(self, student, teacher, temperature):
        return self.alpha * self.tckd(student, teacher, temperature) + self.beta * self.nckd(student, teacher,
                                                                                              temperature)

    @staticmethod
    def _target(teacher: Outputs) -> torch.Tensor:
        return F.one_hot(teacher.logits.argmax(1), teacher.logits.shape[1]).to(teacher.logits.dtype)

    def tckd(self, student, teacher, temperature, reduce: bool = True):
        gt = self._target(teacher)

        def binary(logits):
            p = F.softmax(logits / temperature, dim=1)
            target = (p * gt).sum(1)
            return torch.stack([target, 1 - target], 1).clamp_min(1e-12)

        b_s, b_t = binary(student.logits), binary(teacher.logits)
        per = (b_t * (b_t.log() - b_s.log())).sum(1) * temperature ** 2
        return per.mean() if reduce else per

    def nckd(self, student, teacher, temperature, reduce: bool = True):
        mask = 1000.0 * self._target(teacher)  # the target's logit pushed out of the softmax
        log_s = F.log_softmax(student.logits / temperature - mask, dim=1)
        p_t = F.softmax(teacher.logits / temperature - mask, dim=1)
        per = (p_t * (p_t.clamp_min(1e-12).log() - log_s)).sum(1) * temperature ** 2
        return per.mean() if reduce else per


# --- feature losses -------------------------------------------------------------------------------------------

class FeatureLoss(Loss):
    """A loss on paired intermediate features: ``pair(s, t, key)`` averaged over the pairs."""

    uses = "features"
    spatial: ClassVar[bool] = False  # needs maps [B, C, H, W] (per-channel or spatial structure), not vectors
    needs: ClassVar[str] = "feature maps [C, H, W]"

    def __init__(self):
        super().__init__()
        self.keys: list[str] | None = None  # the pairs this loss compares, once bound

    def accepts(self, s: tuple[int, ...], t: tuple[int, ...]) -> bool:
        return not self.spatial or (len(s) == 3 and len(t) == 3)

    def bind(self, shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]) -> None:
        """Keep the pairs (student, teacher shapes without the batch axis) this loss can compare; make trainable
        parts. None it can compare is a UsageError."""
        self.keys = [k for k, (s, t) in shapes.items() if self.accepts(s, t)]
        if not self.keys:
            listed = "; ".join(f"{k}: student {list(s)}, teacher {list(t)}" for k, (s, t) in shapes.items())
            raise UsageError(f"{{loss}} {self.name}: compares {self.needs}, and no pair is one ({listed or 'none'}); "
                             "name pairs it can compare with {features}")

    def forward(self, student, teacher, temperature):
        keys = [k for k in (self.keys if self.keys is not None else student.features)
                if k in student.features and k in teacher.features]
        if not keys:
            raise UsageError(f"{{loss}} {self.name}: needs paired features of the student and the teacher, and "
                             "there are none; name them with {features}")
        return torch.stack([self.pair(student.features[k], teacher.features[k], k) for k in keys]).mean()

    def pair(self, s: torch.Tensor, t: torch.Tensor, key: str) -> torch.Tensor:
        raise NotImplementedError


def _same_size(s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Maps [B, C, H, W] at one spatial size: the larger averaged down to the smaller (as stages of different
    strides are compared in the papers' code)."""
    if s.shape[2:] == t.shape[2:]:
        return s, t
    size = (min(s.shape[2], t.shape[2]), min(s.shape[3], t.shape[3]))
    return F.adaptive_avg_pool2d(s, size), F.adaptive_avg_pool2d(t, size)


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(len(x), -1)


@loss("at", weight=1000.0)
class AT(FeatureLoss):
    """Zagoruyko & Komodakis 2017, attention transfer: mean squared difference of the L2-normalised spatial
    attention maps mean_c(f^2); paper weight 1000."""

    spatial = True

    def pair(self, s, t, key):
        s, t = _same_size(s, t)
        a_s, a_t = (F.normalize(_flat(f.pow(2).mean(1)), dim=1) for f in (s, t))
        return (a_s - a_t).pow(2).mean()


@loss("fitnet", weight=100.0)
class FitNet(FeatureLoss):
    """Romero et al. 2015, hints: mean squared error between a learned regressor of the student's feature (1x1
    convolution on maps, linear on vectors) and the teacher's; weight 100 (Tian et al. 2020)."""

    needs = "maps with maps or vectors with vectors"

    def accepts(self, s, t):
        return len(s) == len(t) and len(s) in (1, 3)

    def bind(self, shapes):
        super().bind(shapes)
        self.regressors = nn.ModuleDict()
        for key in self.keys:
            s, t = shapes[key]
            self.regressors[_module_key(key)] = (nn.Conv2d(s[0], t[0], 1) if len(s) == 3 else nn.Linear(s[0], t[0]))

    def pair(self, s, t, key):
        r = self.regressors[_module_key(key)](s)
        if r.dim() == 4 and r.shape[2:] != t.shape[2:]:
            r = F.adaptive_avg_pool2d(r, t.shape[2:])
        return F.mse_loss(r, t)


def _module_key(key: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in key)  # ModuleDict keys may not hold dots


@loss("nst", weight=50.0)
class NST(FeatureLoss):
    """Huang & Wang 2017, neuron selectivity transfer: squared MMD with the polynomial kernel (x.y)^2 between the
    student's and the teacher's channels, each channel's map L2-normalised; weight 50 (Tian et al. 2020)."""

    spatial = True

    def pair(self, s, t, key):
        s, t = _same_size(s, t)
        s, t = (F.normalize(f.flatten(2), dim=2) for f in (s, t))

        def kernel(a, b):
            return torch.bmm(a, b.transpose(1, 2)).pow(2).mean()
        return kernel(s, s) + kernel(t, t) - 2 * kernel(s, t)


@loss("pkt", weight=30000.0)
class PKT(FeatureLoss):
    """Passalis & Tefas 2018, probabilistic knowledge transfer: KL divergence between the teacher's and the
    student's conditional distributions of cosine similarities in the batch, mean over entries; weight 30000
    (Tian et al. 2020)."""

    def pair(self, s, t, key):
        def conditional(f):
            f = F.normalize(_flat(f), dim=1)
            sim = (f @ f.T + 1) / 2
            return sim / sim.sum(1, keepdim=True)
        p_s, p_t = conditional(s), conditional(t)
        return (p_t * ((p_t + 1e-7) / (p_s + 1e-7)).log()).mean()


@loss("rkd", weight=1.0)
class RKD(FeatureLoss):
    """Park et al. 2019, relational KD: 25 * distance + 50 * angle (the paper's weights), each a smooth-L1 between
    the student's and the teacher's pairwise distances (over their mean) and angles of example triplets."""

    w_distance, w_angle = 25.0, 50.0

    def pair(self, s, t, key):
        gs, gt = (_gram(_flat(f)) for f in (s, t))
        return (self.w_distance * F.smooth_l1_loss(_distances(gs), _distances(gt))
                + self.w_angle * F.smooth_l1_loss(_angles(gs), _angles(gt)))


def _gram(x: torch.Tensor) -> torch.Tensor:
    return x @ x.T


def _distances(g: torch.Tensor) -> torch.Tensor:
    """Pairwise Euclidean distances from the Gram matrix, over their mean off the diagonal."""
    d2 = (g.diag()[:, None] + g.diag()[None, :] - 2 * g).clamp_min(1e-12)
    d = d2.sqrt() * (1 - torch.eye(len(g), dtype=g.dtype, device=g.device))
    off = d[d > 0]
    return d / off.mean() if off.numel() else d


def _angles(g: torch.Tensor) -> torch.Tensor:
    """cos of the angle at each anchor a between b and c: (x_b - x_a).(x_c - x_a) / (|x_b - x_a| |x_c - x_a|), from
    the Gram matrix (memory B^3, not B^2 times the feature size); 0 where b or c is a."""
    diag = g.diag()
    dots = g[None, :, :] - g[:, :, None] - g[:, None, :] + diag[:, None, None]  # [a, b, c]
    # the square root's floor keeps its gradient finite where b is a (sqrt'(0) is infinite, and 0 * inf is NaN
    # even on the branch torch.where discards); those triplets are masked by index, not by value
    norms = (diag[:, None] + diag[None, :] - 2 * g).clamp_min(1e-12).sqrt()  # [a, b]
    off = ~torch.eye(len(g), dtype=torch.bool, device=g.device)
    valid = off[:, :, None] & off[:, None, :]
    return torch.where(valid, dots / (norms[:, :, None] * norms[:, None, :]), torch.zeros_like(dots))


@loss("sp", weight=3000.0)
class SP(FeatureLoss):
    """Tung & Mori 2019, similarity preserving: squared Frobenius distance between the row-normalised batch
    similarity matrices f f^T, over B^2; weight 3000 (Tian et al. 2020)."""

    def pair(self, s, t, key):
        g_s, g_t = (F.normalize(_gram(_flat(f)), dim=1) for f in (s, t))
        return (g_s - g_t).pow(2).sum() / len(s) ** 2


@loss("cc", weight=1.0)
class CC(FeatureLoss):
    """Peng et al. 2019, correlation congruence: mean squared difference of the batch correlation matrices, a
    Gaussian RBF kernel (gamma 0.4) on L2-normalised features by its second-order Taylor expansion, as the paper
    computes it."""

    gamma, order = 0.4, 2

    def pair(self, s, t, key):
        def correlation(f):
            f = F.normalize(_flat(f), dim=1)
            sim = f @ f.T
            # exp(-gamma |a - b|^2) = exp(-2 gamma) exp(2 gamma a.b) for unit vectors, expanded to `order`
            return math.exp(-2 * self.gamma) * sum((2 * self.gamma) ** p / math.factorial(p) * sim.pow(p)
                                                   for p in range(self.order + 1))
        return F.mse_loss(correlation(s), correlation(t))


# --- composition ----------------------------------------------------------------------------------------------

def get_loss(name: str) -> Loss:
    if name not in LOSSES:
        raise UsageError(f"{{loss}} {name!r}: expected one of {', '.join(sorted(LOSSES))}")
    return LOSSES[name]()


def logit_loss(name: str) -> Loss:
    """The logit loss ``name``; a feature loss is refused (the loops feed logits only)."""
    unit = get_loss(name)
    if unit.uses != "logits":
        names = ", ".join(n for n, c in sorted(LOSSES.items()) if c.uses == "logits")
        raise UsageError(f"{{loss}} {name}: compares intermediate features, and online distillation compares "
                         f"logits only; use one of {names}, or distil offline (a transfer set or data)")
    return unit


def parse_terms(specs: list[str] | tuple[str, ...]) -> list[tuple[str, float]]:
    """``["kd", "at:1000"]`` -> [("kd", 1.0), ("at", 1000.0)]: each name with its weight (default: its paper's)."""
    terms = []
    for spec in specs:
        name, sep, weight = str(spec).partition(":")
        get_loss(name)
        try:
            w = float(weight) if sep else LOSSES[name].weight
        except ValueError:
            raise UsageError(f"{{loss}} {spec!r}: the weight after ':' must be a number, e.g. {name}:1") from None
        if not math.isfinite(w) or w < 0:
            raise UsageError(f"{{loss}} {spec!r}: the weight must be a finite number >= 0")
        if any(n == name for n, _ in terms):
            raise UsageError(f"{{loss}} {name} is given twice; give it once with its weight")
        terms.append((name, w))
    return terms


class Objective(nn.Module):
    """A weighted sum of loss units; its trainable parts (``parameters()``) train and checkpoint with the student."""

    def __init__(self, terms: list[tuple[str, float]]):
        super().__init__()
        if not terms:
            raise UsageError("{loss}: give at least one loss")
        self.weights = dict(terms)
        self.units = nn.ModuleDict({name: get_loss(name) for name, _ in terms})

    @property
    def uses_features(self) -> bool:
        return any(u.uses == "features" for u in self.units.values())

    def bind(self, shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]) -> None:
        for unit in self.units.values():
            if isinstance(unit, FeatureLoss):
                unit.bind(shapes)

    def terms(self, student: Outputs, teacher: Outputs, temperature: float) -> dict[str, torch.Tensor]:
        """Each unit's weighted value; no gradient reaches the teacher's outputs."""
        teacher = Outputs(teacher.logits.detach(), {k: v.detach() for k, v in teacher.features.items()})
        return {name: self.weights[name] * unit(student, teacher, temperature) for name, unit in self.units.items()}

    def forward(self, student: Outputs, teacher: Outputs, temperature: float) -> torch.Tensor:
        return torch.stack(list(self.terms(student, teacher, temperature).values())).sum()


def build_objective(spec: str, alpha: float = 0.0, features: tuple[str, ...] = ()) -> Objective:
    """The objective ``spec`` names: ``"kd"`` or a comma-separated composition ``"kd,at:1000,fitnet"`` (each
    ``name[:weight]``); ``alpha`` > 0 scales it by 1 - alpha and adds ``ce`` at ``alpha`` (the ``--alpha``
    shorthand). Named feature pairs (``features``) without a feature loss to read them are refused."""
    terms = parse_terms([part.strip() for part in str(spec).split(",") if part.strip()])
    if alpha:
        if any(name == "ce" for name, _ in terms):
            raise UsageError("{alpha} adds ce to the loss, and {loss} already has it; give ce's weight in {loss} alone")
        terms = [(name, (1 - alpha) * w) for name, w in terms] + [("ce", alpha)]
    objective = Objective(terms)
    if features and not objective.uses_features:
        raise UsageError("{features} pairs intermediate features, and {loss} names no feature loss; add one "
                         "(at, fitnet, nst, pkt, rkd, sp, cc) or leave out {features}")
    return objective


def combined(name: str, alpha: float) -> Callable[[Outputs, Outputs, float], torch.Tensor]:
    """``(1 - alpha) * LOSSES[name] + alpha * ce`` on logits alone (feature losses are refused)."""
    objective = build_objective(name, alpha)
    for unit_name, unit in objective.units.items():
        if unit.uses != "logits":
            logit_loss(unit_name)
    return objective


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
            alpha: float = 0.0) -> torch.Tensor:
    """The default objective on plain logits: (1 - alpha) * kd + alpha * ce."""
    return combined("kd", alpha)(Outputs(student_logits), Outputs(teacher_logits), temperature)
