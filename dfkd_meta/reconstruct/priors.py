"""Image priors (DeepInversion-style) and batch moment matching against the sidecar's statistics."""
from __future__ import annotations

import numpy as np
import torch

from ..config import Priors
from ..sidecar.types import LayerStats
from .inputs import ImageView


def augment(x: torch.Tensor, priors: Priors, gen: torch.Generator, view: ImageView | None) -> torch.Tensor:
    """Random jitter (roll) and flip of the images behind the inputs (``view``); identity when both are off."""
    if not (priors.jitter or priors.flip):
        return x
    img = view.to_image(x)
    if priors.jitter:
        dy, dx = (int(v) for v in torch.randint(-priors.jitter, priors.jitter + 1, (2,), generator=gen))
        img = torch.roll(img, shifts=(dy, dx), dims=(-2, -1))
    if priors.flip and bool(torch.randint(0, 2, (1,), generator=gen)):
        img = torch.flip(img, dims=(-1,))
    return view.from_image(img)


def image_prior_loss(x: torch.Tensor, priors: Priors, view: ImageView | None) -> torch.Tensor:
    """Per-sample TV (on the images behind the inputs) + L2 (zero when both weights are zero)."""
    loss = torch.zeros(x.shape[0], device=x.device)
    if priors.l2:
        loss = loss + priors.l2 * x.flatten(1).pow(2).mean(1)
    if priors.tv:
        img = view.to_image(x)
        tv = (img[..., 1:, :] - img[..., :-1, :]).abs().flatten(1).mean(1) + \
             (img[..., :, 1:] - img[..., :, :-1]).abs().flatten(1).mean(1)
        loss = loss + priors.tv * tv
    return loss


class MomentMatcher:
    """Batch per-class moments of the hidden layers vs the sidecar's (DeepInversion-style).

    Per-sample targets ask every reconstruction to hit one draw; this term instead asks the batch's
    examples of each class to spread like the recorded class: per channel where the sidecar has
    channel statistics (SPEC §8.3), per unit otherwise. Each layer's error is divided by the class's
    mean stored variance, like the objectives' terms. The logits are left to the objective.
    ``scope="channels"`` matches only the layers with channel statistics (the conv maps): on a CNN
    the per-unit terms of its dense layers can pull against sharper per-sample objectives.
    """

    def __init__(self, layers: list[LayerStats], device: torch.device, scope: str = "all"):
        self.layers = [layer for layer in layers if layer.kind != "logits"
                       and (scope == "all" or layer.channel is not None)]
        t = lambda a: torch.as_tensor(a, dtype=torch.float32, device=device)  # noqa: E731
        stats = {layer.key: layer.channel if layer.channel is not None else layer for layer in self.layers}
        self.mean = {k: t(v.mean) for k, v in stats.items()}  # [C, channels or units]
        self.std = {k: t(v.std) for k, v in stats.items()}
        self.scale = {k: t(np.mean(v.std.astype(np.float64) ** 2, axis=1) + 1e-6) for k, v in stats.items()}

    @property
    def tensors(self) -> list[str]:
        return [layer.tensor_name for layer in self.layers]

    def loss(self, acts: dict[str, torch.Tensor], classes: torch.Tensor, num_classes: int) -> torch.Tensor:
        total = torch.zeros((), device=classes.device)
        onehot = torch.nn.functional.one_hot(classes, num_classes).float()  # [B, C]
        count = onehot.sum(0)  # examples per class
        present, n = count > 0, count.clamp_min(1)[:, None]
        for layer in self.layers:
            a = acts[layer.tensor_name]
            # [B, CH, P]: a channel's values over positions, or each unit as its own channel
            a = a.reshape(a.shape[0], a.shape[1], -1) if layer.channel is not None else a.reshape(a.shape[0], -1, 1)
            mean = onehot.T @ a.mean(2) / n  # [C, CH]: class mean of per-example channel means
            sq = onehot.T @ a.pow(2).mean(2) / n
            std = (sq - mean ** 2).clamp_min(1e-8).sqrt()
            err = ((mean - self.mean[layer.key]) ** 2 + (std - self.std[layer.key]) ** 2).mean(1) / self.scale[layer.key]
            total = total + err[present].mean()
        return total
