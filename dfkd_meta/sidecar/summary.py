"""Human-readable summary and plots of a (validated) sidecar: what `dfkd-meta show` prints."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..plotting import pyplot, save_png
from .types import Sidecar


def describe(sidecar: Sidecar, path: str | os.PathLike) -> dict:
    """Everything worth knowing about a sidecar, as plain data."""
    m, d = sidecar.model, sidecar.dataset
    nbytes = lambda *arrays: int(sum(a.nbytes for a in arrays if a is not None))  # noqa: E731
    return {
        "file": str(path), "file_bytes": Path(path).stat().st_size, "format_version": sidecar.format_version,
        "writer": f"{sidecar.writer_name} {sidecar.writer_version}", "created_utc": sidecar.created_utc,
        "model": {"file_name": m.file_name, "sha256": m.sha256, "external_data": list(m.external_data),
                  "ir_version": m.ir_version, "opsets": m.opset_imports, "input": m.input_name,
                  "input_shape": list(m.input_shape), "input_dtype": m.input_dtype, "logits": m.logits_name,
                  "classes": m.num_classes, "class_names": m.class_names,
                  "input_domain": {"layout": m.input_domain.layout,
                                   "range": [m.input_domain.value_min, m.input_domain.value_max],
                                   "norm_mean": list(m.input_domain.norm_mean),
                                   "norm_std": list(m.input_domain.norm_std),
                                   "convention": None if m.input_domain.convention is None else {
                                       "name": m.input_domain.convention.name,
                                       "source": m.input_domain.convention.source,
                                       "image_shape": None if m.input_domain.convention.image_shape is None
                                       else list(m.input_domain.convention.image_shape)}}},
        "dataset": {"name": d.name, "description": d.description, "license": d.license,
                    "samples": d.sample_count, "class_counts": d.class_counts.tolist(),
                    "teacher_check": None if d.teacher_check is None else {
                        "split": d.teacher_check.split, "samples": d.teacher_check.samples,
                        "accuracy": d.teacher_check.accuracy, "mean_confidence": d.teacher_check.mean_confidence,
                        "min_accuracy": d.teacher_check.min_accuracy, "forced": d.teacher_check.forced}},
        "layers": [{"key": x.key, "tensor": x.tensor_name, "order": x.order, "kind": x.kind, "shape": list(x.shape),
                    "units": x.units, "temperature": x.temperature, "dropout_keep_prob": x.dropout_keep_prob,
                    "cov_rank": None if x.cov_factors is None else int(x.cov_factors.shape[2]),
                    "channel_stats": x.channel is not None,
                    "bytes": nbytes(x.mean, x.std, x.count, x.cov_factors,
                                    *(() if x.channel is None else (x.channel.mean, x.channel.std)))}
                   for x in sidecar.layers_in_order()],
        "spectral": [{"key": s.key, "scope": s.scope, "layers": s.layers, "nodes": int(s.basis.shape[0]), "k": s.k,
                      "eigenvalues": [float(s.eigenvalues.min()), float(s.eigenvalues.max())],
                      "bytes": nbytes(s.basis, s.eigenvalues, s.coef_mean, s.coef_std)} for s in sidecar.spectral],
        "privacy": None if sidecar.privacy is None else {
            "mechanism": sidecar.privacy.mechanism, "epsilon": sidecar.privacy.epsilon,
            "delta": sidecar.privacy.delta, "clip_norm": sidecar.privacy.clip_norm,
            "applies_to": sidecar.privacy.applies_to},
    }


def format_summary(info: dict) -> str:
    m, d = info["model"], info["dataset"]
    dom = m["input_domain"]
    lines = [
        f"{info['file']}: dfkd-meta {info['format_version']} sidecar, {info['file_bytes'] / 1e6:.2f} MB, "
        f"written by {info['writer']} at {info['created_utc']}",
        f"model    {m['file_name']} (sha256 {m['sha256'][:16]}...{', external data ' + str(m['external_data']) if m['external_data'] else ''}), "
        f"ir {m['ir_version']}, opsets {m['opsets']}",
        f"input    {m['input']} {m['input_dtype']} {m['input_shape']} {dom['layout']}, raw range {dom['range']}, "
        f"normalised with mean {dom['norm_mean']} std {dom['norm_std']}",
        f"logits   {m['logits']}: {m['classes']} classes" + (f" ({', '.join(m['class_names'][:10])}"
                                                            f"{', ...' if len(m['class_names']) > 10 else ''})"
                                                            if m["class_names"] else ""),
        f"         input convention: " + (f"{dom['convention']['name']} ({dom['convention']['source']})"
                                       + (f", flattened images {dom['convention']['image_shape']}"
                                          if dom['convention']['image_shape'] else "")
                                       if dom["convention"] else "not recorded (a sidecar made before format 1.1)"),
        f"data     {d['name']} ({d['license']}): {d['samples']} examples, per class {d['class_counts']}",
        "teacher  " + (_check_line(d["teacher_check"]) if d["teacher_check"] else
                       "not checked on the data (a sidecar made before format 1.1; `dfkd-meta validate --data` checks it)"),
        "layers:",
    ]
    for x in info["layers"]:
        extra = [f"T={x['temperature']:g}" if x["temperature"] else "",
                 f"keep={x['dropout_keep_prob']:g}" if x["dropout_keep_prob"] else "",
                 f"cov rank {x['cov_rank']}" if x["cov_rank"] else "", "channel stats" if x["channel_stats"] else ""]
        lines.append(f"  {x['order']:>2} {x['key']:<28} {x['kind']:<16} {str(x['shape']):<14} "
                     f"{x['bytes'] / 1e6:7.2f} MB  {' '.join(e for e in extra if e)}  [{x['tensor']}]")
    lines.append("spectral blocks:" if info["spectral"] else "spectral blocks: none")
    for s in info["spectral"]:
        lines.append(f"  {s['key']:<40} {s['scope']:<11} {s['nodes']:>6} nodes, k={s['k']:<4} eigenvalues "
                     f"[{s['eigenvalues'][0]:.3g}, {s['eigenvalues'][1]:.3g}]  {s['bytes'] / 1e6:.2f} MB")
    p = info["privacy"]
    lines.append("privacy: none (no noise added)" if p is None else
                 f"privacy: {p['mechanism']} epsilon={p['epsilon']:g} delta={p['delta']:g} clip={p['clip_norm']:g} "
                 f"on {p['applies_to']}")
    return "\n".join(lines)


def _check_line(t: dict) -> str:
    line = (f"right on {t['accuracy']:.2%} of the {t['samples']} {t['split']} examples (mean confidence "
            f"{t['mean_confidence']:.3f}, threshold {t['min_accuracy']:.2f})")
    return line + (" -- BELOW THE THRESHOLD: the publisher forced the export" if t["forced"] else "")


def plot_top_layer(sidecar: Sidecar, path: str | os.PathLike) -> Path:
    """Per-class means +- std of the top (logits) layer, one panel per class."""
    plt = pyplot()

    top = next((x for x in sidecar.layers_in_order()[::-1] if x.kind == "logits"), sidecar.layers_in_order()[-1])
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
