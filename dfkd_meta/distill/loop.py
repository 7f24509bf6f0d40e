"""The distillation loop: a student trained on a transfer set or real data against the teacher's outputs.

Objective: ``(1 - alpha) * sum of the losses named + alpha * ce`` (losses.py; the default ``kd`` is
Hinton et al. 2015, KL of temperature-softened outputs times T^2). Hard labels are the teacher's own
predictions: no ground truth is assumed. The teacher runs through ONNX Runtime (no gradient is
needed); feature losses read its paired intermediate tensors (features.py) from a session that
returns them, and the student's through hooks. The inputs do not change between epochs, so the teacher's tensors
are computed once before the loop, as its logits are (and like them outside a ``minutes`` clock), when they fit in
``FEATURE_CACHE_BYTES``; else batch by batch inside the loop. The report's ``teacher_features`` says which.

One epoch is one pass over the inputs; a checkpoint after each records the whole config, the teacher and the
source (and the loss's trainable parts), so ``resume`` refuses a changed setting by name.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .. import dist
from ..config import DEFAULT_TEMPERATURE, DistillConfig, changed, settings
from ..convention import InputConvention, from_domain, resolve
from ..data import DataSource, Feed
from ..device import resolve_device
from ..errors import DfkdError, UsageError
from ..fileio import PrivateFolder, atomic_path, require_file
from ..onnx.inspect import copy_model, load_model_proto
from ..onnx.runtime import OrtModel
from ..onnx.torch_export import model_metadata
from ..progress import progress as progress_bar
from ..stats.teacher_check import AccuracyMeter, default_min_accuracy, require_fit
from ..transfer import TransferSet
from .features import FeaturePair, pair_features, student_features, student_taps, teacher_features
from .losses import Objective, Outputs, build_objective
from .monitor import StallMonitor
from .student import evaluate_pair, predict, teacher_input, teacher_logits

FEATURE_CACHE_BYTES = 2 << 30  # the teacher's paired tensors for every input are kept when they fit in this


@dataclass
class DistillResult:
    student: nn.Module
    report: dict = field(default_factory=dict)
    convention: InputConvention | None = None  # what the student takes, as the teacher does (None: unknown)
    image_shape: tuple[int, ...] | None = None  # the images behind a flat student input, when known


def teacher_convention(teacher: str | Path, source: TransferSet | DataSource,
                       input_norm: str | InputConvention | None = None,
                       eval_data: DataSource | None = None) -> InputConvention | None:
    """How to feed ``teacher``: the option, else what a transfer set records, else the teacher's metadata.

    The data whose statistics a ``data`` convention needs is ``source`` itself, or ``eval_data``
    for a transfer set.
    """
    if input_norm is None and isinstance(source, TransferSet) and source.input_domain is not None:
        return from_domain(source.input_domain)
    stats = source if isinstance(source, DataSource) else eval_data
    try:
        return resolve(input_norm, model_metadata(load_model_proto(teacher)), where=str(teacher),
                       data_stats=stats.channel_stats if stats else None,
                       scalar_data_stats=stats.scalar_stats if stats else None)
    except UsageError:
        if stats is None:  # a transfer set of format 1.0 and no data: nothing is fed raw, so nothing to know
            return None
        raise


def _save_checkpoint(path: Path, student: nn.Module, opt, sched, epoch: int, history: list, run: dict,
                     objective: Objective | None = None, *, loop_seconds: float = 0.0,
                     monitor: StallMonitor | None = None) -> None:
    with atomic_path(path) as tmp:
        torch.save({"student": student.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "objective": objective.state_dict() if objective is not None else {},
                    "epoch": epoch, "history": json.dumps(history), "run": json.dumps(run, sort_keys=True),
                    "loop_seconds": float(loop_seconds),
                    "monitor": json.dumps(monitor.state_dict() if monitor is not None else {})}, tmp)


def _load_checkpoint(path: Path, student: nn.Module, opt, sched, run: dict,
                     objective: Objective | None = None, monitor: StallMonitor | None = None) -> tuple[int, list, float]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle arbitrary objects
        recorded = json.loads(state["run"]) if "run" in state else None
    except Exception as exc:
        raise DfkdError(f"{path}: cannot resume from this checkpoint ({type(exc).__name__}: {exc}); "
                        "delete it to start over") from None
    if recorded != run:
        what = "; ".join(changed(recorded, run)) if isinstance(recorded, dict) else "no recorded settings"
        raise UsageError(f"{path}: the checkpoint was made with different settings ({what}); rerun with the same "
                         "settings, or delete the checkpoint to start over")
    try:
        student.load_state_dict(state["student"])
        if objective is not None:  # the loss's trainable parts (FitNet's regressors) resume with the student
            objective.load_state_dict(state.get("objective", {}))
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if monitor is not None:  # checkpoints from before the monitor have none: it starts afresh
            monitor.load_state_dict(json.loads(state.get("monitor", "{}")))
        return int(state["epoch"]), json.loads(state["history"]), float(state.get("loop_seconds", 0.0))
    except Exception as exc:
        raise DfkdError(f"{path}: cannot resume from this checkpoint ({type(exc).__name__}: {exc}); "
                        "delete it to start over") from None


def distill(teacher: str | Path, student: nn.Module, source: TransferSet | DataSource, cfg: DistillConfig, *,
            input_norm: str | InputConvention | None = None, device: str = "auto",
            checkpoint: str | Path | None = None, resume: bool = False, eval_data: DataSource | None = None,
            eval_split: str | None = None, progress: bool = True, log=None) -> DistillResult:
    """Train ``student`` to match the teacher on ``source``'s inputs (a transfer set, or real data's train split).

    The student takes what the teacher takes: a transfer set's model inputs, or real data fed
    through the teacher's input convention (``input_norm``, else the teacher's metadata, else raw
    values), in the data's own shape. On real data the teacher must pass the accuracy check first.
    ``eval_split``: the split of ``eval_data`` the final student is scored on (default ``test`` where there is
    one, else ``train``); benchmarks choose settings on ``val``. A student that stops learning is reported
    while the run goes on (``distill.monitor``: a warning through ``log``, or the end of the run with
    ``cfg.stop_on_stall``).
    """
    with PrivateFolder() as folder:
        # the teacher is copied once, hashed as copied: the copy is what runs and what the hash describes
        copy = copy_model(folder, require_file(teacher, "teacher"))
        result = _distill(copy, student, source, cfg, input_norm=input_norm, device=device, checkpoint=checkpoint,
                          resume=resume, eval_data=eval_data, eval_split=eval_split, progress=progress,
                          log=log or (tqdm.write if progress else None))
    result.report["teacher"] = str(teacher)
    return result


def _distill(copy, student: nn.Module, source: TransferSet | DataSource, cfg: DistillConfig, *, input_norm, device,
             checkpoint, resume, eval_data, eval_split, progress, log) -> DistillResult:
    teacher_sha256 = copy.sha256
    if cfg.epochs < 1 or cfg.batch_size < 1 or cfg.lr <= 0 or not 0 <= cfg.alpha <= 1:
        raise UsageError("{epochs} and {batch_size} must be >= 1, {lr} > 0 and 0 <= {alpha} <= 1")
    if cfg.minutes is not None and not (math.isfinite(cfg.minutes) and cfg.minutes > 0):
        raise UsageError(f"{{minutes}} {cfg.minutes}: must be a positive number of minutes")
    objective = build_objective(cfg.loss, cfg.alpha, cfg.features)
    teacher = copy.path
    dev = resolve_device(device)
    torch.manual_seed(cfg.seed)
    convention = teacher_convention(teacher, source, input_norm, eval_data)
    if isinstance(source, TransferSet):
        x = source.model_inputs()
        expected = source.provenance.get("model_sha256")
        if expected and expected != teacher_sha256:
            raise DfkdError(f"{teacher}: this is not the teacher the transfer set was reconstructed from "
                            f"(SHA-256 {expected[:16]}... expected); pass that teacher")
        temperature = cfg.temperature or source.temperature
        source_info = {"kind": "transfer", "input_space": source.input_space,
                       **{k: v for k, v in source.provenance.items()}}
        eval_feed = Feed(convention, tuple(x.shape[1:]))
    else:
        eval_feed = Feed(convention)
        x, y = source.arrays("train", feed=eval_feed)
        temperature = cfg.temperature or DEFAULT_TEMPERATURE
        source_info = {"kind": "data", "data": source.spec or source.name, "samples": int(len(x))}
    if temperature <= 0:
        raise UsageError(f"{{temperature}} {temperature}: must be > 0")
    t0 = time.perf_counter()
    # under torchrun each process labels its block of the inputs and every process gets all the labels
    mine = dist.shard_range(len(x))
    t_logits = dist.all_gather_rows(teacher_logits(teacher, x[mine.start:mine.stop]), len(x))
    if isinstance(source, DataSource):
        meter = AccuracyMeter()
        meter.update(t_logits, y)
        require_fit(meter, default_min_accuracy(t_logits.shape[1]), model=str(teacher),
                    data=source.spec or source.name, convention=convention.describe(), force=cfg.force)
        source_info["teacher_accuracy"] = meter.accuracy
    x_t, t_t = torch.from_numpy(x), torch.from_numpy(t_logits)
    student.to(dev)
    params = [p for p in student.parameters() if p.requires_grad]
    if not params:
        raise UsageError(f"{{student}} {type(student).__name__}: the student has no trainable parameters")
    pairs, tapped = bind_features(objective, teacher, student, tuple(x.shape[1:]), cfg.features)
    feature_cache, cache_seconds = _teacher_feature_cache(tapped, pairs, x, teacher, progress)
    objective.to(dev)
    params += list(objective.parameters())
    opt = torch.optim.Adam(params, lr=cfg.lr)
    world, rank = dist.world_size(), dist.rank()
    # the student under DistributedDataParallel (several processes): each takes every world-th example of the
    # global batch, gradients are averaged, and every process holds the same student after each step
    model = ddp_wrap(student, dev)
    # a global batch smaller than the number of processes would leave one with nothing: that last batch is skipped
    full, rest = divmod(len(x), cfg.batch_size)
    steps_per_epoch = full + (rest >= world)
    budget = cfg.minutes * 60.0 if cfg.minutes is not None else None
    clock = {"progress": 0.0}
    if budget is None:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps_per_epoch)
    else:  # under a clock the cosine follows the share of the budget spent, as the online loop's does
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda _: 0.5 * (1 + math.cos(math.pi * min(1.0, clock["progress"]))))
    ckpt = Path(checkpoint) if checkpoint else None
    run = {"config": settings(cfg), "teacher_sha256": teacher_sha256, "source": _source_identity(source)}
    start, history, loop_before = 0, [], 0.0
    monitor = StallMonitor(int(t_logits.shape[1]))
    if resume and ckpt is not None and ckpt.exists():
        start, history, loop_before = _load_checkpoint(ckpt, student, opt, sched, run, objective, monitor)
    if world > 1:  # fresh or resumed, every process continues from the main process's state (FitNet's regressors too)
        start = int(dist.from_main(start))
        dist.broadcast_parameters([*student.parameters(), *objective.parameters()])
    loop_t0, steps, out_of_time = time.perf_counter(), 0, budget is not None and loop_before >= budget
    stopped_on_stall = False
    for epoch in range(start, cfg.epochs):
        if out_of_time:
            break
        student.train()
        order = torch.from_numpy(np.random.default_rng([cfg.seed, epoch]).permutation(len(x)))
        losses = []
        bar = progress_bar(range(steps_per_epoch), desc=f"distill epoch {epoch + 1}/{cfg.epochs}", unit="step",
                           enabled=progress)
        for i in bar:
            idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size][rank::world]
            xb = x_t[idx]
            with student_taps(student, pairs) as feats:
                out = model(xb.to(dev))
                s_feats = dict(feats)
            t_feats = {}
            if feature_cache is not None:
                t_feats = {p.key: torch.from_numpy(feature_cache[p.key][idx.numpy()]).to(dev) for p in pairs}
            elif pairs:  # the teacher's paired tensors of this batch, from one more ONNX Runtime pass
                ran = tapped.run(teacher_input(tapped, xb.numpy(), teacher))
                t_feats = {p.key: torch.from_numpy(ran[p.teacher]).to(dev) for p in pairs}
            t_batch = t_t[idx].to(dev)
            loss = objective(Outputs(out, s_feats), Outputs(t_batch, t_feats), temperature)
            if dist.any_rank(not torch.isfinite(loss))[0]:  # a diverged student would train on to chance, silently
                kept = (f"; the checkpoint in {ckpt} (the last finished epoch) is kept: --resume continues from it"
                        if ckpt is not None and ckpt.exists() else "; nothing was written")
                raise DfkdError(f"{cfg.loss}: the student's loss became NaN or infinite at epoch {epoch + 1}, step "
                                f"{i + 1}; stopped{kept}. Lower {{lr}} or the loss weights ({{loss}} NAME:WEIGHT), or "
                                "check the teacher's input convention ({input_norm})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            dist.average_gradients(objective.parameters())  # the student's are averaged by DDP in backward
            opt.step()
            steps += 1
            if budget is not None:  # one clock reading per step (the main process's), for the schedule and the stop
                clock["progress"] = dist.from_main((loop_before + time.perf_counter() - loop_t0) / budget)
                out_of_time = clock["progress"] >= 1.0
            sched.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", refresh=False)
            alarm = monitor.update(out, t_batch, losses[-1], epoch * steps_per_epoch + i + 1,
                                   loop_before + time.perf_counter() - loop_t0)
            if alarm is not None and log is not None:
                log(f"warning: distill: {alarm['message']}. The final student will likely be poor; try a lower "
                    "--lr, other loss weights, or check the teacher's input convention (--input-norm)")
            # every process stops together: on any process's alarm (each watches its own batches)
            if cfg.stop_on_stall and dist.any_rank(alarm is not None)[0]:
                out_of_time = stopped_on_stall = True  # ends the run after this epoch's checkpoint
            if out_of_time:
                break
        bar.close()
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses))} |
                       ({"steps": len(losses)} if len(losses) < steps_per_epoch else {}))
        if ckpt is not None and dist.is_main_process():
            _save_checkpoint(ckpt, student, opt, sched, epoch + 1, history, run, objective,
                             loop_seconds=loop_before + time.perf_counter() - loop_t0, monitor=monitor)
    student.eval()
    seconds = time.perf_counter() - t0
    if not dist.is_main_process():  # the same student as the main process's, which evaluates and reports it
        return DistillResult(student, {"rank": rank, "processes": world, "steps_this_run": steps,
                                       "stalled": monitor.alarms, "loop_seconds": round(seconds, 3)}, convention)
    agreement_on_inputs = float((predict(student, x, dev) == t_logits.argmax(1)).mean())
    report = {"settings": {**settings(cfg), "temperature": temperature}, "source": source_info,
              "objective": dict(objective.weights),
              "feature_pairs": [{"key": p.key, "teacher": p.teacher, "student": p.student,
                                 "teacher_shape": list(p.teacher_shape), "student_shape": list(p.student_shape)}
                                for p in pairs],
              "teacher_features": None if not pairs else {
                  "cached": feature_cache is not None, "cache_seconds": round(cache_seconds, 3),
                  "cache_bytes": sum(a.nbytes for a in feature_cache.values()) if feature_cache is not None else 0},
              "teacher": str(teacher), "teacher_sha256": teacher_sha256, "samples": int(len(x)),
              "input_convention": None if convention is None else {
                  "name": convention.name, "source": convention.source, "norm_mean": list(convention.norm_mean),
                  "norm_std": list(convention.norm_std)},
              "distill_seconds": round(seconds, 3), "history": history,
              "loop_seconds": round(loop_before + time.perf_counter() - loop_t0, 3), "budget_minutes": cfg.minutes,
              "steps_this_run": steps, "epochs_done": len(history), "processes": world,
              "stalled": monitor.alarms, "stopped_on_stall": stopped_on_stall,
              "agreement_on_training_inputs": agreement_on_inputs}
    if eval_data is not None:
        split = eval_split or ("test" if eval_data.has_split("test") else "train")
        report.update(evaluate_pair(teacher, student, eval_data, split,
                                    dev, eval_feed))
    image = source.input_domain.get("image_shape") if isinstance(source, TransferSet) and source.input_domain else None
    return DistillResult(student, report, convention, tuple(image) if image and len(x.shape) == 2 else None)




def ddp_wrap(student: nn.Module, dev: torch.device) -> nn.Module:
    """``student`` under DistributedDataParallel when several processes run (its parameters broadcast from the main
    process, gradients averaged in backward); ``student`` itself in one process."""
    if dist.world_size() == 1:
        return student
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(student, device_ids=[dev.index] if dev.type == "cuda" else None)


def bind_features(objective: Objective, teacher: str | Path, student: nn.Module, input_shape: tuple[int, ...],
                  named: tuple[str, ...] = (), session: bool = True) -> tuple[list[FeaturePair], OrtModel | None]:
    """The feature pairs an objective with feature losses compares (named, else by stage), bound to the objective,
    and (``session``) an ONNX Runtime session that returns the teacher's paired tensors beside its logits; ([], None)
    for logit losses alone."""
    if not objective.uses_features:
        return [], None
    from ..onnx.inspect import model_facts

    proto = load_model_proto(teacher)
    pairs = pair_features(teacher_features(model_facts(teacher, proto), proto, every=bool(named)),
                          student_features(student, input_shape), named)
    objective.bind({p.key: (p.student_shape, p.teacher_shape) for p in pairs})
    return pairs, OrtModel(teacher, taps=[p.teacher for p in pairs]) if session else None


def _teacher_feature_cache(tapped: OrtModel | None, pairs: list[FeaturePair], x: np.ndarray, teacher,
                           progress: bool, batch_size: int = 512) -> tuple[dict[str, np.ndarray] | None, float]:
    """The teacher's paired tensors for every input, by pair key, when they fit in ``FEATURE_CACHE_BYTES`` (else
    None: the loop runs the teacher on each batch), and the seconds it took."""
    need = sum(4 * len(x) * math.prod(p.teacher_shape) for p in pairs)
    if not pairs or need > FEATURE_CACHE_BYTES:
        return None, 0.0
    t0 = time.perf_counter()
    cache = {p.key: np.empty((len(x), *p.teacher_shape), dtype=np.float32) for p in pairs}
    for i in progress_bar(range(0, len(x), batch_size), desc="teacher features", unit="batch", enabled=progress):
        ran = tapped.run(teacher_input(tapped, x[i:i + batch_size], teacher))
        for p in pairs:
            cache[p.key][i:i + batch_size] = ran[p.teacher].reshape(-1, *p.teacher_shape)
    return cache, time.perf_counter() - t0


def _source_identity(source: TransferSet | DataSource) -> dict:
    """What a checkpoint's inputs were: the transfer set's provenance, or the data's spec and size."""
    if isinstance(source, TransferSet):
        return {"kind": "transfer", "samples": len(source), "sidecar_sha256": source.provenance.get("sidecar_sha256"),
                "settings": source.provenance.get("settings")}
    return {"kind": "data", "data": source.spec or source.name, "samples": source.size("train")}
