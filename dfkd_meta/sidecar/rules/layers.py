"""SPEC §8: layer statistics."""
from __future__ import annotations

from typing import Any

import numpy as np

from .. import values
from ..state import GroupContext
from . import rule


@rule("DM613", on="layer_stats")
def temperature_only_on_logits(ctx: GroupContext) -> None:
    """A logits layer carries @temperature; other kinds do not."""
    kind, p = ctx.attrs.get("kind"), ctx.path
    has_temp = "temperature" in ctx.state.file[p].attrs
    if kind == "logits" and not has_temp:
        ctx.report(f"{p}@temperature", "a logits layer needs @temperature > 0")
    elif kind in ("pre_activation", "post_activation") and has_temp:
        ctx.report(f"{p}@temperature", f"a {kind} layer must not carry @temperature")


@rule("DM617", on="layer_stats")
def channel_stats_need_a_channel_axis(ctx: GroupContext) -> None:
    """channel/ only on layers of rank >= 2."""
    shape = ctx.attrs.get("shape")
    if "channel" in ctx.groups and shape is not None and len(shape) < 2:
        ctx.report(f"{ctx.path}/channel", f"layer shape {shape} has no channel axis")


# what each granularity stores (SPEC §8.1): item -> required (True) or forbidden (False); others optional
GRANULARITY_ITEMS = {
    "unit": {"mean": True, "std": True, "pooled_mean": False, "pooled_std": False},
    "channel_unit": {"channel": True, "pooled_mean": True, "pooled_std": True, "mean": False, "std": False,
                     "cov_factors": False},
    "channel": {"channel": True, "mean": False, "std": False, "pooled_mean": False, "pooled_std": False,
                "cov_factors": False},
}


@rule("DM624", on="layer_stats")
def items_match_the_granularity(ctx: GroupContext) -> None:
    """A layer holds the items its @granularity stores and none it does not; a vector layer is per unit."""
    granularity, shape, p = ctx.attrs.get("granularity"), ctx.attrs.get("shape"), ctx.path
    if granularity is None:
        return  # absent (DM601) or invalid (DM604): already reported
    if granularity != "unit" and shape is not None and len(shape) < 2:
        ctx.report(f"{p}@granularity", f"{granularity!r} on a layer of shape {shape}, which has no channel axis; "
                                       "vector layers are stored per unit")
        return
    present = {name for name in ("mean", "std", "pooled_mean", "pooled_std", "cov_factors", "channel")
               if ctx.state.kinds.get(f"{p}/{name}") is not None}
    for name, required in GRANULARITY_ITEMS[granularity].items():
        if required and name not in present:
            ctx.report(f"{p}/{name}", f"granularity {granularity!r} stores {name}, and it is missing")
        elif not required and name in present:
            ctx.report(f"{p}/{name}", f"granularity {granularity!r} does not store {name}")


@rule("DM616", on="layer_stats")
def covariance_factors_stay_below_the_variance(ctx: GroupContext) -> None:
    """rowsum(F*F) <= std^2 (1 + 1e-3) + 1e-6, read in bounded [units, R] slabs."""
    cov, std = ctx.datasets.get("cov_factors"), ctx.datasets.get("std")
    if cov is None or std is None:
        return
    worst, where = 0.0, None
    step = max(1, values.BLOCK_BYTES // (8 * max(1, cov.shape[2])))
    for c, u0 in ((c, u0) for c in range(cov.shape[0]) for u0 in range(0, cov.shape[1], step)):
        f = np.asarray(cov[c, u0:u0 + step], dtype=np.float64)
        var = np.asarray(std[c, u0:u0 + step], dtype=np.float64) ** 2
        excess = (f * f).sum(axis=1) - (var * (1 + 1e-3) + 1e-6)
        if excess.max(initial=-1.0) > worst:
            worst, where = float(excess.max()), [c, u0 + int(np.argmax(excess))]
    if where is not None:
        ctx.report(f"{ctx.path}/cov_factors", f"rowsum(F*F) exceeds std^2 by {worst:.3g} at {where}")


@rule("DM618", on="layer_stats")
def empty_classes_have_zero_statistics(ctx: GroupContext) -> None:
    """A class with count 0 has mean, std, covariance factors and channel statistics 0 (warning in 1.x)."""
    count = ctx.datasets.get("count")
    if count is None:
        return
    empty = np.flatnonzero(np.asarray(count[()], dtype=np.int64) == 0)
    if not len(empty):
        return
    channel = ctx.state.datasets
    items = {name: ctx.datasets.get(name) for name in ("mean", "std", "cov_factors")}
    items.update({f"channel/{n}": channel.get(f"{ctx.path}/channel/{n}") for n in ("mean", "std")})
    for name, ds in items.items():
        if ds is None or ds.shape[0] != count.shape[0]:
            continue
        for c in empty:
            if any(np.any(block != 0) for _, block in values.blocks(ds, (int(c),))):
                ctx.report(f"{ctx.path}/{name}", f"class {int(c)} has count 0 and non-zero values")
                break


@rule("DM610", on="layer_list")
def at_least_one_layer(ctx: GroupContext) -> None:
    """/layers holds at least one layer group."""
    if not ctx.children:
        ctx.report(ctx.path, "no layer groups")


def layers(ctx: GroupContext) -> dict[str, dict[str, Any]]:
    """Layer key -> validated attributes, for the layers that passed their type check."""
    return {k: ctx.state.group_values(p) for k, p in ctx.state.children_of_type(ctx.path, "layer_stats").items()}


@rule("DM614", on="layer_list")
def tensor_names_and_orders_are_unique(ctx: GroupContext) -> None:
    """No two layers share a tensor_name or an order."""
    for field_ in ("tensor_name", "order"):
        seen: dict[Any, str] = {}
        for key, info in layers(ctx).items():
            v = info.get(field_)
            if v is None:
                continue
            if v in seen:
                ctx.report(f"{ctx.path}/{key}@{field_}", f"{v!r} is also used by layer {seen[v]!r}")
            seen.setdefault(v, key)


@rule("DM615", on="layer_list")
def counts_within_the_dataset(ctx: GroupContext) -> None:
    """A layer's per-class count is at most the dataset's class count (warning)."""
    ds = ctx.state.datasets.get("/dataset/class_counts")
    if ds is None:
        return
    counts = np.asarray(ds[()], dtype=np.int64)
    for key in layers(ctx):
        c_ds = ctx.state.datasets.get(f"{ctx.path}/{key}/count")
        if c_ds is None:
            continue
        c = np.asarray(c_ds[()], dtype=np.int64)
        if c.shape == counts.shape and (c > counts).any():
            i = int(np.argmax(c > counts))
            ctx.report(f"{ctx.path}/{key}/count", f"class {i}: {int(c[i])} examples, dataset has {int(counts[i])}")
