"""The sidecar's size budget: each layer's granularity (SPEC §8.1), chosen before the statistics pass.

A layer is stored at one of three granularities, finest first: ``unit`` (per unit and class, with the
covariance factors when asked for), ``channel_unit`` (per channel and class, plus per unit over all
classes) and ``channel`` (per channel and class). The bytes of each are known from the shapes alone,
so export picks them before reading any data: every layer starts at its finest, and while the
release is over budget the layer that holds the most bytes is coarsened one step (dropping its
covariance factors is the first step). Deep, small layers keep their per-unit statistics; the wide
early maps of a large network go to channels first. Spectral blocks count against the same budget
and are never coarsened: a budget they alone exceed is refused.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import DfkdError

MB = 1 << 20
DEFAULT_MIN_BYTES = 64 * MB  # today's MNIST-size releases keep their per-unit statistics
MODEL_MULTIPLE = 2  # default budget: the larger of this many times the model's size and DEFAULT_MIN_BYTES
FLOAT = 4  # float32 statistics
LAYER_OVERHEAD = 8 * 1024  # HDF5 object headers and attributes of one layer group (measured: 3-6 KB)
FILE_OVERHEAD = 64 * 1024  # the root, the binding, the provenance


def default_budget(model_bytes: int) -> int:
    return max(MODEL_MULTIPLE * model_bytes, DEFAULT_MIN_BYTES)


@dataclass
class LayerChoice:
    """One layer's stored form: its granularity, and the covariance rank kept (unit granularity only)."""

    key: str
    shape: tuple[int, ...]
    granularity: str = "unit"
    cov_rank: int = 0

    @property
    def units(self) -> int:
        return math.prod(self.shape)

    @property
    def channels(self) -> int | None:
        return self.shape[0] if len(self.shape) >= 2 else None

    def nbytes(self, classes: int) -> int:
        """Bytes of this layer's datasets (float32 statistics, int64 counts) and its group's overhead."""
        ch = self.channels
        channel = 2 * classes * ch * FLOAT if ch else 0
        size = LAYER_OVERHEAD + 8 * classes
        if self.granularity == "unit":
            return size + 2 * classes * self.units * FLOAT + classes * self.units * self.cov_rank * FLOAT + channel
        if self.granularity == "channel_unit":
            return size + channel + 2 * self.units * FLOAT
        return size + channel

    def coarser(self) -> LayerChoice | None:
        """The next step down, or None at the coarsest this layer allows (vector layers stay per unit)."""
        if self.granularity == "unit" and self.cov_rank:
            return LayerChoice(self.key, self.shape, "unit", 0)
        if self.channels is None:
            return None
        step = {"unit": "channel_unit", "channel_unit": "channel"}.get(self.granularity)
        return LayerChoice(self.key, self.shape, step) if step else None


@dataclass
class BudgetPlan:
    choices: dict[str, LayerChoice]
    budget: int
    fixed_bytes: int  # spectral blocks and the file's own overhead

    def nbytes(self, classes: int) -> int:
        return self.fixed_bytes + sum(c.nbytes(classes) for c in self.choices.values())

    def coarsened(self) -> list[LayerChoice]:
        return [c for c in self.choices.values() if c.granularity != "unit"]

    def describe(self, classes: int) -> list[str]:
        """One line per layer: its granularity and bytes, for the export's report."""
        return [f"{c.key}: {c.granularity}{f' + covariance rank {c.cov_rank}' if c.cov_rank else ''} "
                f"({c.nbytes(classes) / MB:.2f} MB)" for c in self.choices.values()]


def plan_budget(layers: list[tuple[str, tuple[int, ...], int]], classes: int, budget: int, fixed_bytes: int = 0,
                *, where: str = "export") -> BudgetPlan:
    """Granularity per layer (``layers``: key, per-example shape, covariance rank wanted) so that the sidecar's
    estimated bytes stay within ``budget``; refuses, naming the smallest size that fits, when none does."""
    plan = BudgetPlan({key: LayerChoice(key, tuple(shape), "unit", rank) for key, shape, rank in layers}, budget,
                      fixed_bytes + FILE_OVERHEAD)
    while plan.nbytes(classes) > budget:
        movable = [(c.nbytes(classes), c.key) for c in plan.choices.values() if c.coarser() is not None]
        if not movable:
            floor = plan.nbytes(classes)
            raise DfkdError(f"{where}: the statistics need at least {floor / MB:.1f} MB at their coarsest, over the "
                            f"size budget of {budget / MB:.1f} MB; pass {{max_size}} {math.ceil(floor / MB)} or more, "
                            "fewer {layers}, or a smaller {spectral_k}")
        _, key = max(movable)
        plan.choices[key] = plan.choices[key].coarser()
    return plan
