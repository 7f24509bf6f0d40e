"""Teachers trained outside `dfkd-meta train`: plain torch code, as a publisher elsewhere writes it (not a test).

    python benchmarks/foreign.py --data fashion:../shared/data/fashion-mnist --arch resnet8 --exporter dynamo
    python benchmarks/foreign.py --list

Two architectures the project's own reference models do not include: ``resnet8`` (a residual CNN,
BatchNorm after every convolution, identity and strided 1x1 shortcuts, global average pooling) and
``vggbn`` (conv-BN-ReLU stacks with max pooling and a 2-layer head with dropout). Each is trained
with its own loop (SGD with Nesterov momentum, one-cycle schedule, label smoothing 0.1, random
crops from 2-pixel padding), the data normalised by the usual per-data-set constants, on the
training split less the validation split that ``benchmarks/protocol.py`` carves (teachers never
see it). The teacher is exported by either torch exporter, with BatchNorm folded (what the
exporters give by default) and, with ``keep_batchnorm``, with its BatchNormalization nodes kept.
The release (sidecar) is then made with `dfkd-meta export` defaults and the input convention the
publisher trained with, on the same training split.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from protocol import NORMALISATION, carve  # noqa: E402

from dfkd_meta.convention import InputConvention  # noqa: E402
from dfkd_meta.onnx.torch_export import export_onnx  # noqa: E402
from dfkd_meta.stats.export import export_release  # noqa: E402


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.short(x))


class ResNet8(nn.Module):
    """conv3x3(16)-BN-ReLU, three residual stages (16, 32, 64 channels; strides 1, 2, 2), global avg pool, fc."""

    def __init__(self, channels: int = 1, num_classes: int = 10, width: int = 16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.stages = nn.Sequential(BasicBlock(width, width, 1), BasicBlock(width, 2 * width, 2),
                                    BasicBlock(2 * width, 4 * width, 2))
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.stages(self.stem(x)), 1).flatten(1))


class VGGBN(nn.Module):
    """(conv3x3-BN-ReLU x2, maxpool) at 32 and 64 channels, then fc 256 with dropout 0.3, fc."""

    def __init__(self, channels: int = 1, num_classes: int = 10, size: int = 28):
        super().__init__()
        c = lambda i, o: [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True)]  # noqa: E731
        self.features = nn.Sequential(*c(channels, 32), *c(32, 32), nn.MaxPool2d(2), *c(32, 64), *c(64, 64),
                                      nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(64 * (size // 4) ** 2, 256), nn.ReLU(inplace=True),
                                        nn.Dropout(0.3), nn.Linear(256, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


ARCHS = {"resnet8": lambda c, k, s: ResNet8(c, k), "vggbn": lambda c, k, s: VGGBN(c, k, s)}
# two publishers' habits: plain cross-entropy with Adam (large logits), and SGD with label smoothing (small ones)
RECIPES = ("adam-ce", "sgd-smooth")


def _normalise(x: np.ndarray, name: str) -> torch.Tensor:
    mean, std = NORMALISATION[name]
    return (torch.from_numpy(x).float() / 255.0 - mean) / std


def train(arch: str, recipe: str, split: dict, name: str, *, epochs: int, seed: int, batch: int = 128,
          log=print) -> nn.Module:
    """The publisher's own loop, random 2-pixel crops. ``adam-ce``: Adam at 1e-3, cross-entropy, cosine decay;
    ``sgd-smooth``: SGD (Nesterov, 0.9, wd 5e-4), one-cycle lr to 0.1, label smoothing 0.1."""
    torch.manual_seed(seed)
    x, y = split["train"]
    model = ARCHS[arch](x.shape[1], 10, x.shape[-1])
    steps = epochs * math.ceil(len(y) / batch)
    if recipe == "sgd-smooth":
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    smoothing = 0.1 if recipe == "sgd-smooth" else 0.0
    rng = np.random.default_rng(seed)
    for epoch in range(epochs):
        model.train()
        order = rng.permutation(len(y))
        t0, seen, correct = time.perf_counter(), 0, 0
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            xb = _normalise(x[idx], name)
            dy, dx = rng.integers(-2, 3, size=2)
            xb = torch.roll(F.pad(xb, (2, 2, 2, 2)), (int(dy), int(dx)), (2, 3))[..., 2:-2, 2:-2]
            yb = torch.from_numpy(y[idx])
            out = model(xb)
            loss = F.cross_entropy(out, yb, label_smoothing=smoothing)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            seen += len(idx)
            correct += int((out.argmax(1) == yb).sum())
        log(f"  {arch} epoch {epoch + 1}/{epochs}: train accuracy {correct / seen:.4f} "
            f"({time.perf_counter() - t0:.0f} s)")
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, xy: tuple[np.ndarray, np.ndarray], name: str) -> float:
    x, y = xy
    hits = sum(int((model(_normalise(x[i:i + 2048], name)).argmax(1) == torch.from_numpy(y[i:i + 2048])).sum())
               for i in range(0, len(y), 2048))
    return hits / len(y)


def make_teacher(data_spec: str, arch: str, recipe: str, exporter: str, keep_batchnorm: bool, work: Path, *,
                 epochs: int = 3, seed: int = 0, cov_rank: int = 8, log=print) -> dict:
    """Train (once per data set, architecture and recipe), export and release one foreign teacher; returns its
    files and facts."""
    data = carve(data_spec)
    name = data.name
    folder = work / name / f"{arch}-{recipe}"
    weights = folder / "weights.pt"
    folder.mkdir(parents=True, exist_ok=True)
    if weights.is_file():
        model = ARCHS[arch](1, 10, data.raw["train"][0].shape[-1])
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        model.eval()
        meta = json.loads((folder / "teacher.json").read_text())
    else:
        log(f"training {arch} ({recipe}) on {name} (plain torch, {epochs} epochs)")
        t0 = time.perf_counter()
        model = train(arch, recipe, data.raw, name, epochs=epochs, seed=seed, log=log)
        meta = {"arch": arch, "recipe": recipe, "epochs": epochs, "seed": seed,
                "train_minutes": round((time.perf_counter() - t0) / 60, 2),
                "validation_accuracy": accuracy(model, data.raw["val"], name),
                "normalisation": list(NORMALISATION[name])}
        torch.save(model.state_dict(), weights)
        (folder / "teacher.json").write_text(json.dumps(meta, indent=1) + "\n")
        log(f"  {arch}: validation accuracy {meta['validation_accuracy']:.4f}")
    tag = f"{exporter}-{'bn' if keep_batchnorm else 'folded'}"
    rel = folder / tag
    model_path, sidecar = rel / f"{tag}.onnx", rel / f"{tag}.dfkd.h5"
    if not sidecar.is_file():
        mean, std = NORMALISATION[name]
        conv = InputConvention(name="custom", norm_mean=(mean,), norm_std=(std,), value_min=0.0, value_max=1.0,
                               source="option")
        rel.mkdir(parents=True, exist_ok=True)
        export_onnx(model, tuple(data.raw["train"][0].shape[1:]), folder / f"{tag}.onnx", exporter=exporter,
                    convention=conv, keep_batchnorm=keep_batchnorm)
        export_release(folder / f"{tag}.onnx", data, rel, cov_rank=cov_rank, progress=False, overwrite=True)
    return {"model": model_path, "sidecar": sidecar, "data": data, **meta, "exporter": exporter,
            "batchnorm": "kept" if keep_batchnorm else "folded"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="mnist:" + str(HERE.parent.parent / "shared" / "data" / "fashion-mnist"))
    ap.add_argument("--arch", choices=sorted(ARCHS), default="resnet8")
    ap.add_argument("--recipe", choices=RECIPES, default="adam-ce")
    ap.add_argument("--exporter", choices=["legacy", "dynamo"], default="dynamo")
    ap.add_argument("--keep-batchnorm", action="store_true")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--work", type=Path, default=HERE.parent / "runs" / "foreign")
    args = ap.parse_args(argv)
    t = make_teacher(args.data, args.arch, args.recipe, args.exporter, args.keep_batchnorm, args.work, epochs=args.epochs)
    print(json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in t.items() if k != "data"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
