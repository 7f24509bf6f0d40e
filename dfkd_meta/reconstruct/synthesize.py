"""The reconstruction loop: optimise random inputs until the teacher's activations match targets.

Batches are class-balanced and independent: batch b draws its classes, targets and initial inputs
from ``(seed, b)`` alone. So the same seed gives the same file, and ``resume`` can skip the batches
already on disk without changing the result.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import dist
from ..config import ReconstructConfig, settings
from ..device import resolve_device
from ..errors import DfkdError
from ..fileio import PrivateFolder, output_lock, require_file
from ..onnx.graph import OnnxModule, load_onnx
from ..onnx.inspect import copy_model
from ..progress import progress as progress_bar
from ..sidecar import open_sidecar
from ..transfer import TransferWriter
from .init import FirstLayerGaussian
from .inputs import domain_bounds, require_image, to_model, to_raw
from .objectives import Context, build_objective
from .priors import MomentMatcher, augment, image_prior_loss


@dataclass
class ReconstructResult:
    path: Path
    summary: dict


def _batch_classes(b: int, size: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Classes of batch b: a slice of the globally balanced sequence 0, 1, ..., C-1, 0, 1, ..., shuffled."""
    return rng.permutation((np.arange(size) + b * size) % num_classes)


def batch_generator(seed: int, b: int) -> torch.Generator:
    """The generator of batch ``b``: made from the seed and the index alone, so a batch is the same however many
    batches ran before it (resume, a second pass) and on every machine."""
    return torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(f"{seed}/{b}".encode()).digest()[:7], "big"))


def input_domain_record(binding) -> dict:
    """The sidecar's input domain as the transfer file records it (SPEC §6.1, TRANSFER.md)."""
    return {**binding.input_domain.as_record(),
            "image_shape": list(binding.image_shape) if binding.image_shape else None}


def reconstruct(model: str | Path, sidecar: str | Path, out: str | Path, cfg: ReconstructConfig, *,
                device: str = "auto", resume: bool = False, progress: bool = True,
                preview: str | Path | None = None) -> ReconstructResult:
    """Build a transfer set from ``model`` and its ``sidecar`` (validated and bound first).

    ``out`` appears only when every batch is written and every value is finite; a second run on the
    same ``out`` is refused while this one holds it.
    """
    main = dist.is_main_process()  # under torchrun every process optimises its share of the batches
    with output_lock(out) if main else contextlib.nullcontext(), PrivateFolder() as folder:
        # the teacher is copied once (hashed as copied); the sidecar is validated against that copy, and that
        # copy is what runs: a model file replaced after the check is never read
        with dist.together("reconstruct"):
            copy = copy_model(folder, require_file(model, "model"))
        return _reconstruct(copy.path, sidecar, out, cfg, device=device, resume=resume, progress=progress and main,
                            preview=preview)


def _finite_batch(sidecar, b: int, **arrays: np.ndarray) -> None:
    bad = [name for name, a in arrays.items() if not np.isfinite(a).all()]
    if bad:
        raise DfkdError(f"{sidecar}: batch {b} gave non-finite {', '.join(bad)} (the teacher's activations or the "
                        "targets drawn from this sidecar overflow float32); nothing was written to the output: check "
                        "the sidecar with `dfkd-meta validate`, or lower {lr}")


def _reconstruct(model, sidecar, out, cfg: ReconstructConfig, *, device, resume, progress, preview
                 ) -> ReconstructResult:
    cfg.check()
    with dist.together("reconstruct"):  # every process checks what it reads
        checked = open_sidecar(sidecar, model)  # refuses invalid or unbound sidecars: nothing is written before this
    sc = checked.sidecar
    view = require_image(sc.model, cfg.priors.image_options(), str(sidecar)) if cfg.priors.image_options() else None
    dev = resolve_device(device)
    proto = load_onnx(model)
    teacher = OnnxModule(proto, source=str(model)).to(dev).eval()
    ctx = Context(sc, proto, dev, cfg.loss_form, cfg.spectral_targets)
    obj = build_objective(cfg.objective, ctx)
    matcher = MomentMatcher(sc.layers, dev, cfg.priors.feature_layers) if cfg.priors.feature else None
    if matcher is not None and not matcher.layers:
        if cfg.priors.feature_layers == "channels":
            raise DfkdError(f"{sidecar}: {{feature_layers}} channels needs a layer with channel statistics (a conv "
                            "map), and this sidecar has none; use {feature_layers} all")
        raise DfkdError(f"{sidecar}: {{feature_weight}} needs statistics of a hidden layer, and this sidecar only has "
                        "the logits; drop {feature_weight}, or re-export with hidden layers in the export's {layers}")
    init = obj.start_from or cfg.init  # an objective that is a way of starting (first_layer_gaussian) sets it
    start = FirstLayerGaussian(sc, proto, str(sidecar)) if init == "first-layer" else None
    logits = sc.model.logits_name
    taps = list(dict.fromkeys(obj.taps() + (matcher.tensors if matcher else []) + [logits]))
    temperature = ctx.logits_layer.temperature
    lo, hi = domain_bounds(sc.model, dev)
    c = sc.num_classes
    input_shape = sc.model.input_shape[1:]
    provenance = {"model_sha256": sc.model.sha256, "sidecar_sha256": checked.sha256,
                  "objective": cfg.objective, "settings": settings(cfg)}
    writer = None
    with dist.together("reconstruct"):
        if dist.is_main_process():  # the one writer; the others send it their batches
            writer = TransferWriter(out, input_shape=input_shape, num_classes=c, temperature=temperature,
                                    provenance=provenance, input_domain=input_domain_record(sc.model),
                                    input_space=cfg.store, resume=resume)
    n_batches = math.ceil(cfg.samples / cfg.batch_size)
    # batches already on disk: a resumed run may have another number of processes (a batch depends on (seed, b) only)
    first = int(dist.from_main(writer.done // cfg.batch_size if writer is not None else 0))
    steps = cfg.steps if obj.optimise else 0
    world, rank = dist.world_size(), dist.rank()
    mine = len(range(first + rank, n_batches, world))
    bar = progress_bar(total=mine * max(steps, 1), desc=f"reconstruct {cfg.objective}", unit="step",
                       enabled=progress)

    def size_of(b: int) -> int:
        return min(cfg.batch_size, cfg.samples - b * cfg.batch_size)

    def shapes_of(b: int) -> dict[str, tuple] | None:  # what the process optimising batch b sends the writer
        if b >= n_batches:
            return None
        n = size_of(b)
        return {"x": ((n, *input_shape), np.float32), "teacher_logits": ((n, c), np.float32),
                "teacher_soft": ((n, c), np.float32), "loss": ((n,), np.float32), "classes": ((n,), np.int64)}

    t0, sent = time.perf_counter(), dist.traffic["bytes"]
    try:
        for r0 in range(first, n_batches, world):  # one round: batch r0 + rank on each process
            b = r0 + rank
            arrays = None
            with dist.together(f"reconstruct batch {b + 1}"):
                if b < n_batches:
                    arrays = _optimise_batch(b, size_of(b), sidecar=sidecar, cfg=cfg, sc=sc, obj=obj, start=start,
                                             init=init, teacher=teacher, taps=taps, logits=logits, matcher=matcher,
                                             temperature=temperature, lo=lo, hi=hi, dev=dev, view=view, bar=bar,
                                             steps=steps)
            gathered = dist.gather_to_main(arrays, [shapes_of(r0 + i) for i in range(world)])
            if writer is not None:
                for got in gathered:
                    if got is not None:
                        writer.append(**got)
    except BaseException:
        if writer is not None:
            writer.close()  # the partial file keeps every finished batch for --resume ...
            if writer.done == 0:
                writer.partial.unlink(missing_ok=True)  # ... and is removed when it holds none
        bar.close()
        raise
    bar.close()
    seconds = time.perf_counter() - t0
    if writer is None:  # another process: the main one holds the file and reports it
        with dist.together("reconstruct: finishing the transfer set"):
            pass
        return ReconstructResult(Path(out), {"rank": rank, "batches": mine, "seconds": round(seconds, 3)})
    with dist.together("reconstruct: finishing the transfer set"):
        ts, path = writer.finish(), writer.path
    summary = {"transfer": str(path), "objective": cfg.objective, "samples": len(ts), "batches": n_batches,
               "resumed_batches": first, "seconds": round(seconds, 3), "processes": world,
               "communicated_bytes": dist.traffic["bytes"] - sent,  # by this process (the others' batches arrive)
               # a step is one forward and one backward pass per input; the last forward labels the batch
               "teacher_forward_examples": (cfg.samples - first * cfg.batch_size) * (steps + 1),
               "sample_steps_per_second": round((n_batches - first) * cfg.batch_size * max(steps, 1)
                                                / max(seconds, 1e-9), 1),
               "mean_loss": float(ts.loss.mean()),
               "teacher_agreement": float((ts.teacher_logits.argmax(1) == ts.classes).mean()),
               "settings": settings(cfg)}
    if preview is not None:
        from .preview import save_preview

        save_preview(ts, sc, preview)
        summary["preview"] = str(preview)
    return ReconstructResult(path, summary)


def _optimise_batch(b: int, size: int, *, sidecar, cfg: ReconstructConfig, sc, obj, start, init, teacher, taps, logits,
                    matcher, temperature, lo, hi, dev, view, bar, steps) -> dict[str, np.ndarray]:
    """Batch ``b``: its classes, targets and starting inputs from ``(seed, b)`` alone, optimised for ``steps``; the
    arrays the transfer file stores for it."""
    c = sc.num_classes
    input_shape = sc.model.input_shape[1:]
    rng = np.random.default_rng([cfg.seed, b])
    gen = batch_generator(cfg.seed, b)
    classes = _batch_classes(b, size, c, rng)
    batch = obj.start(classes, rng)
    if start is not None:
        x = start.sample(classes, gen).to(dev)
    elif init == "normal":  # drawn in raw values, then through the teacher's input convention
        raw = cfg.init_normal[0] + cfg.init_normal[1] * torch.randn((size, *input_shape), generator=gen)
        x = torch.from_numpy(to_model(raw.numpy(), sc.model)).to(dev)
    else:
        x0 = torch.rand((size, *input_shape), generator=gen)  # uniform over the valid input domain
        x = lo + (hi - lo) * x0.to(dev)
    if cfg.clip:
        x = x.clamp(lo, hi)
    x.requires_grad_(steps > 0)
    if steps:
        opt = torch.optim.Adam([x], lr=cfg.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps) if cfg.schedule == "cosine" \
            else torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
        transforms = obj.transforms(batch)
        for _ in range(steps):
            acts = teacher.run(augment(x, cfg.priors, gen, view), taps, transform=transforms)
            per_sample, terms = obj.loss(acts, batch)
            loss = per_sample.mean() + image_prior_loss(x, cfg.priors, view).mean()
            if matcher is not None:
                loss = loss + cfg.priors.feature * matcher.loss(acts, batch.classes, c)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if cfg.clip:
                with torch.no_grad():
                    x.clamp_(lo, hi)  # stay inside the recorded input domain
            bar.update(1)
            bar.set_postfix({k: f"{v.mean().item():.3g}" for k, v in terms.items()}
                            | {"total": f"{loss.item():.3g}"}, refresh=False)
    else:
        bar.update(1)
    with torch.no_grad():
        acts = teacher.run(x, taps, transform=obj.transforms(batch))
        per_sample, _ = obj.loss(acts, batch)
        out_logits = acts[logits] if not batch.masks else teacher.run(x, [logits])[logits]
        x_out = x.detach().cpu().numpy()
        arrays = {"x": to_raw(x_out, sc.model) if cfg.store == "raw" else x_out,
                  "teacher_logits": out_logits.cpu().numpy(),
                  "teacher_soft": torch.softmax(out_logits / temperature, 1).cpu().numpy(),
                  "loss": per_sample.cpu().numpy()}
        _finite_batch(sidecar, b, **arrays)
    return {**arrays, "classes": classes}
