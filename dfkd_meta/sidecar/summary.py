"""What `dfkd-meta show` prints: a summary of a (validated) sidecar, walked from the schema, and plots.

``describe`` turns a sidecar into plain data by walking the schema: every item it declares appears
under its schema name (arrays of more than 64 values as dtype, shape and bytes). ``format_summary``
renders that for people: curated lines for the items it knows, and an ``also:`` line for any other
item, so an item added to the schema is shown without touching this file.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..errors import DfkdError
from ..plotting import pyplot, save_png
from .schema import Schema, schema_or_default
from .types import ELEMENTS, Element, Sidecar, forced_reason

SMALL_ARRAY = 64  # arrays up to this many values are shown in full


def _plain(value):
    if isinstance(value, np.ndarray):
        if value.size <= SMALL_ARRAY:
            return value.tolist()
        out = {"dtype": str(value.dtype), "shape": list(value.shape), "bytes": int(value.nbytes)}
        if value.dtype.kind in "iuf" and value.size:
            out["min"], out["max"] = value.min().item(), value.max().item()
        return out
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return value


def _walk(obj, type_name: str, schema: Schema, registry: Mapping[str, Element]) -> dict:
    spec, el = schema.types[type_name], registry[type_name]
    items = el.items(obj)
    out: dict = {}
    if el.key is not None:
        out["key"] = getattr(obj, el.key)
    nbytes = 0
    for name in list(spec.attrs) + list(spec.datasets):
        value = items.get(name)
        if value is not None:
            out[name] = _plain(value)
            nbytes += value.nbytes if isinstance(value, np.ndarray) else 0
    for ref in spec.groups.values():
        value = items.get(ref.name)
        child = schema.types[ref.type]
        if child.children_type is not None:
            out[ref.name] = [_walk(v, child.children_type, schema, registry) for v in value or []]
        elif value is not None:
            out[ref.name] = _walk(value, ref.type, schema, registry)
            nbytes += out[ref.name].get("bytes", 0)
    if nbytes:
        out["bytes"] = int(nbytes)
    return out


def describe(sidecar: Sidecar, path: str | os.PathLike, *, schema: Schema | None = None,
             registry: Mapping[str, Element] | None = None) -> dict:
    """Everything in a sidecar, as plain data under the schema's item names (what `show --json` prints)."""
    info = {"file": str(path), "file_bytes": Path(path).stat().st_size}
    info.update(_walk(sidecar, "sidecar", schema_or_default(schema), registry or ELEMENTS))
    for layer in info["layers"]:
        layer["units"] = math.prod(layer["shape"])
    info["layers"].sort(key=lambda x: x["order"])
    return info


# items the curated text below shows, per element type; anything else goes on an "also:" line
CURATED = {
    "sidecar": {"dfkd_meta_format", "dfkd_meta_version", "writer_name", "writer_version", "created_utc"},
    "model_binding": {"file_name", "sha256", "external_data_paths", "external_data_sha256", "ir_version",
                      "opset_domains", "opset_versions", "input_name", "input_shape", "input_dtype", "logits_name",
                      "num_classes", "class_names"},
    "input_domain": {"layout", "value_min", "value_max", "norm_mean", "norm_std"},
    "input_convention": {"name", "source", "image_shape"},
    "dataset_provenance": {"name", "description", "license", "sample_count", "class_counts"},
    "teacher_check": {"split", "samples", "accuracy", "mean_confidence", "min_accuracy", "forced"},
    "layer_stats": {"tensor_name", "order", "kind", "shape", "temperature", "dropout_keep_prob", "mean", "std",
                    "count", "cov_factors", "granularity", "pooled_mean", "pooled_std"},
    "channel_stats": {"mean", "std"},
    "spectral_stats": {"scope", "layers", "graph", "graph_version", "k", "weight_tensors", "eigenvalues", "basis",
                       "coef_mean", "coef_std"},
    "privacy": {"mechanism", "epsilon", "delta", "clip_norm", "applies_to", "description"},
    "privacy_accounting": {"accountant", "adjacency", "exact", "statistics", "sensitivity", "noise_std"},
}


GRANULARITY_TEXT = {"unit": "channel stats", "channel_unit": "per channel and class, units pooled over classes",
                    "channel": "per channel and class only"}


def _also(d: dict | None, type_name: str, schema: Schema) -> str:
    """``  also: item=value ...`` for the items of ``d`` the curated text does not show ('' when none)."""
    if not d:
        return ""
    spec = schema.types[type_name]
    curated = CURATED.get(type_name, set())
    extra = [f"{n}={d[n]}" for n in list(spec.attrs) + list(spec.datasets) if n in d and n not in curated]
    return ("  also: " + ", ".join(extra)) if extra else ""


def format_summary(info: dict, schema: Schema | None = None) -> str:
    schema = schema_or_default(schema)
    m, d = info["model"], info["dataset"]
    dom = m["input_domain"]
    conv, check = dom.get("convention"), d.get("teacher_check")
    names = m.get("class_names")
    external = m.get("external_data_paths")
    lines = [
        f"{info['file']}: dfkd-meta {info['dfkd_meta_version']} sidecar, {info['file_bytes'] / 1e6:.2f} MB, "
        f"written by {info['writer_name']} {info['writer_version']} at {info['created_utc']}"
        + _also(info, "sidecar", schema),
        f"model    {m['file_name']} (sha256 {m['sha256'][:16]}...{', external data ' + str(external) if external else ''}), "
        f"ir {m['ir_version']}, opsets {dict(zip(m['opset_domains'], m['opset_versions']))}"
        + _also(m, "model_binding", schema),
        f"input    {m['input_name']} {m['input_dtype']} {m['input_shape']} {dom['layout']}, raw range "
        f"[{dom['value_min']}, {dom['value_max']}], normalised with mean {dom['norm_mean']} std {dom['norm_std']}"
        + _also(dom, "input_domain", schema),
        "         input convention: " + (f"{conv['name']} ({conv['source']})"
                                        + (f", flattened images {conv['image_shape']}" if conv.get("image_shape") else "")
                                        + _also(conv, "input_convention", schema)
                                        if conv else "not recorded (a sidecar made before format 1.1)"),
        f"logits   {m['logits_name']}: {m['num_classes']} classes" + (
            f" ({', '.join(names[:10])}{', ...' if len(names) > 10 else ''})" if names else ""),
        f"data     {d['name']} ({d['license']}): {d['sample_count']} examples, per class {d['class_counts']}"
        + _also(d, "dataset_provenance", schema),
        "teacher  " + (_check_line(check) + _also(check, "teacher_check", schema) if check else
                       "not checked on the data (a sidecar made before format 1.1; `dfkd-meta validate --data` checks it)"),
        "layers:",
    ]
    for x in info["layers"]:
        cov = x.get("cov_factors")
        rank = (cov["shape"][2] if isinstance(cov, dict) else np.asarray(cov).shape[2]) if cov is not None else None
        extra = [f"T={x['temperature']:g}" if x.get("temperature") else "",
                 f"keep={x['dropout_keep_prob']:g}" if x.get("dropout_keep_prob") else "",
                 f"cov rank {rank}" if rank else "",
                 GRANULARITY_TEXT.get(x.get("granularity", "unit")) if x.get("channel") else ""]
        lines.append(f"  {x['order']:>2} {x['key']:<28} {x['kind']:<16} {str(x['shape']):<14} "
                     f"{x.get('bytes', 0) / 1e6:7.2f} MB  {' '.join(e for e in extra if e)}  [{x['tensor_name']}]"
                     + _also(x, "layer_stats", schema))
    spectral = info.get("spectral") or []
    lines.append("spectral blocks:" if spectral else "spectral blocks: none")
    for s in spectral:
        ev = s["eigenvalues"]
        lo, hi = (min(ev), max(ev)) if isinstance(ev, list) else (ev["min"], ev["max"])
        nodes = s["basis"]["shape"][0] if isinstance(s["basis"], dict) else len(s["basis"])
        lines.append(f"  {s['key']:<40} {s['scope']:<11} {nodes:>6} nodes, k={s['k']:<4} eigenvalues "
                     f"[{lo:.3g}, {hi:.3g}]  {s.get('bytes', 0) / 1e6:.2f} MB" + _also(s, "spectral_stats", schema))
    p = info.get("privacy")
    lines.append("privacy: none (no noise added)" if p is None else
                 f"privacy: {p['mechanism']} epsilon={p['epsilon']:g} delta={p['delta']:g} clip={p['clip_norm']:g} "
                 f"on {p['applies_to']}" + _also(p, "privacy", schema))
    acc = (p or {}).get("accounting")
    if p is not None:
        lines.append("  accounting: none recorded: the budget is the publisher's claim, not checked" if acc is None
                     else f"  accounting: {acc['accountant']} over {len(acc['statistics'])} noised statistics "
                          f"({acc['adjacency']}), checked against the recorded noise; released exactly: "
                          f"{', '.join(acc.get('exact') or []) or 'nothing'}" + _also(acc, "privacy_accounting", schema))
    return "\n".join(lines)


def _check_line(t: dict) -> str:
    line = (f"right on {t['accuracy']:.2%} of the {t['samples']} {t['split']} examples (mean confidence "
            f"{t['mean_confidence']:.3f}, threshold {t['min_accuracy']:.2f})")
    if not t["forced"]:
        return line
    return line + f" -- FORCED by the publisher: {forced_reason(t['accuracy'], t['min_accuracy'])}"


def plot_top_layer(sidecar: Sidecar, path: str | os.PathLike) -> Path:
    """Per-class means +- std of the top (logits) layer, one panel per class."""
    plt = pyplot()

    per_unit = [x for x in sidecar.layers_in_order() if x.per_unit]
    if not per_unit:
        raise DfkdError(f"{path}: no layer of this sidecar is stored per unit and class, so there is no top layer "
                        "to plot; `dfkd-meta show` without the plot lists its layers")
    top = next((x for x in per_unit[::-1] if x.kind == "logits"), per_unit[-1])
    c = sidecar.num_classes
    names = sidecar.model.class_names or [str(i) for i in range(c)]
    cols = min(5, c)
    rows = -(-c // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.2 * rows), squeeze=False, sharey=True)
    units = np.arange(top.units)
    for k in range(rows * cols):
        ax = axes[k // cols, k % cols]
        if k >= c:
            ax.axis("off")
            continue
        colors = ["#e6550d" if u == k else "#3182bd" for u in units] if top.units == c else "#3182bd"
        ax.bar(units, top.mean[k], yerr=top.std[k], color=colors, capsize=1.5, linewidth=0)
        ax.set_title(f"class {names[k]} (n={top.count[k]})", fontsize=8)
        ax.tick_params(labelsize=6)
    label = f"{top.key} ({top.kind}{', divided by T=' + format(top.temperature, 'g') if top.temperature else ''})"
    fig.suptitle(f"per-class mean +- std of {label}", fontsize=9)
    fig.tight_layout()
    return save_png(fig, path)
