"""Distillation losses, one small function each, in a registry keyed by the names the CLI takes.

A loss takes the student's and the teacher's outputs on the same inputs (``Outputs``: logits, and
named features for losses that compare intermediate layers) and the temperature, and returns the
batch's mean loss. Adding a loss is adding one decorated function here.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..errors import UsageError


@dataclass
class Outputs:
    logits: torch.Tensor
    features: dict[str, torch.Tensor] = field(default_factory=dict)


LossFn = Callable[[Outputs, Outputs, float], torch.Tensor]
LOSSES: dict[str, LossFn] = {}


def loss(name: str):
    def register(fn: LossFn) -> LossFn:
        LOSSES[name] = fn
        return fn
    return register


@loss("kd")
def kd(student: Outputs, teacher: Outputs, temperature: float) -> torch.Tensor:
    """Hinton et al. 2015: KL(softmax(t/T) || softmax(s/T)) * T^2."""
    log_p_s = F.log_softmax(student.logits / temperature, dim=1)
    p_t = F.softmax(teacher.logits / temperature, dim=1)
    return F.kl_div(log_p_s, p_t, reduction="batchmean") * temperature ** 2


@loss("ce")
def ce(student: Outputs, teacher: Outputs, temperature: float) -> torch.Tensor:
    """Cross-entropy on the teacher's argmax (hard labels, no temperature)."""
    return F.cross_entropy(student.logits, teacher.logits.argmax(1))


@loss("l1")
def l1(student: Outputs, teacher: Outputs, temperature: float) -> torch.Tensor:
    """Mean absolute difference of the logits (the student loss of DFAD, Fang et al. 2019)."""
    return (student.logits - teacher.logits).abs().mean()


def get_loss(name: str) -> LossFn:
    if name not in LOSSES:
        raise UsageError(f"{{loss}} {name!r}: expected one of {', '.join(sorted(LOSSES))}")
    return LOSSES[name]


def combined(name: str, alpha: float) -> LossFn:
    """``(1 - alpha) * LOSSES[name] + alpha * ce``: the configured objective as one function."""
    main = get_loss(name)
    if alpha == 0.0:
        return main
    return lambda s, t, temperature: (1 - alpha) * main(s, t, temperature) + alpha * ce(s, t, temperature)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
            alpha: float = 0.0) -> torch.Tensor:
    """The default objective on plain logits: (1 - alpha) * kd + alpha * ce."""
    return combined("kd", alpha)(Outputs(student_logits), Outputs(teacher_logits), temperature)
