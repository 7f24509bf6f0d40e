"""Small torch classifiers of every graph shape export must handle with default settings: parallel branches
joined by Concat, Add (residual) and Mul (gating), Sigmoid and Tanh heads, inputs taken flattened."""
from __future__ import annotations

import torch
from torch import nn


class ConcatBranches(nn.Module):
    def __init__(self, shape, k):
        super().__init__()
        self.a, self.b = nn.Conv2d(shape[0], 4, 3, padding=1), nn.Conv2d(shape[0], 4, 1)
        self.fc1, self.fc2 = nn.Linear(8 * shape[1] * shape[2] // 4, 16), nn.Linear(16, k)

    def forward(self, x):
        x = torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], 1)
        return self.fc2(torch.relu(self.fc1(torch.flatten(nn.functional.max_pool2d(x, 2), 1))))


class ResidualAdd(nn.Module):
    def __init__(self, shape, k):
        super().__init__()
        self.stem = nn.Conv2d(shape[0], 6, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1))
        self.head = nn.Linear(6, k)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(x + self.body(x))
        return self.head(x.mean((2, 3)))


class GatedMul(nn.Module):
    def __init__(self, shape, k):
        super().__init__()
        n = shape[0] * shape[1] * shape[2]
        self.value, self.gate, self.out = nn.Linear(n, 24), nn.Linear(n, 24), nn.Linear(24, k)

    def forward(self, x):
        x = torch.flatten(x, 1)
        return self.out(torch.relu(self.value(x)) * torch.sigmoid(self.gate(x)))


class SigmoidHead(nn.Module):
    def __init__(self, shape, k):
        super().__init__()
        n = shape[0] * shape[1] * shape[2]
        self.fc1, self.fc2 = nn.Linear(n, 20), nn.Linear(20, k)

    def forward(self, x):
        return self.fc2(torch.sigmoid(self.fc1(torch.flatten(x, 1))))


class TanhHead(nn.Module):
    def __init__(self, shape, k):
        super().__init__()
        self.conv = nn.Conv2d(shape[0], 4, 3)
        self.fc = nn.Linear(4 * (shape[1] - 2) * (shape[2] - 2), k)

    def forward(self, x):
        return self.fc(torch.tanh(torch.flatten(torch.tanh(self.conv(x)), 1)))


class FlatInput(nn.Module):
    """Takes the images flattened: [B, C*H*W]."""

    flat = True

    def __init__(self, shape, k):
        super().__init__()
        n = shape[0] * shape[1] * shape[2]
        self.net = nn.Sequential(nn.Linear(n, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, k))

    def forward(self, x):
        return self.net(x)


SHAPES = {"concat": ConcatBranches, "residual_add": ResidualAdd, "gated_mul": GatedMul, "sigmoid": SigmoidHead,
          "tanh": TanhHead, "flat_input": FlatInput}
