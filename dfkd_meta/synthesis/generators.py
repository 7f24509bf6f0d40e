"""Generators of model inputs: the DCGAN-style image generator of DAFL and DFAD, and a fully connected one
for models of feature vectors."""
from __future__ import annotations

import math

import torch
from torch import nn


class ImageGenerator(nn.Module):
    """z -> images [C, H, W] (Chen et al. 2019, DAFL; Fang et al. 2019, DFAD "GeneratorA").

    A linear layer to 2*ngf maps of a quarter of the size, two nearest-neighbour upsamplings with
    3x3 convolutions, BatchNorm and LeakyReLU(0.2), then tanh and a BatchNorm without affine
    parameters: the batch's images come out standardised per channel, as normalised data is. Sizes
    that are not multiples of 4 are resized at the end.

    On the CPU the maps run channels-last (the images come out in the usual layout): oneDNN's
    convolutions and the upsampling are faster on it. Measured on 2 cores, forward and backward, ngf 16,
    batch 256: 1 x 32 x 32 images 262 -> 158 ms, 3 x 32 x 32 at ngf 64 1.1x. The sums run in another
    order, so values agree with the usual layout to float32 rounding (a test compares).
    """

    channels_last_on_cpu = True

    def __init__(self, image_shape: tuple[int, int, int], nz: int = 100, ngf: int = 64):
        super().__init__()
        self.image_shape, self.nz = tuple(image_shape), nz
        c, h, w = image_shape
        self.init = (max(1, math.ceil(h / 4)), max(1, math.ceil(w / 4)))
        self.l1 = nn.Linear(nz, 2 * ngf * self.init[0] * self.init[1])
        self.bn0 = nn.BatchNorm2d(2 * ngf)
        self.block1 = nn.Sequential(nn.Conv2d(2 * ngf, 2 * ngf, 3, padding=1), nn.BatchNorm2d(2 * ngf, 0.8),
                                    nn.LeakyReLU(0.2))
        self.block2 = nn.Sequential(nn.Conv2d(2 * ngf, ngf, 3, padding=1), nn.BatchNorm2d(ngf, 0.8), nn.LeakyReLU(0.2),
                                    nn.Conv2d(ngf, c, 3, padding=1), nn.Tanh(), nn.BatchNorm2d(c, affine=False))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.bn0(self.l1(z).view(len(z), -1, *self.init))
        if self.channels_last_on_cpu and x.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.block1(nn.functional.interpolate(x, scale_factor=2))
        x = self.block2(nn.functional.interpolate(x, scale_factor=2))
        if tuple(x.shape[-2:]) != self.image_shape[1:]:
            x = nn.functional.interpolate(x, size=self.image_shape[1:], mode="bilinear", align_corners=False)
        return x.contiguous()


class VectorGenerator(nn.Module):
    """z -> feature vectors [D]: two hidden layers with BatchNorm and LeakyReLU(0.2), then a BatchNorm
    without affine parameters, the fully connected counterpart of ``ImageGenerator``."""

    def __init__(self, dim: int, nz: int = 100, hidden: int = 256):
        super().__init__()
        self.nz = nz
        self.net = nn.Sequential(nn.Linear(nz, hidden), nn.BatchNorm1d(hidden), nn.LeakyReLU(0.2),
                                 nn.Linear(hidden, 2 * hidden), nn.BatchNorm1d(2 * hidden), nn.LeakyReLU(0.2),
                                 nn.Linear(2 * hidden, dim), nn.BatchNorm1d(dim, affine=False))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class InputGenerator(nn.Module):
    """A generator of the teacher's inputs, whatever their shape: images through ``ImageGenerator`` (reshaped
    when the teacher takes them flattened), feature vectors through ``VectorGenerator``."""

    def __init__(self, input_shape: tuple[int, ...], image_shape: tuple[int, ...] | None, nz: int = 100,
                 ngf: int = 64):
        super().__init__()
        self.input_shape, self.nz = tuple(input_shape), nz
        self.body = ImageGenerator(tuple(image_shape), nz, ngf) if image_shape is not None and len(image_shape) == 3 \
            else VectorGenerator(math.prod(input_shape), nz, 4 * ngf)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(z).reshape(len(z), *self.input_shape)
