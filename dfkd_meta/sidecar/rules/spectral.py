"""SPEC §9: spectral statistics."""
from __future__ import annotations

import numpy as np

from .. import values
from ..state import GroupContext
from . import rule


def _layer_orders(ctx: GroupContext) -> tuple[dict[str, dict], list[str]]:
    layers = {k: ctx.state.group_values(p) for k, p in ctx.state.children_of_type("/layers", "layer_stats").items()}
    ordered = sorted((v["order"], k) for k, v in layers.items() if v.get("order") is not None)
    return layers, [k for _, k in ordered]


@rule("DM710", on="spectral_stats")
def layers_exist_in_order(ctx: GroupContext) -> None:
    """@layers names groups of /layers, once each, in increasing @order."""
    refs = ctx.attrs.get("layers")
    if refs is None:
        return
    layers, in_order = _layer_orders(ctx)
    unknown = [r for r in refs if r not in layers]
    if unknown:
        ctx.report(f"{ctx.path}@layers", f"unknown layers {unknown}; /layers has {sorted(layers)}")
    elif [k for k in in_order if k in refs] != refs or len(set(refs)) != len(refs):
        ctx.report(f"{ctx.path}@layers", f"{refs} are not in increasing @order")


@rule("DM715", on="spectral_stats")
def layers_match_the_scope(ctx: GroupContext) -> None:
    """all_layers lists every layer in order; layer_pair two adjacent layers."""
    refs, scope = ctx.attrs.get("layers"), ctx.attrs.get("scope")
    if refs is None:
        return
    layers, in_order = _layer_orders(ctx)
    if any(r not in layers for r in refs) or [k for k in in_order if k in refs] != refs:
        return  # DM710
    if scope == "all_layers" and refs != in_order:
        ctx.report(f"{ctx.path}@layers", f"all_layers must list every layer in order: {in_order}")
    elif scope == "layer_pair" and (len(refs) != 2 or in_order.index(refs[1]) != in_order.index(refs[0]) + 1):
        ctx.report(f"{ctx.path}@layers", f"layer_pair needs two adjacent layers, got {refs}")


@rule("DM704", on="spectral_stats")
def weights_and_k_fit_the_graph(ctx: GroupContext) -> None:
    """weight_tensors is non-empty for several layers; k <= N."""
    refs, p = ctx.attrs.get("layers"), ctx.path
    if refs and len(refs) > 1 and ctx.attrs.get("weight_tensors") == []:
        ctx.report(f"{p}@weight_tensors", "empty, but the graph spans several layers")
    k, n = ctx.symbols.get("K"), ctx.symbols.get("N")
    if k is not None and n is not None and k > n:
        ctx.report(f"{p}@k", f"k={k} exceeds the number of graph nodes N={n}")


@rule("DM712", on="spectral_stats")
def eigenvalues_in_range_and_ascending(ctx: GroupContext) -> None:
    """Eigenvalues in [-1e-6, 2 + 1e-6], non-decreasing."""
    ev = ctx.datasets.get("eigenvalues")
    if ev is None:
        return
    lam = np.asarray(ev[()], dtype=np.float64)
    if not np.isfinite(lam).all():
        return  # DM711
    if lam.size and (lam.min() < -1e-6 or lam.max() > 2 + 1e-6):
        ctx.report(f"{ctx.path}/eigenvalues", f"range [{lam.min():.6g}, {lam.max():.6g}] outside [0, 2]")
    elif (np.diff(lam) < 0).any():
        ctx.report(f"{ctx.path}/eigenvalues", f"not ascending (first drop at {int(np.argmax(np.diff(lam) < 0))})")


@rule("DM713", on="spectral_stats")
def basis_is_orthonormal(ctx: GroupContext) -> None:
    """|V^T V - I| <= 1e-3 element-wise, accumulated over bounded row blocks."""
    basis = ctx.datasets.get("basis")
    if basis is None or basis.ndim != 2:
        return
    gram = np.zeros((basis.shape[1], basis.shape[1]))
    for _, block in values.blocks(basis):
        b = block.astype(np.float64)
        if not np.isfinite(b).all():
            return  # DM711
        gram += b.T @ b
    err = float(np.abs(gram - np.eye(gram.shape[0])).max(initial=0.0))
    if err > 1e-3:
        ctx.report(f"{ctx.path}/basis", f"max |V^T V - I| = {err:.3g} (allowed 1e-3)")
