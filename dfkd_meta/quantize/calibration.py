"""Calibration inputs for static quantisation, one small named unit per source, in a registry.

A source gives ``samples`` model inputs (float32, the teacher's input shape, through its input
convention) in batches, each batch made from ``(seed, batch index)`` alone, so a second pass over
the inputs (bias correction, the final check) reads the same inputs without holding them all.
Classes are balanced: batch ``b`` holds classes ``b * batch_size + i`` modulo the class count.

- ``noise``: uniform over the input domain (the sidecar's, else the teacher's metadata), no prior;
- ``sidecar-gaussian``: draws from the first-layer Gaussian of the inputs' classes (init.py), which
  needs per-unit statistics and covariance factors of a first layer affine in the input;
- ``sidecar-reconstruct``: a short reconstruction that matches every stored layer's class moments
  (``reconstruct``'s ``all_layers`` objective, ``reconstruct_steps`` steps), for any sidecar;
- ``sidecar`` (the default): ``sidecar-gaussian`` where the sidecar allows it, else ``sidecar-reconstruct``;
- ``data:SPEC``: examples of a data source's train split (``--data`` specs), the real-data upper bound.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ..config import QuantizeConfig, ReconstructConfig
from ..convention import from_domain
from ..data import DataSource, Feed, load_data
from ..errors import DfkdError, UsageError
from ..fileio import PrivateFolder
from ..reconstruct.synthesize import batch_generator
from ..synthesis.context import SynthesisContext

CALIBRATIONS: dict[str, type[Calibration]] = {}


def calibration(name: str):
    def register(cls: type[Calibration]) -> type[Calibration]:
        cls.name = name
        CALIBRATIONS[name] = cls
        return cls
    return register


def balanced_classes(b: int, size: int, batch_size: int, num_classes: int) -> np.ndarray:
    """The classes of batch ``b``: every class equally often over the whole set (round robin)."""
    return (b * batch_size + np.arange(size)) % num_classes


class Calibration:
    """``samples`` model inputs in batches; ``describe`` says what they are, for the INT8 model's metadata."""

    name = ""
    needs_sidecar = False

    def __init__(self, ctx: SynthesisContext, cfg: QuantizeConfig, folder: PrivateFolder, spec: str | None = None,
                 data: DataSource | None = None):
        if self.needs_sidecar and ctx.sidecar is None:
            raise UsageError(f"{{calibration}} {self.name} needs a sidecar; pass {{sidecar}}, or calibrate on noise "
                             "or data:SPEC")
        self.ctx, self.cfg, self.folder, self.spec = ctx, cfg, folder, spec

    @property
    def num_batches(self) -> int:
        return -(-self.cfg.samples // self.cfg.batch_size)

    def batch_size(self, b: int) -> int:
        return min(self.cfg.batch_size, self.cfg.samples - b * self.cfg.batch_size)

    def classes(self, b: int) -> np.ndarray:
        return balanced_classes(b, self.batch_size(b), self.cfg.batch_size, self.ctx.num_classes)

    def batch(self, b: int) -> np.ndarray:
        raise NotImplementedError

    def checked_batch(self, b: int) -> np.ndarray:
        x = np.ascontiguousarray(self.batch(b), np.float32)
        if not np.isfinite(x).all():
            raise DfkdError(f"{self.name}: calibration batch {b} has non-finite values; nothing was written")
        return x

    def batches(self) -> Iterator[np.ndarray]:
        for b in range(self.num_batches):
            yield self.checked_batch(b)

    def describe(self) -> dict:
        return {"calibration": self.name, "samples": self.cfg.samples, "seed": self.cfg.seed}


@calibration("noise")
class Noise(Calibration):
    """Uniform over the input domain when it is known, else standard normal in the model's input space."""

    def batch(self, b):
        return self.ctx.random_inputs(self.batch_size(b), batch_generator(self.cfg.seed, b)).cpu().numpy()


@calibration("sidecar-gaussian")
class SidecarGaussian(Calibration):
    """Draws from the sidecar's first-layer Gaussian for balanced classes (no optimisation at all)."""

    needs_sidecar = True

    def __init__(self, ctx, cfg, folder, spec=None, data=None):
        super().__init__(ctx, cfg, folder, spec, data)
        if ctx.gaussian is None:
            raise DfkdError(f"{ctx.sidecar_path}: {{calibration}} sidecar-gaussian needs a first stored layer that is "
                            "affine in the input with per-unit statistics; use {calibration} sidecar-reconstruct")

    def batch(self, b):
        classes = torch.as_tensor(self.classes(b))
        return self.ctx.gaussian_inputs(classes, batch_generator(self.cfg.seed, b)).cpu().numpy()


@calibration("sidecar-reconstruct")
class SidecarReconstruct(Calibration):
    """A short reconstruction matching every stored layer's class moments, written once to a private file."""

    needs_sidecar = True

    def __init__(self, ctx, cfg, folder, spec=None, data=None):
        super().__init__(ctx, cfg, folder, spec, data)
        from ..reconstruct.synthesize import reconstruct
        from ..transfer import read_transfer

        out = Path(folder.path) / "calibration.h5"
        rcfg = ReconstructConfig(objective="all_layers", samples=cfg.samples, steps=cfg.reconstruct_steps,
                                 batch_size=cfg.batch_size, seed=cfg.seed)
        reconstruct(ctx.teacher_path, ctx.sidecar_path, out, rcfg, device=str(ctx.device), progress=False)
        self.x = read_transfer(out, ctx.num_classes).model_inputs().astype(np.float32, copy=False)

    def batch(self, b):
        start = b * self.cfg.batch_size
        return self.x[start:start + self.batch_size(b)]

    def describe(self):
        return {**super().describe(), "reconstruct_steps": self.cfg.reconstruct_steps, "objective": "all_layers"}


@calibration("data")
class Data(Calibration):
    """Examples of a data source's train split, classes balanced as far as the split allows (seeded)."""

    def __init__(self, ctx, cfg, folder, spec=None, data=None):
        super().__init__(ctx, cfg, folder, spec, data)
        if not spec and data is None:
            raise UsageError("{calibration} data needs a data spec: data:SPEC, e.g. data:mnist:DIR")
        self.source = data if data is not None else load_data(spec)
        self.feed = Feed(from_domain(ctx.input_domain), tuple(ctx.input_shape))
        labels = self.source.labels("train")
        rng = np.random.default_rng(cfg.seed)
        per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in range(ctx.num_classes)]
        order = [idx[i] for i in range(max(map(len, per_class), default=0)) for idx in per_class if i < len(idx)]
        if len(order) < cfg.samples:
            raise UsageError(f"{spec or self.source.name}: {{samples}} {cfg.samples} is more than the train split's "
                             f"{len(order)} examples")
        self.order = np.asarray(order[:cfg.samples])

    def batch(self, b):
        start = b * self.cfg.batch_size
        return self.source.take("train", self.order[start:start + self.batch_size(b)], feed=self.feed)

    def describe(self):
        return {**super().describe(), "data": self.spec or self.source.spec or self.source.name}


@calibration("sidecar")
class SidecarAuto(Calibration):
    """``sidecar-gaussian`` where the sidecar gives a first-layer Gaussian, else ``sidecar-reconstruct``."""

    needs_sidecar = True

    def __init__(self, ctx, cfg, folder, spec=None, data=None):
        super().__init__(ctx, cfg, folder, spec, data)
        chosen = SidecarGaussian if ctx.gaussian is not None else SidecarReconstruct
        self.inner = chosen(ctx, cfg, folder, spec, data)

    def batch(self, b):
        return self.inner.batch(b)

    def describe(self):
        return {**self.inner.describe(), "calibration": f"sidecar ({self.inner.name})"}


def build_calibration(ctx: SynthesisContext, cfg: QuantizeConfig, folder: PrivateFolder,
                      data: DataSource | None = None) -> Calibration:
    """The calibration source ``cfg.calibration`` names: ``data:SPEC`` for a data source by spec, or ``data``
    with ``data`` given (a ``DataSource``, e.g. one whose validation split is held out)."""
    name, _, spec = cfg.calibration.partition(":")
    if name not in CALIBRATIONS or (name == "data") != bool(spec or data is not None) or (spec and name != "data"):
        raise UsageError(f"{{calibration}} {cfg.calibration!r}: expected one of "
                         f"{', '.join(sorted(n for n in CALIBRATIONS if n != 'data'))}, or data:SPEC")
    if data is not None and name != "data":
        raise UsageError(f"{{calibration}} {cfg.calibration}: data is given but calibration does not use it; "
                         "pass {calibration} data")
    return CALIBRATIONS[name](ctx, cfg, folder, spec or None, data)
