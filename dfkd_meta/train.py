"""Teacher training on labelled data (the publisher's own models come as ONNX instead)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .config import TrainConfig
from .convention import InputConvention, parse
from .data import DataSource, Feed
from .device import resolve_device
from .errors import UsageError
from .progress import progress as progress_bar


@torch.no_grad()
def evaluate(model: nn.Module, data: DataSource, split: str = "test", *, feed: Feed, batch_size: int = 1024,
             device: str | torch.device = "cpu") -> float:
    """Top-1 accuracy of ``model`` on a labelled split, fed through ``feed``."""
    device = torch.device(device)
    model.eval().to(device)
    correct = total = 0
    for x, y in data.batches(split, batch_size, feed=feed):
        pred = model(torch.from_numpy(x).to(device)).argmax(1).cpu().numpy()
        correct += int((pred == y).sum())
        total += len(y)
    return correct / max(total, 1)


@dataclass
class TrainResult:
    model: nn.Module
    convention: InputConvention
    test_accuracy: float | None
    seconds: float
    history: list[dict] = field(default_factory=list)


def train_teacher(model: nn.Module, data: DataSource, config: TrainConfig | None = None, *, device: str = "auto",
                  progress: bool = True, log=None, **settings) -> TrainResult:
    """Cross-entropy training with Adam and a cosine schedule; returns the model in eval mode.

    ``settings`` override fields of ``config`` (a ``TrainConfig``). The inputs follow its
    ``input_norm`` (default: the data's per-channel mean and std), which the result carries so that
    the teacher's ONNX file can record it. ``log`` (default: tqdm.write when ``progress``) receives
    one line per epoch, also when stdout is not a terminal.
    """
    cfg = replace(config or TrainConfig(), **settings)
    epochs, batch_size, lr, seed = cfg.epochs, cfg.batch_size, cfg.lr, cfg.seed
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise UsageError("{epochs} and {batch_size} must be >= 1 and {lr} > 0")
    input_norm = cfg.input_norm
    convention = input_norm if isinstance(input_norm, InputConvention) else parse(input_norm, data.channel_stats)
    if convention.value_min is None:  # record the raw range the teacher saw, so consumers can clip to it
        lo, hi = data.value_range()
        convention = replace(convention, value_min=lo, value_max=hi)
    feed = Feed(convention)
    torch.manual_seed(seed)
    dev = resolve_device(device)
    model.to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * -(-data.size("train") // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    has_test = data.has_split("test")
    log = log or (tqdm.write if progress else None)
    history, t0 = [], time.perf_counter()
    for epoch in range(epochs):
        model.train()
        bar = progress_bar(data.batches("train", batch_size, feed=feed, shuffle=True, seed=seed + epoch),
                           total=-(-data.size("train") // batch_size), desc=f"train epoch {epoch + 1}/{epochs}",
                           unit="batch", enabled=progress)
        losses = []
        for x, y in bar:
            logits = model(torch.from_numpy(x).to(dev))
            loss = nn.functional.cross_entropy(logits, torch.from_numpy(y).to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", refresh=False)
        acc = evaluate(model, data, "test", feed=feed, device=dev) if has_test else None
        history.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "test_accuracy": acc})
        if log is not None:
            log(f"epoch {epoch + 1}/{epochs}: train loss {np.mean(losses):.4f}"
                + (f", test accuracy {acc:.4f}" if acc is not None else ""))
    model.eval()
    return TrainResult(model, convention, history[-1]["test_accuracy"] if history else None,
                       time.perf_counter() - t0, history)
