"""Reference architectures (those of the seed experiments) and user-supplied ``module:factory``.

Every factory takes the per-example input shape (C, H, W) and the number of classes, so the same
names work on 8x8 digits and on 28x28 or 32x32 MNIST.
"""
from __future__ import annotations

import importlib
import math
from collections.abc import Callable

import torch
from torch import nn

from .errors import UsageError

Factory = Callable[[tuple[int, ...], int], nn.Module]


def _hinton(hidden: int, input_dropout: float, hidden_dropout: float) -> Factory:
    def build(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        return nn.Sequential(
            nn.Flatten(), nn.Dropout(input_dropout),
            nn.Linear(math.prod(input_shape), hidden), nn.ReLU(), nn.Dropout(hidden_dropout),
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(hidden_dropout),
            nn.Linear(hidden, num_classes))
    return build


class LeNet5(nn.Module):
    """conv5x5 -> maxpool2 -> conv5x5 -> maxpool2 -> 120 -> 84 -> classes, ReLU (LeCun et al. 1998 sizes)."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, c1: int = 6, c2: int = 16):
        super().__init__()
        channels, h, w = input_shape
        self.features = nn.Sequential(nn.Conv2d(channels, c1, 5), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(c1, c2, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
        with torch.no_grad():
            flat = self.features(torch.zeros(1, channels, h, w)).shape[1]
        self.classifier = nn.Sequential(nn.Linear(flat, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                                        nn.Linear(84, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BNNet(nn.Module):
    """A small CNN with BatchNorm: (conv3x3-BN-ReLU) x2 -> maxpool -> (conv3x3-BN-ReLU) -> global avg -> classes."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int = 16):
        super().__init__()
        c = input_shape[0]
        block = lambda i, o: [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU()]  # noqa: E731
        self.body = nn.Sequential(*block(c, width), *block(width, width), nn.MaxPool2d(2),
                                  *block(width, 2 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class BasicBlock(nn.Module):
    """Two conv3x3-BN layers with an identity (or 1x1 conv-BN) shortcut; ``preact``: BN-ReLU before each conv
    (the wide ResNets of Zagoruyko & Komodakis 2016)."""

    def __init__(self, cin: int, cout: int, stride: int, preact: bool = False):
        super().__init__()
        self.preact = preact
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cin if preact else cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = None
        if stride != 1 or cin != cout:
            conv = nn.Conv2d(cin, cout, 1, stride, bias=False)
            self.shortcut = conv if preact else nn.Sequential(conv, nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.preact:
            o = torch.relu(self.bn1(x))
            skip = self.shortcut(o) if self.shortcut is not None else x
            return self.conv2(torch.relu(self.bn2(self.conv1(o)))) + skip
        skip = self.shortcut(x) if self.shortcut is not None else x
        return torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))) + skip)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride) -> 1x1 (x4 channels) conv-BN, with a projection shortcut where the shape changes."""

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = 4 * width
        self.body = nn.Sequential(nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)) \
            if stride != 1 or cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + (self.shortcut(x) if self.shortcut is not None else x))


class ResNet(nn.Module):
    """Residual networks: CIFAR-style (a 3x3 stem, ``widths`` per stage, no stem pooling) or ImageNet-style
    (``imagenet``: 7x7 stride-2 stem and max pooling); global average pooling and one dense layer."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, blocks: list[int], widths: list[int], *,
                 block: str = "basic", preact: bool = False, imagenet: bool = False):
        super().__init__()
        c = input_shape[0]
        stem = widths[0] if block == "basic" and not preact else (16 if preact else 64)
        if imagenet:
            layers: list[nn.Module] = [nn.Conv2d(c, stem, 7, 2, 3, bias=False), nn.BatchNorm2d(stem), nn.ReLU(),
                                       nn.MaxPool2d(3, 2, 1)]
        elif preact:
            layers = [nn.Conv2d(c, stem, 3, 1, 1, bias=False)]
        else:
            layers = [nn.Conv2d(c, stem, 3, 1, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU()]
        cin = stem
        for stage, (n, width) in enumerate(zip(blocks, widths)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                if block == "bottleneck":
                    layers.append(Bottleneck(cin, width, stride))
                    cin = 4 * width
                else:
                    layers.append(BasicBlock(cin, width, stride, preact))
                    cin = width
        if preact:
            layers += [nn.BatchNorm2d(cin), nn.ReLU()]
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


MODELS: dict[str, Factory] = {
    "hinton1200": _hinton(1200, 0.2, 0.5),
    "hinton800": _hinton(800, 0.2, 0.5),
    # Hinton et al. 2015's distilled student: 800-800 with no regularisation, the soft targets being the only
    # one. Dropout makes a student that must match the teacher's logits on fresh inputs (the online
    # methods' L1 loss) chase a noisy copy of itself: on MNIST it caps DFAD with the sidecar at 97.4%.
    "hinton800-plain": _hinton(800, 0.0, 0.0),
    "hinton-small": _hinton(128, 0.2, 0.5),
    "hinton-tiny": _hinton(32, 0.0, 0.0),
    "lenet5": lambda s, k: LeNet5(s, k),
    "lenet5-half": lambda s, k: LeNet5(s, k, c1=3, c2=8),
    "bn-cnn": lambda s, k: BNNet(s, k),
    # residual students and teachers (He et al. 2016; CIFAR-style for 28-32 px inputs, ImageNet-style for 224 px)
    "resnet8": lambda s, k: ResNet(s, k, [1, 1, 1], [16, 32, 64]),
    "resnet20": lambda s, k: ResNet(s, k, [3, 3, 3], [16, 32, 64]),
    "wrn16-2": lambda s, k: ResNet(s, k, [2, 2, 2], [32, 64, 128], preact=True),
    "resnet18": lambda s, k: ResNet(s, k, [2, 2, 2, 2], [64, 128, 256, 512]),
    "resnet50": lambda s, k: ResNet(s, k, [3, 4, 6, 3], [64, 128, 256, 512], block="bottleneck", imagenet=True),
}


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A reference model by name, or ``package.module:factory`` called as ``factory(input_shape, num_classes)``.

    The model is tried once on two zero inputs: one that cannot take ``input_shape`` or does not give
    ``num_classes`` outputs is a one-line error here, not a traceback in the middle of a run.
    """
    try:
        model = _make(name, input_shape, num_classes)
        with torch.no_grad():
            out = model.eval()(torch.zeros(2, *input_shape))
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"{{name}} {name!r} cannot take inputs of shape {list(input_shape)} ({first[:200]}); choose "
                         "a student for this input size") from None
    model.train()
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        raise UsageError(f"{{name}} {name!r}: gives outputs of shape {list(getattr(out, 'shape', []))} for a batch of "
                         f"2, expected [2, {num_classes}] (the teacher's classes)")
    return model


def _make(name: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    if name in MODELS:
        return MODELS[name](tuple(input_shape), num_classes)
    module_name, sep, attr = name.partition(":")
    if not sep:
        raise UsageError(f"{{name}} {name!r}: not one of {', '.join(sorted(MODELS))}, nor module:factory")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"{{name}} {name!r}: cannot import {attr} from {module_name} ({exc})") from None
    model = factory(tuple(input_shape), num_classes)
    if not isinstance(model, nn.Module):
        raise UsageError(f"{{name}} {name!r}: the factory returned {type(model).__name__}, not a torch.nn.Module")
    return model


def hidden_dropout_keep_probs(model: nn.Module) -> list[float | None]:
    """For each Linear/Conv layer but the last, the keep probability of the Dropout that follows it, if any.

    Used to record which hidden pre-activations were trained under dropout (SPEC §8.1
    ``dropout_keep_prob``): masking a ReLU's output is masking its pre-activation's units.
    """
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.Dropout))]
    out: list[float | None] = []
    for k, m in enumerate(layers):
        if isinstance(m, nn.Dropout):
            continue
        nxt = layers[k + 1] if k + 1 < len(layers) else None
        out.append(1.0 - nxt.p if isinstance(nxt, nn.Dropout) and nxt.p > 0 else None)
    return out[:-1]
