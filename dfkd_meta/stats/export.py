"""Model + private data -> release folder: the ONNX teacher and its statistics sidecar.

The teacher is fed exactly its input convention (an option, its ONNX metadata, or raw values:
never a statistic of the data it was not asked for) and is measured on the data first: export
refuses a teacher that is not right on most of the examples it would describe (``force`` to
override). One streaming pass over the data (ONNX Runtime, no gradients) then accumulates, per
class and in float64, the moments of every chosen layer, of each conv layer's channels, optional
low-rank covariances, and the spectral coefficients of every spectral block.
"""
from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
import torch

from .. import dist
from ..config import ExportConfig, settings
from ..convention import InputConvention, resolve
from ..data import DataSource, Feed, fits
from ..errors import DfkdError, UsageError
from ..fileio import output_lock
from ..onnx.graph import load_onnx
from ..onnx.inspect import external_data_locations, model_facts
from ..onnx.runtime import OrtModel
from ..onnx.torch_export import dropout_keep_from_metadata, export_onnx, model_metadata
from ..progress import progress as progress_bar
from ..sidecar import (
    ChannelStats,
    DatasetProvenance,
    LayerStats,
    Sidecar,
    SidecarInvalidError,
    SpectralStats,
    validate,
    write_sidecar,
)
from ..sidecar.accounting import layer_bound
from ..sidecar.binding import model_binding
from ..sidecar.card import CARD_NAME, render_card
from ..sidecar.types import ConventionRecord, InputDomain
from .budget import LAYER_OVERHEAD, MB, LayerChoice, default_budget, plan_budget
from .folder import publish, stage_folder
from .layers import choose_layers as _choose_layers
from .moments import ChannelMoments, ClassMoments, PooledUnitMoments, pool_positions, sketch_width
from .private import PrivateRelease, clip_rows, noise_generator, require_class_counts
from .spectral import LayerRef, plan_spectral
from .teacher_check import (
    PRECHECK_EXAMPLES,
    AccuracyMeter,
    ConventionComparison,
    compare_conventions,
    default_min_accuracy,
    require_fit,
    require_no_better_rival,
)

MAX_BATCH = 512
# tapped activations of one batch at most (float32): a batch is held twice (inference one batch ahead) plus ONNX
# Runtime's own buffers, so export's peak memory follows the batch, not the model's width times 512
TAP_BYTES = 128 << 20
MAX_SKETCH_ENTRIES = 2 ** 25  # float64 covariance-sketch entries per layer (256 MiB); larger layers get none


def _sketch_fits(classes: int, shape, cov_rank: int) -> bool:
    units = math.prod(shape)
    return cov_rank > 0 and classes * units * sketch_width(units, cov_rank) <= MAX_SKETCH_ENTRIES


@dataclass
class ExportResult:
    model_path: Path
    sidecar_path: Path
    summary: dict = field(default_factory=dict)


@dataclass
class _Plan:
    """Everything decided before a byte is written: the model, its feed, the layers, the check."""

    source: Path
    proto: onnx.ModelProto
    facts: object
    logits: str
    chosen: list[tuple]
    convention: InputConvention
    feed: Feed
    domain: InputDomain
    classes: int
    class_names: list[str] | None
    min_accuracy: float


def _plan(path: Path, data: DataSource, cfg: ExportConfig) -> _Plan:
    proto = load_onnx(path)
    facts = model_facts(path, proto)
    inp = facts.inputs[0] if len(facts.inputs) == 1 else None
    if inp is None or not fits(data.input_shape, inp.per_example_shape):
        got = list(inp.per_example_shape or []) if inp else [i.name for i in facts.inputs]
        raise DfkdError(f"{path}: the model expects input {got} but {data.spec or data.name} gives "
                        f"{list(data.input_shape)}; pass {{resize}} N or the matching data set")
    model_shape = tuple(inp.per_example_shape)
    logits = _logits_name(facts, path)
    out_shape = next(o.shape for o in facts.outputs if o.name == logits)
    classes = out_shape[-1] if out_shape and isinstance(out_shape[-1], int) else None
    if classes is None:
        raise DfkdError(f"{path}: the logits {logits!r} have shape {out_shape}; expected [batch, classes]")
    top = int(max(data.labels(cfg.split).max(initial=0), 0))
    if top >= classes:
        raise DfkdError(f"{path}: the teacher has {classes} classes but {data.spec or data.name} has labels up to "
                        f"{top}; pass the data set the teacher was trained on")
    require_class_counts(data, cfg, classes)
    chosen = _choose_layers(proto, facts, logits, cfg.layers, path)
    convention = resolve(cfg.input_norm, model_metadata(proto), where=str(path), data_stats=data.channel_stats,
                         scalar_data_stats=data.scalar_stats)
    if len(model_shape) not in (1, 3):
        raise DfkdError(f"{path}: input of per-example shape {list(model_shape)}; export handles images "
                        "[C, H, W] and feature vectors [D]")
    feed = Feed(convention, model_shape)
    flat_image = data.is_image and len(model_shape) == 1
    recorded = convention.flattened(data.input_shape) if flat_image else convention
    lo, hi = cfg.value_range or ((convention.value_min, convention.value_max)
                                 if convention.value_min is not None else data.value_range())
    domain = InputDomain("NCHW" if len(model_shape) == 3 else "NC", float(lo), float(hi),
                         tuple(float(v) for v in recorded.norm_mean), tuple(float(v) for v in recorded.norm_std),
                         ConventionRecord(convention.name, convention.source,
                                          tuple(data.input_shape) if flat_image else None))
    names = data.class_names if len(data.class_names) == classes else None
    min_acc = cfg.min_accuracy if cfg.min_accuracy is not None else default_min_accuracy(classes)
    return _Plan(path, proto, facts, logits, chosen, convention, feed, domain, classes, names, min_acc)


def _precheck(plan: _Plan, data: DataSource, cfg: ExportConfig) -> ConventionComparison:
    """The teacher on a seeded sample of the split, fed its convention and each rival, before anything is written."""
    n = min(data.size(cfg.split), cfg.limit or data.size(cfg.split))
    runner = OrtModel(plan.proto)
    model_shape = tuple(plan.facts.inputs[0].per_example_shape)
    comparison = compare_conventions(lambda x: runner.run(x)[plan.logits], data, cfg.split, plan.convention,
                                     model_shape, limit=min(n, PRECHECK_EXAMPLES),
                                     batch_size=cfg.batch_size or auto_batch_size(plan.chosen, model_shape))
    if comparison.chosen.out_of_range:  # before any accuracy: the cause is the numbers, not the labels
        bad = comparison.chosen
        raise _not_finite(plan, plan.logits, f"; {bad.out_of_range} of {bad.total} sampled examples")
    where = {"model": str(plan.source), "data": data.spec or data.name, "convention": plan.convention.describe()}
    require_no_better_rival(comparison, **where, force=cfg.force)
    require_fit(comparison.chosen, plan.min_accuracy, **where, force=cfg.force, partial=n > PRECHECK_EXAMPLES)
    return comparison


def _not_finite(plan: _Plan, tensor: str, detail: str = "") -> DfkdError:
    return DfkdError(f"{plan.source}: tensor {tensor!r} is not finite (or beyond float32 range) on the data; check the "
                     f"model and its input convention ({{input_norm}}){detail}")


def export_release(model: str | Path | torch.nn.Module, data: DataSource, out_dir: str | Path,
                   config: ExportConfig | None = None, *, name: str | None = None,
                   dropout_keep: dict[str, float] | None = None, progress: bool = True, overwrite: bool = False,
                   **settings) -> ExportResult:
    """Write ``out_dir/<name>.onnx`` and ``out_dir/<name>.dfkd.h5``; returns paths and a summary.

    ``settings`` override fields of ``config`` (an ``ExportConfig``). A torch module is first
    written as ONNX (recording ``input_norm`` when given). Nothing is written until the model, the
    data, the layers and the teacher's accuracy on the data have been checked. The release is built
    in a temporary folder beside ``out_dir`` and published by renaming it (a new or empty
    ``out_dir``) or by moving its files in, the sidecar last; a failed or killed export leaves no
    release behind. An ``out_dir`` that already holds this release is refused unless ``overwrite``;
    a second export into the same folder at the same time is refused.
    """
    cfg = replace(config or ExportConfig(), **settings)
    cfg.check()
    out_dir = Path(out_dir)
    main = dist.is_main_process()  # under torchrun every process streams its shard; the main one alone writes
    t0 = time.perf_counter()
    with output_lock(out_dir) if main else contextlib.nullcontext(), \
            tempfile.TemporaryDirectory(prefix="dfkd-export-") as scratch:
        with dist.together("export"):
            if main and out_dir.exists() and not out_dir.is_dir():
                raise UsageError(f"{out_dir}: exists and is not a folder; {{output}} names the release folder")
            if isinstance(model, torch.nn.Module):
                from ..models import hidden_dropout_keep_probs

                conv = resolve(cfg.input_norm, {}, data_stats=data.channel_stats)
                cfg = replace(cfg, input_norm=conv)  # the module's convention: recorded in its ONNX file too
                source = export_onnx(model, data.input_shape, Path(scratch) / f"{name or 'teacher'}.onnx",
                                     convention=conv, dropout_keep=hidden_dropout_keep_probs(model))
            else:
                source = Path(model)
            sidecar_name = f"{name or source.stem}.dfkd.h5"
            for existing, what in ((sidecar_name, "a release"), (CARD_NAME, "a model card")):
                if main and os.path.lexists(out_dir / existing) and not overwrite:
                    raise UsageError(f"{out_dir}: already holds {what} ({existing}); pass {{overwrite}} to replace "
                                     "it, or choose another folder")
            plan = _plan(source, data, cfg)
            comparison = _precheck(plan, data, cfg)
        stage = stage_folder(out_dir) if main else out_dir
        try:
            result = _export(plan, data, stage, t0, cfg, comparison, name=name, dropout_keep=dropout_keep,
                             progress=progress and main)
            if main:
                publish(stage, out_dir, last=result.sidecar_path.name)
        except DfkdError as exc:  # messages about the staged files name the release folder, not the staging one
            exc.template = exc.template.replace(str(stage), str(out_dir))
            raise
        finally:
            if main:
                shutil.rmtree(stage, ignore_errors=True)
    model_path, sidecar_path = out_dir / result.model_path.name, out_dir / result.sidecar_path.name
    summary = {**result.summary, "model": str(model_path), "sidecar": str(sidecar_path)}
    return ExportResult(model_path, sidecar_path, summary)


def _place_model(src: Path, out_dir: Path, name: str | None) -> Path:
    """The release's copy of the model (external-data files beside it, names unchanged)."""
    target = out_dir / f"{name or src.stem}.onnx"
    for loc in external_data_locations(onnx.load(str(src), load_external_data=False)):
        (out_dir / loc).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src.parent / loc, out_dir / loc)
    shutil.copyfile(src, target)
    return target


def _export(plan: _Plan, data: DataSource, out_dir: Path, t0: float, cfg: ExportConfig,
            comparison: ConventionComparison, *,
            name, dropout_keep, progress) -> ExportResult:
    proto, facts, chosen, c = plan.proto, plan.facts, plan.chosen, plan.classes
    keep = {**dropout_keep_from_metadata(proto), **(dropout_keep or {})}
    model_shape = tuple(facts.inputs[0].per_example_shape)
    refs = [LayerRef(key, tensor, shape) for key, tensor, _, shape in chosen]
    omitted: list[str] = []
    t_plan = time.perf_counter()
    plans = plan_spectral(proto, refs, model_shape, cfg.spectral_k, cfg.spectral_k, progress, omitted,
                          max_nodes=cfg.spectral_max_nodes) \
        if cfg.spectral_k != 0 else []
    for p in plans:  # an eigenbasis of repeated eigenvalues differs with the thread count: all use the main one's
        p.basis, p.eigenvalues = dist.broadcast_array(p.basis), dist.broadcast_array(p.eigenvalues)
    t_graph = time.perf_counter() - t0  # everything before the statistics pass: the checks and the planning
    t_spectral = time.perf_counter() - t_plan

    budget = plan_budget([(key, tuple(shape), min(cfg.cov_rank, math.prod(shape)) if _sketch_fits(c, shape, cfg.cov_rank)
                           else 0) for key, _, _, shape in chosen], c,
                         budget=int(cfg.max_size * MB) if cfg.max_size is not None else default_budget(_model_bytes(plan)),
                         fixed_bytes=sum(_spectral_bytes(p, c) for p in plans), where=str(plan.source))
    moments = {key: _accumulator(budget.choices[key], c, cfg.cov_rank) for key, _, _, _ in chosen}
    coef = {p.key: ClassMoments(c, p.k) for p in plans}
    bases = {p.key: p.basis.astype(np.float32) for p in plans}
    private = PrivateRelease.for_export(cfg, [(key, tuple(shape), budget.choices[key].granularity)
                                              for key, _, _, shape in chosen], [(p.key, [r.key for r in p.layers])
                                                                                for p in plans])
    bounds = {key: layer_bound(cfg.dp_clip, shape) for key, _, _, shape in chosen} if private else {}
    # OMP_NUM_THREADS set (torchrun sets 1 for each of several processes on a machine): ONNX Runtime follows it
    threads = torch.get_num_threads() if "OMP_NUM_THREADS" in os.environ else None
    runner = OrtModel(proto, taps=[t for _, t, _, _ in chosen], spin=False, threads=threads)  # see _inference_ahead
    meter = AccuracyMeter()
    n_total = min(data.size(cfg.split), cfg.limit) if cfg.limit else data.size(cfg.split)
    seen, t1, sent = 0, time.perf_counter(), dist.traffic["bytes"]
    batch_size = cfg.batch_size or auto_batch_size(chosen, model_shape)
    world = dist.world_size()
    if world > 1:  # this process's batches: every world-th, from its rank on
        n_batches = -(-n_total // batch_size)
        n_total = sum(min(batch_size, n_total - b * batch_size) for b in range(dist.rank(), n_batches, world))
    bar = progress_bar(total=n_total, desc="statistics", unit="ex", enabled=progress)
    batches = data.batches(cfg.split, batch_size, feed=plan.feed, limit=cfg.limit, shard=(dist.rank(), world)) \
        if world > 1 else data.batches(cfg.split, batch_size, feed=plan.feed, limit=cfg.limit)
    with dist.together("export: the statistics pass"):
        seen = _statistics_pass(plan, runner, batches, chosen, plans, moments, coef, bases, meter, bar, private,
                                bounds, cfg.temperature)
    bar.close()
    if world > 1:  # Chan's merge across processes: every process then holds the statistics of all the data
        for accumulators in moments.values():
            for m in accumulators:
                m.merge_across_processes()
        for m in coef.values():
            m.merge_across_processes()
        meter.merge_across_processes()
        seen = int(dist.reduce_array(seen))
    t_pass, sent = time.perf_counter() - t1, dist.traffic["bytes"] - sent
    if seen == 0:
        raise DfkdError(f"{data.spec or data.name}: the {cfg.split!r} split is empty")
    require_fit(meter, plan.min_accuracy, model=str(plan.source), data=data.spec or data.name,
                convention=plan.convention.describe(), force=cfg.force)
    # forced: exported past either check (the threshold, or a rival convention that fits clearly better)
    check = meter.result(cfg.split, plan.min_accuracy, cfg.force and (
        meter.accuracy < plan.min_accuracy or comparison.clearly_better() is not None))

    labels = data.labels(cfg.split)[:cfg.limit] if cfg.limit else data.labels(cfg.split)
    class_counts = np.bincount(labels, minlength=c).astype(np.int64)
    onnx_path = out_dir / f"{name or plan.source.stem}.onnx"
    if not dist.is_main_process():  # the merged statistics are the main process's to write; wait for its outcome
        with dist.together("export: writing the release"):
            pass
        return ExportResult(onnx_path, out_dir / f"{onnx_path.stem}.dfkd.h5", {"rank": dist.rank(), "samples": seen})
    with dist.together("export: writing the release"):
        return _write_release(plan, data, out_dir, t0, cfg, comparison, name=name, keep=keep, chosen=chosen,
                              budget=budget, moments=moments, coef=coef, plans=plans, private=private, check=check,
                              class_counts=class_counts, seen=seen, omitted=omitted, batch_size=batch_size,
                              t_graph=t_graph, t_spectral=t_spectral, t_pass=t_pass, sent=sent)


def _statistics_pass(plan: _Plan, runner: OrtModel, batches, chosen, plans, moments, coef, bases,
                     meter: AccuracyMeter, bar, private, bounds, temperature: float) -> int:
    """Fold every batch's tapped tensors into the accumulators; returns the examples seen."""
    seen = 0
    for out, y in _inference_ahead(runner, batches):
        meter.update(out[plan.logits], y)
        values = {}
        for key, tensor, kind, _ in chosen:
            v = out[tensor].reshape(len(y), -1)
            values[key] = v / np.float32(temperature) if kind == "logits" else v
            if private:  # one example's influence on every statistic of the layer is bounded from here on
                values[key] = clip_rows(values[key], bounds[key])
            for m in moments[key]:
                m.update(values[key], y)
                if not (np.isfinite(m.mean).all() and np.isfinite(m.m2).all()):
                    raise _not_finite(plan, tensor)
        for p in plans:
            signal = np.concatenate([values[r.key] for r in p.layers], axis=1)
            coef[p.key].update(signal @ bases[p.key], y)
        seen += len(y)
        bar.update(len(y))
    return seen


def _write_release(plan: _Plan, data: DataSource, out_dir: Path, t0: float, cfg: ExportConfig,
                   comparison: ConventionComparison, *, name, keep, chosen, budget, moments, coef, plans, private,
                   check, class_counts, seen, omitted, batch_size, t_graph, t_spectral, t_pass, sent) -> ExportResult:
    """The main process's part: noise (a private release), the model's copy, the sidecar, its validation, the card."""
    c = plan.classes
    privacy_block = None
    if private:
        class_counts = private.noise_everything(class_counts, moments, coef, noise_generator())
        privacy_block = private.block()
    onnx_path = _place_model(plan.source, out_dir, name)
    stats = [_layer_stats(budget.choices[key], moments[key], tensor=tensor, order=order, kind=kind,
                          temperature=cfg.temperature if kind == "logits" else None, dropout_keep=keep.get(tensor))
             for order, (key, tensor, kind, _) in enumerate(chosen)]
    blocks = [SpectralStats(key=p.key, scope=p.scope, layers=[r.key for r in p.layers], k=p.k,
                            eigenvalues=p.eigenvalues, basis=p.basis.astype(np.float32),
                            coef_mean=coef[p.key].mean.astype(np.float32),
                            coef_std=coef[p.key].std().astype(np.float32), weight_tensors=p.weight_tensors)
              for p in plans]
    sidecar = Sidecar(
        model=model_binding(onnx_path, plan.domain, logits_name=plan.logits, class_names=plan.class_names),
        dataset=DatasetProvenance(name=data.name, description=data.description, license=data.license,
                                  sample_count=int(class_counts.sum()) if private else seen, class_counts=class_counts,
                                  teacher_check=check),
        layers=stats, spectral=blocks, privacy=privacy_block)
    sidecar_path = out_dir / f"{onnx_path.stem}.dfkd.h5"
    write_sidecar(sidecar, sidecar_path)
    report = validate(sidecar_path, onnx_path)
    if not report.valid:
        raise SidecarInvalidError(sidecar_path, report, action="export")
    (out_dir / CARD_NAME).write_text(render_card(sidecar, sidecar_path), encoding="utf-8")
    skipped_cov = [k for k, _, _, shape in chosen if cfg.cov_rank and budget.choices[k].granularity == "unit"
                   and not _sketch_fits(c, shape, cfg.cov_rank)]
    recorded = settings(replace(cfg, input_norm=plan.convention.name))
    summary = {
        "model": str(onnx_path), "sidecar": str(sidecar_path), "sidecar_bytes": sidecar_path.stat().st_size,
        "samples": seen, "classes": c, "layers": [{"key": k, "tensor": t, "kind": kd, "shape": list(s)}
                                                   for k, t, kd, s in chosen],
        "spectral_blocks": [{"key": p.key, "nodes": p.basis.shape[0], "k": p.k} for p in plans],
        "spectral_omitted": omitted,
        "input_convention": {"name": plan.convention.name, "source": plan.convention.source,
                             "description": plan.convention.describe(),
                             "norm_mean": list(plan.domain.norm_mean), "norm_std": list(plan.domain.norm_std),
                             "value_range": [plan.domain.value_min, plan.domain.value_max]},
        "teacher_check": {"split": check.split, "samples": check.samples, "accuracy": round(check.accuracy, 6),
                          "mean_confidence": round(check.mean_confidence, 6), "min_accuracy": check.min_accuracy,
                          "forced": check.forced, "sample_accuracy": round(comparison.chosen.accuracy, 6),
                          "rival_conventions": comparison.accuracies()},
        "batch_size": batch_size,
        "cov_rank": cfg.cov_rank, "cov_skipped_layers": skipped_cov, "temperature": cfg.temperature,
        "size_budget_bytes": budget.budget, "estimated_bytes": budget.nbytes(c),
        "granularity": {k: ch.granularity for k, ch in budget.choices.items()},
        "covariance_dropped_for_budget": [k for k, ch in budget.choices.items() if cfg.cov_rank and not ch.cov_rank
                                          and _sketch_fits(c, ch.shape, cfg.cov_rank)],
        "settings": recorded,
        "privacy": None if private is None else {
            "epsilon": private.epsilon, "delta": private.delta, "clip": private.clip, "statistics": len(private.noise),
            "noise_std": {k: round(v, 6) for k, v in private.noise.items()}},
        "seconds": round(time.perf_counter() - t0, 3), "graph_seconds": round(t_graph, 3),
        "spectral_planning_seconds": round(t_spectral, 3),
        "pass_seconds": round(t_pass, 3), "samples_per_second": round(seen / max(t_pass, 1e-9), 1),
        "processes": dist.world_size(), "communicated_bytes": sent,  # by this process, to merge the statistics
    }
    return ExportResult(onnx_path, sidecar_path, summary)


# the statistics overlap inference once they cost this share of its time: below it, the thread that folds
# them in takes more from ONNX Runtime's own threads than it hides (measured: LeNet-5 0.50 -> 0.60x of plain
# inference, the statistics ~60% of the inference time; hinton1200 0.80 -> 0.72x, ~10%)
OVERLAP_SHARE = 0.25
PROBE_BATCHES = 4


def _inference_ahead(runner: OrtModel, batches) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
    """(outputs, labels) per batch, examples sorted by class (each class one contiguous slice of every
    tensor), every batch once and in order, so the statistics are those of a sequential pass.

    The first ``PROBE_BATCHES`` run in turn with the caller's work on them (the statistics), timing
    both. When the statistics cost at least ``OVERLAP_SHARE`` of inference, the rest runs ONNX
    Runtime one batch ahead in a worker thread while the caller folds in the current one: the
    numpy reductions hold one core, and inference of small convolutions leaves part of the other idle.
    """

    def infer(x: np.ndarray, y: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        order = np.argsort(y, kind="stable")
        return runner.run(x[order]), y[order]

    batches = iter(batches)
    infer_s = caller_s = 0.0
    for _, (x, y) in zip(range(PROBE_BATCHES), batches):
        t0 = time.perf_counter()
        out = infer(x, y)
        t1 = time.perf_counter()
        yield out
        infer_s, caller_s = infer_s + t1 - t0, caller_s + time.perf_counter() - t1
    if caller_s < OVERLAP_SHARE * infer_s:
        yield from (infer(x, y) for x, y in batches)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dfkd-export-infer") as pool:  # waits on exit
        pending = None
        for x, y in batches:
            ahead = pool.submit(infer, x, y)
            if pending is not None:
                yield pending.result()
            pending = ahead
        if pending is not None:
            yield pending.result()


def _channel_stats(moments: ClassMoments) -> ChannelStats:
    """Stored per-channel statistics from per-channel moments (streamed, or pooled from per-unit ones)."""
    return ChannelStats(moments.mean.astype(np.float32), moments.std().astype(np.float32))


def auto_batch_size(chosen: list[tuple], input_shape) -> int:
    """Examples per ONNX Runtime call: up to MAX_BATCH, fewer when the tapped tensors of a batch would pass TAP_BYTES."""
    per_example = 4 * (math.prod(input_shape) + sum(math.prod(shape) for _, _, _, shape in chosen))
    return int(min(MAX_BATCH, max(8, TAP_BYTES // per_example)))


def _accumulator(choice: LayerChoice, classes: int, cov_rank: int) -> tuple[ClassMoments, ...]:
    """What the statistics pass keeps for one layer at its granularity: memory follows what is stored."""
    if choice.granularity == "unit":
        return (ClassMoments(classes, choice.units, cov_rank=cov_rank if choice.cov_rank else 0),)
    channels = ChannelMoments(classes, choice.channels, choice.units // choice.channels)
    return (channels, PooledUnitMoments(choice.units)) if choice.granularity == "channel_unit" else (channels,)


def _layer_stats(choice: LayerChoice, moments: tuple[ClassMoments, ...], **fields) -> LayerStats:
    common = dict(key=choice.key, tensor_name=fields["tensor"], order=fields["order"], kind=fields["kind"],
                  shape=choice.shape, temperature=fields["temperature"], dropout_keep_prob=fields["dropout_keep"],
                  granularity=choice.granularity)
    if choice.granularity == "unit":
        m = moments[0]
        return LayerStats(**common, mean=m.mean.astype(np.float32), std=m.std().astype(np.float32),
                          count=m.count.copy(),
                          cov_factors=m.low_rank_factors(choice.cov_rank).astype(np.float32)
                          if m.sketch is not None else None,
                          channel=_channel_stats(pool_positions(m, choice.channels)) if choice.channels else None)
    channels = moments[0]
    stored = _channel_stats(channels)
    pooled = moments[1] if choice.granularity == "channel_unit" else None
    return LayerStats(**common, count=channels.examples.copy(), channel=stored,
                      pooled_mean=pooled.mean[0].astype(np.float32) if pooled else None,
                      pooled_std=pooled.std()[0].astype(np.float32) if pooled else None)


def _model_bytes(plan: _Plan) -> int:
    """The teacher's size on disk: its file and its external data."""
    locations = external_data_locations(onnx.load(str(plan.source), load_external_data=False))
    return plan.source.stat().st_size + sum((plan.source.parent / loc).stat().st_size for loc in locations)


def _spectral_bytes(block, classes: int) -> int:
    nodes, k = block.basis.shape
    return LAYER_OVERHEAD + nodes * k * 4 + 2 * classes * k * 4 + 8 * k


def _logits_name(facts, path: Path) -> str:
    if len(facts.outputs) != 1:
        raise DfkdError(f"{path}: {len(facts.outputs)} outputs; export needs a single logits output")
    return facts.outputs[0].name
