"""The model's input space, as the sidecar records it: valid bounds, the images behind it, raw values."""
from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import DfkdError
from ..sidecar.types import ModelBinding


def _channel_view(binding: ModelBinding) -> tuple[int, ...]:
    """How a per-channel vector broadcasts against a batch of model inputs."""
    shape = binding.input_shape[1:]
    if binding.input_domain.layout == "NHWC":
        return (1, *([1] * (len(shape) - 1)), -1)
    return (1, -1, *([1] * (len(shape) - 1)))


def domain_bounds(binding: ModelBinding, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel bounds of valid (normalised) inputs, shaped to broadcast against a batch."""
    lo, hi = binding.input_domain.normalized_range()
    view = _channel_view(binding)
    as_t = lambda a: torch.as_tensor(a, dtype=torch.float32, device=device).reshape(view)  # noqa: E731
    return as_t(lo), as_t(hi)


def to_raw(x: np.ndarray, binding: ModelBinding) -> np.ndarray:
    """Raw values (in [value_min, value_max]) of model inputs ``x`` [N, *input_shape]."""
    dom = binding.input_domain
    view = _channel_view(binding)
    mean = np.asarray(dom.norm_mean, np.float64).reshape(view)
    std = np.asarray(dom.norm_std, np.float64).reshape(view)
    return (x.astype(np.float64) * std + mean).astype(np.float32)


def to_model(raw: np.ndarray, binding: ModelBinding) -> np.ndarray:
    """Model inputs from raw values (the inverse of ``to_raw``)."""
    dom = binding.input_domain
    view = _channel_view(binding)
    mean = np.asarray(dom.norm_mean, np.float64).reshape(view)
    std = np.asarray(dom.norm_std, np.float64).reshape(view)
    return ((raw.astype(np.float64) - mean) / std).astype(np.float32)


class ImageView:
    """The images behind a model's inputs, as [B, C, H, W]: the input itself (NCHW), permuted (NHWC) or
    reshaped (a flat input whose sidecar records the image it flattens). ``None`` from ``of`` when
    the inputs are not images."""

    def __init__(self, layout: str, input_shape: tuple[int, ...], image_shape: tuple[int, ...]):
        self.layout, self.input_shape, self.image_shape = layout, tuple(input_shape), tuple(image_shape)

    @classmethod
    def of(cls, binding: ModelBinding) -> ImageView | None:
        image = binding.image_shape
        if image is None or len(image) != 3:
            return None
        return cls(binding.input_domain.layout, tuple(binding.input_shape[1:]), image)

    def to_image(self, x: torch.Tensor) -> torch.Tensor:
        if self.layout == "NHWC":
            return x.permute(0, 3, 1, 2)
        return x.reshape(len(x), *self.image_shape)

    def from_image(self, img: torch.Tensor) -> torch.Tensor:
        if self.layout == "NHWC":
            return img.permute(0, 2, 3, 1)
        return img.reshape(len(img), *self.input_shape)


def require_image(binding: ModelBinding, what: list[str], source: str) -> ImageView:
    """The image view, or a clear refusal naming the options that need images."""
    view = ImageView.of(binding)
    if view is None:
        d = math.prod(binding.input_shape[1:])
        raise DfkdError(f"{source}: {', '.join(what)} need image inputs, and this model takes feature vectors of "
                        f"{d} values with no image shape recorded in the sidecar; drop {', '.join(what)}")
    return view
