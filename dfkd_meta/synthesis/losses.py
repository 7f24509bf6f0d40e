"""The synthesis-side losses of the published data-free methods, each a small function on tensors.

Every function returns a scalar (a mean over the batch unless stated), so the methods combine them
with the weights their papers give. Checked against hand-computed values in tests/test_synthesis.py.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def one_hot(logits: torch.Tensor) -> torch.Tensor:
    """DAFL's one-hot loss: cross-entropy of the teacher's logits against their own argmax."""
    return F.cross_entropy(logits, logits.detach().argmax(1))


def activation(features: torch.Tensor) -> torch.Tensor:
    """DAFL's activation loss: minus the mean absolute value of the teacher's penultimate features."""
    return -features.abs().mean()


def information_entropy(logits: torch.Tensor) -> torch.Tensor:
    """DAFL's information-entropy loss: sum p log10 p of the batch-averaged softmax (minimised: balanced classes).

    DAFL's reference code uses log10; the paper writes the entropy H_info = -sum p log p.
    """
    p = F.softmax(logits, dim=1).mean(0)
    return (p * torch.log10(p.clamp_min(1e-12))).sum()


def l1_discrepancy(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """DFAD's discrepancy: mean absolute difference of the logits (the generator maximises it)."""
    return (student_logits - teacher_logits).abs().mean()


def js_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
                  ) -> torch.Tensor:
    """Jensen-Shannon divergence of the softened outputs, mean over the batch (nats, in [0, log 2])."""
    p = F.softmax(student_logits / temperature, dim=1)
    q = F.softmax(teacher_logits / temperature, dim=1)
    m = (0.5 * (p + q)).clamp_min(1e-12)
    kl = lambda a: (a * (a.clamp_min(1e-12).log() - m.log())).sum(1)  # noqa: E731
    return (0.5 * kl(p) + 0.5 * kl(q)).mean()


def teacher_student_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Per-sample KL(softmax(teacher) || softmax(student)), [B]: the adversarial term of CMI and FastDFKD."""
    return F.kl_div(F.log_softmax(student_logits, 1), F.softmax(teacher_logits, 1), reduction="none").sum(1)


def adi_competition(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """DeepInversion's adaptive competition (ADI): 1 - JS(teacher, student), normalised to [0, 1].

    Minimising it pushes the inputs to where teacher and student disagree.
    """
    return 1.0 - js_divergence(student_logits, teacher_logits) / math.log(2.0)


def batchnorm_statistics(features: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """DeepInversion's feature regulariser for one layer: ||mu - mu_bn||_2 + ||var - var_bn||_2 over channels.

    ``features`` is [B, C, ...]; the batch statistics are over every axis but the channels.
    """
    axes = [0] + list(range(2, features.dim()))
    mu = features.mean(axes)
    v = features.var(axes, unbiased=False)
    return _norm(mu - mean) + _norm(v - var)


def _norm(d: torch.Tensor) -> torch.Tensor:
    """The L2 norm with a finite gradient at zero (vector_norm's is 0/0 there: NaN as soon as a term is met)."""
    return torch.sqrt(d.pow(2).sum() + 1e-12) - 1e-6


def total_variation(images: torch.Tensor, norm: str = "l2") -> torch.Tensor:
    """Total variation of images [B, C, H, W]: mean squared (l2) or absolute (l1) difference of neighbours."""
    dh = images[..., 1:, :] - images[..., :-1, :]
    dw = images[..., :, 1:] - images[..., :, :-1]
    if norm == "l1":
        return dh.abs().mean() + dw.abs().mean()
    return dh.pow(2).mean() + dw.pow(2).mean()


def contrastive(anchor: torch.Tensor, positive: torch.Tensor, bank: torch.Tensor | None,
                temperature: float = 0.1) -> torch.Tensor:
    """CMI's instance-discrimination loss: InfoNCE of each anchor against its positive (another view of the
    same input) among the other positives and a memory bank of earlier inputs' embeddings.

    ``anchor``, ``positive``: [B, D]; ``bank``: [M, D] or None. Embeddings are L2-normalised here.
    """
    a = F.normalize(anchor, dim=1)
    keys = F.normalize(positive, dim=1)
    if bank is not None and len(bank):
        keys = torch.cat([keys, F.normalize(bank, dim=1)])
    logits = a @ keys.T / temperature
    return F.cross_entropy(logits, torch.arange(len(a), device=a.device))
