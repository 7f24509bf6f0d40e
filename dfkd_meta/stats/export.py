"""Model + private data -> release folder: the ONNX teacher and its statistics sidecar.

One streaming pass over the data (ONNX Runtime, no gradients) accumulates, per class and in
float64, the moments of every chosen layer, of each conv layer's channels, optional low-rank
covariances, and the spectral coefficients of every spectral block.
"""
from __future__ import annotations

import dataclasses
import math
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from tqdm.auto import tqdm

from ..data import DataSource, as_model_input, fits
from ..errors import DfkdError, UsageError
from ..fileio import atomic_path
from ..onnx.graph import load_onnx
from ..onnx.inspect import candidate_layers, external_data_locations, model_facts
from ..onnx.runtime import OrtModel
from ..sidecar import (ChannelStats, DatasetProvenance, LayerStats, Sidecar, SidecarInvalidError, SpectralStats,
                       validate, write_sidecar)
from ..sidecar.binding import model_binding
from ..train import dropout_keep_from_metadata, export_onnx
from .moments import ClassMoments, pool_positions, sketch_width
from .spectral import LayerRef, plan_spectral

MAX_SKETCH_ENTRIES = 2 ** 25  # float64 covariance-sketch entries per layer (256 MiB); larger layers get none


def _sketch_fits(classes: int, shape, cov_rank: int) -> bool:
    units = math.prod(shape)
    return cov_rank > 0 and classes * units * sketch_width(units, cov_rank) <= MAX_SKETCH_ENTRIES


@dataclass
class ExportResult:
    model_path: Path
    sidecar_path: Path
    summary: dict = field(default_factory=dict)


def layer_key(tensor: str, taken: set[str]) -> str:
    """A group name matching SPEC §8 for an ONNX tensor name, unique among ``taken``."""
    key = re.sub(r"[^A-Za-z0-9_.-]+", "_", tensor).strip("_.") or "layer"
    key = key[-60:]
    candidate, n = key, 1
    while candidate in taken:
        n += 1
        candidate = f"{key[:57]}_{n}"
    taken.add(candidate)
    return candidate


def _place_model(model: str | Path | torch.nn.Module, data: DataSource, out_dir: Path, name: str | None,
                 created: list[Path]) -> Path:
    """The release's copy of the model (external-data files beside it, names unchanged).

    Every file this creates is appended to ``created`` so a failed export can remove it.
    """
    if isinstance(model, torch.nn.Module):
        from ..models import hidden_dropout_keep_probs

        target = out_dir / f"{name or 'teacher'}.onnx"
        for p in (target, target.parent / (target.name + ".data")):
            if not p.exists():
                created.append(p)
        return export_onnx(model, data.input_shape, target, dropout_keep=hidden_dropout_keep_probs(model))
    src = Path(model)
    target = out_dir / f"{name or src.stem}.onnx"
    if src.resolve() != target.resolve():
        for loc in external_data_locations(onnx.load(str(src), load_external_data=False)):
            if not (out_dir / loc).exists():
                created.append(out_dir / loc)
            with atomic_path(out_dir / loc) as tmp:
                shutil.copyfile(src.parent / loc, tmp)
        if not target.exists():
            created.append(target)
        with atomic_path(target) as tmp:
            shutil.copyfile(src, tmp)
    return target


def _check_input(path: Path, facts, data: DataSource) -> None:
    inp = facts.inputs[0] if len(facts.inputs) == 1 else None
    if inp is None or not fits(data.input_shape, inp.per_example_shape):
        got = list(inp.per_example_shape or []) if inp else [i.name for i in facts.inputs]
        raise DfkdError(f"{path}: the model expects input {got} but --data {data.spec or data.name} gives "
                        f"{list(data.input_shape)}; pass --resize N or the matching data set")


def export_release(model: str | Path | torch.nn.Module, data: DataSource, out_dir: str | Path, *,
                   layers: list[str] | None = None, temperature: float = 8.0, cov_rank: int = 0,
                   spectral_k: int | None = None, split: str = "train",
                   batch_size: int = 512, limit: int | None = None, name: str | None = None,
                   dropout_keep: dict[str, float] | None = None, progress: bool = True) -> ExportResult:
    """Write ``out_dir/<name>.onnx`` and ``out_dir/<name>.dfkd.h5``; returns paths and a summary.

    ``spectral_k`` sets the eigenvectors per spectral block (None: 64 for all layers, 32 per pair;
    0: no spectral statistics).
    """
    t0 = time.perf_counter()
    if temperature <= 0:
        raise UsageError(f"--temperature {temperature}: must be > 0")
    loaded = None
    if isinstance(model, (str, Path)):  # check the inputs before writing anything
        proto = load_onnx(model)
        facts = model_facts(model, proto)
        _check_input(Path(model), facts, data)
        _choose_layers(proto, facts, _logits_name(facts, Path(model)), layers, Path(model))
        loaded = (proto, facts)
    out_dir = Path(out_dir)
    made_dir = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    created: list[Path] = []
    try:
        return _export(model, data, out_dir, created, t0, loaded, layers=layers, temperature=temperature,
                       cov_rank=cov_rank, spectral_k=spectral_k, split=split,
                       batch_size=batch_size, limit=limit, name=name, dropout_keep=dropout_keep, progress=progress)
    except BaseException:
        for p in created:  # a failed export leaves nothing behind
            p.unlink(missing_ok=True)
        if made_dir and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise


def _export(model, data: DataSource, out_dir: Path, created: list[Path], t0: float, loaded: tuple | None, *,
            layers, temperature, cov_rank, spectral_k, split, batch_size, limit, name, dropout_keep,
            progress) -> ExportResult:
    onnx_path = _place_model(model, data, out_dir, name, created)
    if loaded is not None:
        proto, facts = loaded  # the release copy has the same bytes as the model checked above
    else:  # a torch module, exported just now
        proto = load_onnx(onnx_path)
        facts = model_facts(onnx_path, proto)
        _check_input(onnx_path, facts, data)
    logits = _logits_name(facts, onnx_path)
    chosen = _choose_layers(proto, facts, logits, layers, onnx_path)
    keep = {**dropout_keep_from_metadata(proto), **(dropout_keep or {})}

    refs = [LayerRef(key, tensor, shape) for key, tensor, _, shape in chosen]
    plans = plan_spectral(proto, refs, data.input_shape, spectral_k, spectral_k, progress) if spectral_k != 0 else []
    t_graph = time.perf_counter() - t0

    c = data.num_classes
    moments = {key: ClassMoments(c, math.prod(shape), cov_rank=cov_rank if _sketch_fits(c, shape, cov_rank) else 0)
               for key, _, _, shape in chosen}
    coef = {p.key: ClassMoments(c, p.k) for p in plans}
    bases = {p.key: p.basis.astype(np.float32) for p in plans}
    runner = OrtModel(proto, taps=[t for _, t, _, _ in chosen])
    n_total = min(data.size(split), limit) if limit else data.size(split)
    seen, t1 = 0, time.perf_counter()
    bar = tqdm(total=n_total, desc="statistics", unit="ex", disable=None if progress else True, leave=False)
    model_shape = facts.inputs[0].per_example_shape
    for x, y in data.batches(split, batch_size, limit=limit):
        order = np.argsort(y, kind="stable")  # each class becomes one contiguous slice of every tensor
        x, y = x[order], y[order]
        out = runner.run(as_model_input(x, model_shape))
        values = {}
        for key, tensor, kind, shape in chosen:
            v = out[tensor].reshape(len(y), -1)
            values[key] = v / np.float32(temperature) if kind == "logits" else v
            moments[key].update(values[key], y)
            if not (np.isfinite(moments[key].mean).all() and np.isfinite(moments[key].m2).all()):
                raise DfkdError(f"{onnx_path}: tensor {tensor!r} is not finite (or beyond float32 range) on the data; "
                                "check the model and the input normalisation")
        for p in plans:
            signal = np.concatenate([values[r.key] for r in p.layers], axis=1)
            coef[p.key].update(signal @ bases[p.key], y)
        seen += len(y)
        bar.update(len(y))
    bar.close()
    t_pass = time.perf_counter() - t1
    if seen == 0:
        raise DfkdError(f"--data {data.spec or data.name}: the {split!r} split is empty")

    stats = []
    for order, (key, tensor, kind, shape) in enumerate(chosen):
        m = moments[key]
        stats.append(LayerStats(
            key=key, tensor_name=tensor, order=order, kind=kind, shape=tuple(shape),
            mean=m.mean.astype(np.float32), std=m.std().astype(np.float32), count=m.count.copy(),
            temperature=temperature if kind == "logits" else None, dropout_keep_prob=keep.get(tensor),
            cov_factors=m.low_rank_factors(min(cov_rank, m.mean.shape[1])).astype(np.float32)
            if m.sketch is not None else None,
            channel=_channel_stats(m, shape[0]) if len(shape) >= 2 else None))
    blocks = [SpectralStats(key=p.key, scope=p.scope, layers=[r.key for r in p.layers], k=p.k,
                            eigenvalues=p.eigenvalues, basis=p.basis.astype(np.float32),
                            coef_mean=coef[p.key].mean.astype(np.float32),
                            coef_std=coef[p.key].std().astype(np.float32), weight_tensors=p.weight_tensors)
              for p in plans]
    labels = data.labels(split)[:limit] if limit else data.labels(split)
    sidecar = Sidecar(
        model=model_binding(onnx_path, data.input_domain if len(model_shape) > 1 else
                            dataclasses.replace(data.input_domain, layout="NC"),
                            logits_name=logits, class_names=data.class_names),
        dataset=DatasetProvenance(name=data.name, description=data.description, license=data.license,
                                  sample_count=seen, class_counts=np.bincount(labels, minlength=c).astype(np.int64)),
        layers=stats, spectral=blocks)
    sidecar_path = out_dir / f"{onnx_path.stem}.dfkd.h5"
    if not sidecar_path.exists():
        created.append(sidecar_path)
    write_sidecar(sidecar, sidecar_path)
    report = validate(sidecar_path, onnx_path)
    if not report.valid:
        raise SidecarInvalidError(sidecar_path, report, action="export")
    skipped_cov = [k for k, m in moments.items() if cov_rank and m.sketch is None]
    summary = {
        "model": str(onnx_path), "sidecar": str(sidecar_path), "sidecar_bytes": sidecar_path.stat().st_size,
        "samples": seen, "classes": c, "layers": [{"key": k, "tensor": t, "kind": kd, "shape": list(s)}
                                                   for k, t, kd, s in chosen],
        "spectral_blocks": [{"key": p.key, "nodes": p.basis.shape[0], "k": p.k} for p in plans],
        "cov_rank": cov_rank, "cov_skipped_layers": skipped_cov, "temperature": temperature,
        "seconds": round(time.perf_counter() - t0, 3), "graph_seconds": round(t_graph, 3),
        "pass_seconds": round(t_pass, 3), "samples_per_second": round(seen / max(t_pass, 1e-9), 1),
    }
    return ExportResult(onnx_path, sidecar_path, summary)


def _channel_stats(moments: ClassMoments, channels: int) -> ChannelStats:
    pooled = pool_positions(moments, channels)
    return ChannelStats(pooled.mean.astype(np.float32), pooled.std().astype(np.float32))


def _logits_name(facts, path: Path) -> str:
    if len(facts.outputs) != 1:
        raise DfkdError(f"{path}: {len(facts.outputs)} outputs; export needs a single logits output")
    return facts.outputs[0].name


def _choose_layers(proto, facts, logits: str, names: list[str] | None, path: Path) -> list[tuple]:
    """(key, tensor, kind, per-example shape) for each statistics layer, in graph order."""
    candidates = candidate_layers(facts, proto, logits)
    by_name = {c.name: c for c in candidates}
    if names is None:
        picked = [c for c in candidates if c.default]
    else:
        order = {o: k for k, n in enumerate(proto.graph.node) for o in n.output}
        unknown = [n for n in names if n not in order]
        if unknown:
            raise UsageError(f"{path}: --layers names unknown tensors {unknown}; `dfkd-meta inspect {path}` lists them")
        picked = []
        for n in sorted(dict.fromkeys(names), key=order.__getitem__):
            if n in by_name:
                picked.append(by_name[n])
            else:
                info = facts.value_info.get(n)
                kind = "logits" if n == logits else "pre_activation"
                picked.append(type(candidates[0])(n, "", info.per_example_shape if info else None, kind, False)
                              if candidates else None)
    if not any(c.kind == "logits" for c in picked) and logits in by_name and names is None:
        picked.append(by_name[logits])
    taken: set[str] = set()
    out = []
    for c in picked:
        if c.shape is None:
            raise DfkdError(f"{path}: the shape of {c.name!r} is not known statically; choose other --layers")
        out.append((layer_key("logits" if c.kind == "logits" else c.name, taken), c.name, c.kind, c.shape))
    if not out:
        raise DfkdError(f"{path}: no statistics layers found; name them with --layers (see `dfkd-meta inspect`)")
    return out
