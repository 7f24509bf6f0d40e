"""Distillation with the student in the loop: a synthesis method supplies every batch (``distill --method``).

One iteration is one student update on a batch the method synthesised (after its own synthesis
steps). With a sidecar whose first stored layer is affine, a share of each batch (``gaussian_mix``)
is drawn from the first-layer Gaussian of the sidecar's class prior and labelled by the teacher.
The student is trained as the method's paper trains it (loss, optimiser, learning rate,
temperature, schedule), and the final student is reported: no selection on the test set.
Checkpoints hold the student, the optimiser, the method's state and the random state, so a resumed
run gives the same student as an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .. import dist
from ..config import OnlineConfig, changed, settings
from ..convention import from_domain
from ..data import DataSource, Feed
from ..device import resolve_device
from ..errors import DfkdError, UsageError
from ..fileio import PrivateFolder, atomic_path, require_file
from ..onnx.inspect import copy_model
from ..progress import progress as progress_bar
from ..synthesis import get_method
from ..synthesis.base import NonFiniteLoss
from ..synthesis.context import SynthesisContext
from ..transfer import TransferWriter
from .features import student_taps
from .loop import DistillResult, bind_features, ddp_wrap
from .losses import Outputs, build_objective
from .monitor import StallMonitor
from .student import ScaledLogits, evaluate_pair, predict


def _optimizer(recipe: dict, params, iterations: int, clock: dict | None = None):
    """The student's optimiser and schedule; with ``clock`` (a time budget) the cosine follows
    ``clock["progress"]``, the share of the budget spent, instead of the iteration count."""
    if recipe["optimizer"] == "sgd":
        opt = torch.optim.SGD(params, lr=recipe["lr"], momentum=0.9, weight_decay=5e-4)
    else:
        opt = torch.optim.Adam(params, lr=recipe["lr"])
    if recipe.get("schedule", "cosine") == "constant":
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    if clock is not None:
        return opt, torch.optim.lr_scheduler.LambdaLR(
            opt, lambda _: 0.5 * (1.0 + math.cos(math.pi * min(1.0, clock["progress"]))))
    return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=iterations)


def distill_online(teacher: str | Path, student: nn.Module, cfg: OnlineConfig, *, sidecar: str | Path | None = None,
                   device: str = "auto", checkpoint: str | Path | None = None, resume: bool = False,
                   eval_data: DataSource | None = None, save_transfer: str | Path | None = None,
                   eval_every: int = 0, eval_split: str | None = None, progress: bool = True, log=None
                   ) -> DistillResult:
    """Train ``student`` on batches ``cfg.method`` synthesises against ``teacher`` (with ``sidecar`` as prior).

    A sidecar that does not validate or is bound to another model is refused before any work.
    ``eval_every`` > 0 also records the student's accuracy on ``eval_data`` every that many
    iterations (a learning curve; the evaluation's time is not counted in the run's seconds).
    ``eval_split``: the split of ``eval_data`` evaluated (default: ``test`` when it has one, else ``train``);
    benchmarks choose settings on ``val`` and read ``test`` once per reported row.
    """
    cfg.check()
    cls = get_method(cfg.method)
    with PrivateFolder() as folder:
        # the teacher is copied once, hashed as copied; the sidecar is checked against the copy, which is what runs
        copy = copy_model(folder, require_file(teacher, "teacher"))
        result = _distill_online(copy, cls, student, cfg, sidecar=sidecar, device=device, checkpoint=checkpoint,
                                 resume=resume, eval_data=eval_data, save_transfer=save_transfer,
                                 eval_every=eval_every, eval_split=eval_split, progress=progress, log=log)
    result.report["teacher"] = str(teacher)
    return result


def _distill_online(copy, cls, student, cfg: OnlineConfig, *, sidecar, device, checkpoint, resume, eval_data,
                    save_transfer, eval_every, eval_split, progress, log) -> DistillResult:
    dev = resolve_device(device)
    teacher = copy.path
    with dist.together(f"distill {cfg.method}"):  # every process checks the sidecar it reads
        ctx = SynthesisContext(teacher, sidecar, dev, input_norm=cfg.input_norm)
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    method = cls(ctx, dict(cfg.options), gen)
    world, rank = dist.world_size(), dist.rank()
    if world > 1:  # each process draws its own inputs (the modules start as the main process's: below)
        gen.manual_seed(_rank_seed(cfg.seed, rank, 0))
    scale = float(getattr(method, "logit_scale", 1.0))
    recipe = {**cls.student, **({"lr": cfg.lr} if cfg.lr is not None else {}),
              **({"temperature": cfg.temperature} if cfg.temperature is not None else {}),
              **({"loss": cfg.loss} if cfg.loss is not None else {})}
    objective = build_objective(recipe["loss"], features=cfg.features)
    if recipe["loss"] == "l1" and scale != 1.0:
        student = ScaledLogits(student, scale)
    else:
        scale = 1.0
    student.to(dev)
    params = [p for p in student.parameters() if p.requires_grad]
    if not params:
        raise UsageError(f"{{student}} {type(student).__name__}: the student has no trainable parameters")
    # the same pairing as offline; the teacher's tensors come from ctx.run on each batch here
    pairs, _ = bind_features(objective, teacher, student, tuple(ctx.input_shape), cfg.features, session=False)
    objective.to(dev)
    params += list(objective.parameters())
    model = ddp_wrap(student, dev)  # the student update under DDP; the method reads the student itself
    budget = cfg.minutes * 60.0 if cfg.minutes is not None else None
    clock = {"progress": 0.0} if budget is not None else None
    opt, sched = _optimizer(recipe, params, cfg.iterations, clock)
    local_batch = dist.share(cfg.batch_size)  # this process's share of every batch
    if local_batch == 0:
        raise UsageError(f"{{batch_size}} {cfg.batch_size}: fewer examples per batch than the {world} processes")
    n_gauss = round(cfg.gaussian_mix * local_batch) if ctx.gaussian is not None else 0
    run = {"config": settings(cfg), "teacher_sha256": copy.sha256, "sidecar_sha256": ctx.sidecar_sha256}
    ckpt = Path(checkpoint) if checkpoint else None
    start, history, seconds_before = 0, [], 0.0
    monitor = StallMonitor(ctx.num_classes)
    if resume and ckpt is not None and ckpt.exists():
        start, history, seconds_before = _load(ckpt, run, student, opt, sched, method, gen, ctx, monitor, objective)
        if world > 1 and rank > 0:  # the checkpoint holds the main process's random state: the others draw anew
            gen.manual_seed(_rank_seed(cfg.seed, rank, start))
    if world > 1:  # fresh or resumed, every process continues from the main process's state (and its generator)
        start = int(dist.from_main(start))
        dist.broadcast_parameters([*student.parameters(), *objective.parameters(),
                                   *(p for m in _modules(method) for p in m.parameters())])
    log = log or (tqdm.write if progress else None)
    dropout = [float(m.p) for m in student.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0]
    if dropout and log is not None:
        log(f"note: the student has dropout (p = {', '.join(f'{p:g}' for p in dropout)}). It is trained to match the "
            "teacher on fresh inputs, where dropout caps it (MNIST, DFAD with a sidecar: hinton800 97.4%, the same "
            "student without dropout, hinton800-plain, 98.4%); a student without dropout is usually better here")
    convention = from_domain(ctx.input_domain)
    curve_feed = Feed(convention, ctx.input_shape)
    curve_x = curve_y = None
    if eval_data is not None and eval_split is None:
        eval_split = "test" if eval_data.has_split("test") else "train"
    if eval_every and eval_data is not None and dist.is_main_process():
        curve_x, curve_y = eval_data.arrays(eval_split, feed=curve_feed)
    bar = progress_bar(range(start, cfg.iterations), desc=f"distill {cfg.method}", unit="it", enabled=progress,
                       initial=start, total=cfg.iterations)
    t0, losses_seen, done = time.perf_counter(), [], start
    out_of_time = budget is not None and seconds_before >= budget  # a resumed run whose budget is spent
    last_saved = start if resume else None
    stopped_on_stall = False  # this run ended on the monitor's alarm (not an alarm restored from a checkpoint)
    # what a method trains besides the student (generators, heads; FitNet's regressors) stays the same on every
    # process: each optimiser step first averages those parameters' gradients (per-batch latents and inputs stay local)
    sent = dist.traffic["bytes"]
    with _shared_gradients(method, objective):
        for it in (() if out_of_time else bar):
            if budget is not None:  # recomputed each step: evaluation pauses move t0
                method.deadline = t0 + budget - seconds_before
            try:
                x, t = method.next_batch(student, local_batch - n_gauss)
                if n_gauss:
                    xg = ctx.gaussian_inputs(ctx.sample_classes(n_gauss, gen), gen)
                    x, t = torch.cat([x, xg]), torch.cat([t, ctx.teacher_logits(xg)])
                student.train()
                with student_taps(student, pairs) as feats:
                    out = model(x)
                    s_feats = dict(feats)
                t_feats = {}
                if pairs:  # the teacher's paired tensors on the same batch: one more teacher pass, counted
                    with torch.no_grad():
                        ran = ctx.run(x.detach(), [p.teacher for p in pairs])
                    t_feats = {p.key: ran[p.teacher] for p in pairs}
                loss = objective(Outputs(out, s_feats), Outputs(t, t_feats), recipe["temperature"]) / scale
                if dist.any_rank(not torch.isfinite(loss))[0]:  # every process stops at the same iteration
                    raise NonFiniteLoss(cfg.method, next(
                        (what for what, v in (("the synthesised inputs", x), ("the teacher's logits", t),
                                              ("the student's outputs", out)) if not torch.isfinite(v).all()),
                        f"the student's loss ({recipe['loss']})"))
            except NonFiniteLoss as exc:
                kept = (f"; the last checkpoint (iteration {last_saved}) is kept in {ckpt}: --resume continues from it"
                        if ckpt is not None and last_saved else "; nothing was written")
                raise DfkdError(f"{exc.method}: {exc.term} became NaN or infinite at iteration {it + 1}; stopped"
                                f"{kept}. Lower the learning rates ({{lr}}, --set lr_g=...) or check the teacher's input "
                                "convention ({input_norm})") from None
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            # one clock reading per step, for the budget and the monitor: the main process's, so all stop together
            spent = dist.from_main(seconds_before + time.perf_counter() - t0)
            if clock is not None:
                clock["progress"], out_of_time = spent / budget, spent >= budget
            sched.step()
            losses_seen.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses_seen[-20:]):.4f}", refresh=False)
            done = it + 1
            alarm = monitor.update(out, t, losses_seen[-1], done, spent)
            if alarm is not None and log is not None:
                log(f"warning: {cfg.method}: {alarm['message']}. The final student will likely be poor; try another "
                    "method, lower learning rates (--lr, --set lr_g=...), or check the teacher's input convention")
            if cfg.stop_on_stall and dist.any_rank(alarm is not None)[0]:  # any process's alarm stops them all
                out_of_time = stopped_on_stall = True  # ends the loop after this iteration's checkpoint, like a spent budget
            if done % cfg.checkpoint_every == 0 or done == cfg.iterations or out_of_time:
                history.append({"iteration": done, "loss": float(np.mean(losses_seen[-cfg.checkpoint_every:])),
                                "teacher_examples": ctx.teacher_examples,
                                "seconds": round(seconds_before + time.perf_counter() - t0, 2)})
                if log is not None and done % max(cfg.checkpoint_every, cfg.iterations // 10) == 0:
                    log(f"{cfg.method}: iteration {done}/{cfg.iterations}, loss {history[-1]['loss']:.4f}, "
                        f"{history[-1]['seconds']:.0f} s")
                if ckpt is not None and dist.is_main_process():
                    _save(ckpt, run, done, history, seconds_before + time.perf_counter() - t0, student, opt, sched,
                          method, gen, ctx, monitor, objective)
                    last_saved = done
            if curve_x is not None and (done % eval_every == 0 or out_of_time):
                paused = time.perf_counter()
                accuracy = float((predict(student, curve_x, dev) == curve_y).mean())
                history.append({"iteration": done, "student_accuracy": accuracy,
                                "seconds": round(seconds_before + paused - t0, 2)})
                t0 += time.perf_counter() - paused  # evaluation is not part of the run's time
            if out_of_time:
                break
    bar.close()
    student.eval()
    seconds = seconds_before + time.perf_counter() - t0
    teacher_examples = int(dist.reduce_array(ctx.teacher_examples))  # every process's passes
    if not dist.is_main_process():  # the same student as the main process's, which evaluates and reports it
        return DistillResult(student, {"rank": rank, "processes": world, "iterations": done,
                                       "stalled": monitor.alarms, "distill_seconds": round(seconds, 2)}, convention)
    report = {"settings": run["config"], "method": cfg.method, "student_recipe": recipe,
              "method_settings": method.opt, "sidecar": str(sidecar) if sidecar is not None else None,
              "context": ctx.describe(), "gaussian_per_batch": n_gauss, "teacher": str(teacher),
              "student_dropout": dropout, "logit_scale": scale, "objective": dict(objective.weights),
              "feature_pairs": [{"key": p.key, "teacher": p.teacher, "student": p.student} for p in pairs],
              "input_convention": {"name": convention.name, "source": convention.source,
                                   "norm_mean": list(convention.norm_mean), "norm_std": list(convention.norm_std)},
              "teacher_sha256": run["teacher_sha256"], "iterations": done, "budget_minutes": cfg.minutes,
              "teacher_forward_examples": teacher_examples, "distill_seconds": round(seconds, 2),
              "processes": world, "batch_per_process": local_batch,
              # what one iteration sends besides DDP's gradient all-reduce (flags, the clock, a generator's gradients)
              "collective_bytes_per_iteration": round((dist.traffic["bytes"] - sent) / max(done - start, 1), 1),
              "ddp_gradient_bytes_per_iteration": sum(p.numel() * p.element_size() for p in student.parameters()
                                                      if p.requires_grad) if world > 1 else 0,
              "stalled": monitor.alarms, "stopped_on_stall": stopped_on_stall,
              "history": history}
    if eval_data is not None:
        report.update(evaluate_pair(teacher, student, eval_data, eval_split, dev, Feed(convention, ctx.input_shape)))
    if save_transfer is not None:  # the main process's synthetic set
        report["saved_transfer"] = str(_save_transfer(save_transfer, method, ctx, cfg, run))
    image = ctx.input_domain.get("image_shape")
    return DistillResult(student, report, convention, tuple(image) if image and len(ctx.input_shape) == 1 else None)


def _modules(method) -> list[nn.Module]:
    """The modules a method owns and trains across batches (its generator, CMI's projection head)."""
    return [m for m in vars(method).values() if isinstance(m, nn.Module)]


def _rank_seed(seed: int, rank: int, iteration: int) -> int:
    """The random stream of a process other than the main one (the main process keeps the one-process stream)."""
    return int.from_bytes(hashlib.sha256(f"{seed}/rank{rank}/{iteration}".encode()).digest()[:7], "big")


@contextlib.contextmanager
def _shared_gradients(method, objective: nn.Module):
    """Under several processes: before any optimiser's step, average the gradients of the parameters that must stay
    equal on every process (the method's own modules, the loss's trainable parts; DDP averages the student's), and
    copy the main process's values of any such module first seen (CMI's head is made on its first batch)."""
    if dist.world_size() == 1:
        yield
        return
    seen: set[int] = {id(p) for m in _modules(method) for p in m.parameters()} | {id(p) for p in objective.parameters()}

    def average(optimizer, args, kwargs) -> None:
        shared = {id(p): p for m in [*_modules(method), objective] for p in m.parameters()}
        stepped = [p for g in optimizer.param_groups for p in g["params"] if id(p) in shared]
        new = [p for p in stepped if id(p) not in seen]
        if new:
            dist.broadcast_parameters(new)
            seen.update(id(p) for p in new)
        dist.average_gradients(stepped)

    from torch.optim.optimizer import register_optimizer_step_pre_hook

    handle = register_optimizer_step_pre_hook(average)
    try:
        yield
    finally:
        handle.remove()


def _state(run, done, history, seconds, student, opt, sched, method, gen, ctx, monitor, objective=None) -> dict:
    return {"run": json.dumps(run, sort_keys=True), "iteration": done, "history": json.dumps(history),
            "objective": objective.state_dict() if objective is not None else {},
            "monitor": json.dumps(monitor.state_dict()),
            "seconds": seconds, "student": student.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(), "method": method.state_dict(), "rng": gen.get_state(),
            "torch_rng": torch.get_rng_state(), "teacher_examples": ctx.teacher_examples}


def _save(path: Path, run, done, history, seconds, student, opt, sched, method, gen, ctx, monitor,
          objective=None) -> None:
    with atomic_path(path) as tmp:
        torch.save(_state(run, done, history, seconds, student, opt, sched, method, gen, ctx, monitor, objective), tmp)


def _load(path: Path, run: dict, student, opt, sched, method, gen, ctx, monitor,
          objective=None) -> tuple[int, list, float]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle arbitrary objects
        recorded = json.loads(state["run"])
    except Exception as exc:
        raise DfkdError(f"{path}: cannot resume from this checkpoint ({type(exc).__name__}: {exc}); "
                        "delete it to start over") from None
    if recorded != run:
        raise UsageError(f"{path}: the checkpoint was made with different settings "
                         f"({'; '.join(changed(recorded, run))}); rerun with the same settings, or delete the "
                         "checkpoint to start over")
    try:
        student.load_state_dict(state["student"])
        if objective is not None:  # the loss's trainable parts (FitNet's regressors)
            objective.load_state_dict(state.get("objective", {}))
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        method.load_state_dict(state["method"])
        gen.set_state(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        ctx.teacher_examples = int(state["teacher_examples"])
        monitor.load_state_dict(json.loads(state.get("monitor", "{}")))
        return int(state["iteration"]), json.loads(state["history"]), float(state["seconds"])
    except Exception as exc:
        raise DfkdError(f"{path}: cannot resume from this checkpoint ({type(exc).__name__}: {exc}); "
                        "delete it to start over") from None


def _save_transfer(path, method, ctx: SynthesisContext, cfg: OnlineConfig, run: dict) -> Path:
    """The method's final synthetic set as a transfer file ``distill --transfer`` accepts."""
    x = method.synthetic_set(cfg.save_samples)
    writer = TransferWriter(path, input_shape=ctx.input_shape, num_classes=ctx.num_classes, temperature=1.0,
                            provenance={"model_sha256": run["teacher_sha256"],
                                        "sidecar_sha256": run["sidecar_sha256"] or "",
                                        "objective": f"online:{cfg.method}", "settings": settings(cfg)},
                            input_domain=ctx.input_domain)
    try:
        for i in range(0, len(x), 1024):
            chunk = x[i:i + 1024].to(ctx.device)
            logits = ctx.teacher_logits(chunk)
            writer.append(x=chunk.cpu().numpy(), classes=logits.argmax(1).cpu().numpy(),
                          teacher_logits=logits.cpu().numpy(), teacher_soft=torch.softmax(logits, 1).cpu().numpy(),
                          loss=np.zeros(len(chunk), np.float32))
    except BaseException:
        writer.close()
        writer.partial.unlink(missing_ok=True)
        raise
    writer.finish()
    return writer.path
