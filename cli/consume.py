"""The consumer's commands: reconstruct a transfer set, distill a student, and the end-to-end demo."""
from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path

import click
from click.core import ParameterSource

from dfkd_meta.config import (
    INITS,
    LOSS_FORMS,
    RECONSTRUCT_PRESETS,
    SCHEDULES,
    SPECTRAL_TARGETS,
    DistillConfig,
    ExportConfig,
    OnlineConfig,
    Priors,
    ReconstructConfig,
    reconstruct_preset,
)
from dfkd_meta.errors import UsageError

from .common import (
    CONVENTION_HELP,
    DATA_HELP,
    DEVICE,
    QUIET,
    Command,
    RegistryChoice,
    RegistryOption,
    WeightedRegistryChoice,
    losses,
    methods,
    objectives,
    read_limit_options,
)


@click.command(cls=Command, flag_aliases={"feature": "--feature-weight"}, distributed=True)
@click.option("--model", required=True, type=click.Path(dir_okay=False), help="The ONNX teacher.")
@click.option("--sidecar", required=True, type=click.Path(dir_okay=False), help="Its .dfkd.h5 statistics sidecar.")
@click.option("--objective", cls=RegistryOption, type=RegistryChoice(objectives),
              default=ReconstructConfig.objective, show_default=True, help="What the inputs are optimised for.")
@click.option("--samples", type=click.IntRange(min=1), default=ReconstructConfig.samples, show_default=True,
              help="Transfer-set size (class-balanced).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The transfer-set file to write.")
@click.option("--steps", type=click.IntRange(min=0), default=ReconstructConfig.steps, show_default=True,
              help="Optimisation steps per batch (Adam, cosine schedule).")
@click.option("--batch-size", type=click.IntRange(min=1), default=ReconstructConfig.batch_size, show_default=True,
              help="Inputs optimised together.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=ReconstructConfig.lr, show_default=True,
              help="Adam step size on the inputs.")
@click.option("--seed", type=int, default=ReconstructConfig.seed, show_default=True,
              help="The same seed gives the same file.")
@click.option("--tv", type=click.FloatRange(min=0), default=Priors.tv, help="Total-variation prior weight (image inputs).")
@click.option("--l2", type=click.FloatRange(min=0), default=Priors.l2, help="L2 prior weight.")
@click.option("--jitter", type=click.IntRange(min=0), default=Priors.jitter,
              help="Random shifts of up to N pixels (image inputs).")
@click.option("--flip", is_flag=True, help="Random horizontal flips (image inputs; flip-symmetric classes only).")
@click.option("--feature-weight", "feature", type=click.FloatRange(min=0), default=Priors.feature,
              help="Batch moment matching: each class's examples spread like the recorded class on every hidden "
                   "layer (per channel where the sidecar has channel statistics, else per unit).")
@click.option("--feature-layers", type=click.Choice(["all", "channels"]), default=Priors.feature_layers,
              show_default=True,
              help="Layers the moment matching covers: every hidden layer, or only those with channel statistics.")
@click.option("--init", "init", type=click.Choice(list(INITS)), default=ReconstructConfig.init,
              show_default=True,
              help="Starting inputs: uniform over the input domain; first-layer, a per-class Gaussian whose image "
                   "under the first stored layer (affine in the input) has its recorded mean and covariance factors "
                   "(export with --cov-rank for the covariance); or normal, raw values from N(MEAN, STD) of "
                   "--init-normal.")
@click.option("--init-normal", type=(float, click.FloatRange(min=0, min_open=True)),
              default=ReconstructConfig.init_normal, show_default=True, metavar="MEAN STD",
              help="Raw mean and std of --init normal (0.15 0.1: Lopes et al. on MNIST).")
@click.option("--loss-form", type=click.Choice(list(LOSS_FORMS)), default=ReconstructConfig.loss_form,
              show_default=True,
              help="Each layer's term: squared error over the class's variance in that layer (normalised), or "
                   "the paper's squared error of rectified values over the layer's size (lopes2017).")
@click.option("--spectral-targets", type=click.Choice(list(SPECTRAL_TARGETS)),
              default=ReconstructConfig.spectral_targets, show_default=True,
              help="Spectral objectives' targets: each coefficient drawn from its recorded mean and std "
                   "(coefficients), or per-layer draws with their covariance factors projected onto the bases "
                   "(layers; export with --cov-rank for the covariance).")
@click.option("--schedule", type=click.Choice(list(SCHEDULES)), default=ReconstructConfig.schedule,
              show_default=True, help="The input step size over the steps: cosine to zero, or constant.")
@click.option("--clip/--no-clip", default=ReconstructConfig.clip, show_default=True,
              help="Keep inputs inside the recorded input domain after every step.")
@click.option("--preset", type=click.Choice(sorted(RECONSTRUCT_PRESETS)),
              help="Published settings for every option above (lopes2017: the paper's code on MNIST, see README); "
                   "options given explicitly override it.")
@click.option("--store", type=click.Choice(["model", "raw"]), default=ReconstructConfig.store, show_default=True,
              help="Store inputs as the model takes them (normalised) or as raw values; the file says which.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its .partial file.")
@click.option("--preview", type=click.Path(dir_okay=False), help="Write a PNG grid of samples per class (images).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@DEVICE
@QUIET
@read_limit_options
def reconstruct(model, sidecar, objective, samples, output, steps, batch_size, lr, seed, tv, l2, jitter, flip,
                feature, feature_layers, init, init_normal, loss_form, spectral_targets, schedule, clip, preset, store,
                resume, preview, as_json, device, quiet):
    """Reconstruct a transfer set from a teacher and its sidecar (no data needed).

    \b
    Examples:
      dfkd-meta reconstruct --model release/teacher.onnx --sidecar release/teacher.dfkd.h5 \\
          --objective spectral_all_layers --samples 10000 -o transfer.h5 --preview samples.png
      dfkd-meta reconstruct --model release/teacher.onnx --sidecar release/teacher.dfkd.h5 \\
          --objective spectral_layer_pairs --preset lopes2017 --samples 2560 -o transfer.h5 --resume
    """
    from dfkd_meta import dist
    from dfkd_meta.fileio import require_file
    from dfkd_meta.reconstruct.synthesize import reconstruct as run

    require_file(model, "model")
    require_file(sidecar, "sidecar")
    given = click.get_current_context().get_parameter_source
    values = {"objective": objective, "samples": samples, "steps": steps, "batch_size": batch_size, "lr": lr,
              "seed": seed, "init": init, "init_normal": tuple(init_normal), "loss_form": loss_form,
              "schedule": schedule, "clip": clip, "store": store, "spectral_targets": spectral_targets}
    prior_values = {"tv": tv, "l2": l2, "jitter": jitter, "flip": flip, "feature": feature,
                    "feature_layers": feature_layers}
    if preset is None:
        cfg = ReconstructConfig(**values, priors=Priors(**prior_values))
    else:  # the preset's values, then what the user typed on top
        explicit = {k: v for k, v in values.items() if given(k) == ParameterSource.COMMANDLINE}
        priors = dataclasses.replace(RECONSTRUCT_PRESETS[preset]["priors"], **{
            k: v for k, v in prior_values.items() if given(k) == ParameterSource.COMMANDLINE})
        cfg = reconstruct_preset(preset, **explicit, priors=priors)
    result = run(model, sidecar, output, cfg, device=device, resume=resume, progress=not quiet, preview=preview)
    if not dist.is_main_process():  # under torchrun: the main process wrote the transfer set and reports it
        return
    s = result.summary
    if as_json:
        click.echo(json.dumps(s, indent=2))
        return
    click.echo(f"wrote {s['transfer']}: {s['samples']} samples ({cfg.objective}), teacher agrees with the target class "
               f"on {s['teacher_agreement']:.1%}, mean final loss {s['mean_loss']:.4g}, {s['seconds']:.1f} s"
               + (f" (resumed after {s['resumed_batches']} batches)" if s["resumed_batches"] else ""))


@click.command(cls=Command, flag_aliases={"name": "--student", "source": "--transfer/--data", "options": "--set"},
                distributed=True)
@click.option("--teacher", required=True, type=click.Path(dir_okay=False), help="The ONNX teacher.")
@click.option("--transfer", type=click.Path(dir_okay=False), help="A transfer set from `dfkd-meta reconstruct`.")
@click.option("--data", help="Distill on real data instead (vanilla KD baseline): " + DATA_HELP)
@click.option("--method", cls=RegistryOption, type=RegistryChoice(methods),
              help="Synthesise the inputs online, the student in the loop, with this published method.")
@click.option("--sidecar", type=click.Path(dir_okay=False),
              help="With --method: the teacher's sidecar, whose statistics become the method's prior.")
@click.option("--iterations", type=click.IntRange(min=1), default=OnlineConfig.iterations, show_default=True,
              help="With --method: student updates (with --minutes: at most this many).")
@click.option("--minutes", type=click.FloatRange(min=0, min_open=True),
              help="A wall-clock budget for the training loop; the learning-rate schedule follows the time spent, "
                   "and the run stops when it is spent (or at --iterations, with --transfer/--data at --epochs).")
@click.option("--set", "options", multiple=True, metavar="KEY=VALUE",
              help="With --method: one of the method's own settings (repeatable); the report lists them.")
@click.option("--gaussian-mix", type=click.FloatRange(0, 1, max_open=True), default=OnlineConfig.gaussian_mix,
              show_default=True, help="With --method and a sidecar: share of each batch drawn from the sidecar's "
              "first-layer Gaussian.")
@click.option("--save-transfer", type=click.Path(dir_okay=False),
              help="With --method: write the final synthetic set as a transfer file `distill --transfer` accepts.")
@click.option("--resize", type=int, help="Pad/resize --data/--eval images to N x N.")
@click.option("--input-norm", help="How the teacher takes raw values (--data, --eval, and the inputs --method "
              "synthesises; recorded, and written into the student): " + CONVENTION_HELP +
              ". Default: what the transfer set or sidecar records, else the teacher's ONNX metadata, else raw values.")
@click.option("--student", required=True, help="A reference model name (hinton800, lenet5-half, ...) or "
              "module:factory (imports and runs that module's code).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="student.onnx to write (+ .json report).")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True),
              help=f"Default: the transfer set's (else {ExportConfig.temperature:g}); with --method the method's.")
@click.option("--loss", cls=RegistryOption, type=WeightedRegistryChoice(losses), multiple=True,
              help=f"The distillation loss, repeatable to sum several, each NAME or NAME:WEIGHT (default weight: the "
                   f"one its paper runs it at; default loss {DistillConfig.loss}; with --method the method's paper's). "
                   "Feature losses (at, fitnet, nst, pkt, rkd, sp, cc) compare paired intermediate tensors, see "
                   "--features.")
@click.option("--features", multiple=True, metavar="TEACHER_TENSOR=STUDENT_MODULE",
              help="A feature pair for the feature losses (repeatable): a tensor of the teacher's graph (dfkd-meta "
                   "inspect lists them) and a student module path (':input' for its input). Default: the stages "
                   "paired by spatial size, and the final dense layers' inputs.")
@click.option("--alpha", type=click.FloatRange(0, 1), default=DistillConfig.alpha, show_default=True,
              help="Weight of cross-entropy on the teacher's argmax labels (the loss gets 1 - alpha).")
@click.option("--epochs", type=click.IntRange(min=1), default=DistillConfig.epochs, show_default=True,
              help="Passes over the inputs (--transfer/--data).")
@click.option("--batch-size", type=click.IntRange(min=2),
              help=f"Examples per step (default {DistillConfig.batch_size}; {OnlineConfig.batch_size} with --method).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True),
              help=f"Student learning rate (default {DistillConfig.lr:g} with Adam; with --method the method's).")
@click.option("--seed", type=int, default=DistillConfig.seed, show_default=True,
              help="Seeds the student's initialisation, shuffling and synthesis.")
@click.option("--eval", "eval_spec", help="Labelled data to report accuracies on: " + DATA_HELP)
@click.option("--force", is_flag=True, help="With --data: go ahead even when the teacher fails the accuracy check.")
@click.option("--resume", is_flag=True, help="Continue from the checkpoint <output>.ckpt.")
@click.option("--keep-checkpoint", is_flag=True, help="Keep <output>.ckpt after a successful run (it is removed "
              "by default: the run is complete).")
@click.option("--stop-on-stall", is_flag=True, help="End the run when the student stops learning (agreement with the "
              "teacher at chance, or its loss rising, for 150 steps); without it a stall is a warning and the run "
              "goes on.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report.")
@DEVICE
@QUIET
@read_limit_options
def distill(teacher, transfer, data, method, sidecar, iterations, minutes, options, gaussian_mix, save_transfer, resize,
            input_norm, student, output, temperature, loss, features, alpha, epochs, batch_size, lr, seed, eval_spec, force,
            resume,
            keep_checkpoint, stop_on_stall, as_json, device, quiet):
    """Train a student against the teacher's outputs: on a transfer set, on real data, or online.

    \b
    Examples:
      dfkd-meta distill --teacher release/teacher.onnx --transfer transfer.h5 --student lenet5-half \\
          -o student.onnx --eval mnist:DATA/mnist --resize 32
      dfkd-meta distill --teacher release/teacher.onnx --method dfad --sidecar release/teacher.dfkd.h5 \\
          --student lenet5-half --iterations 3000 -o student.onnx --eval mnist:DATA/mnist --resize 32
    """
    import torch

    from dfkd_meta import dist
    from dfkd_meta.data import load_data
    from dfkd_meta.device import retain_freed_memory
    from dfkd_meta.distill import distill as run
    from dfkd_meta.distill import distill_online, load_transfer_for, write_student
    from dfkd_meta.fileio import output_lock, require_file
    from dfkd_meta.models import build_model

    require_file(teacher, "teacher")
    loss = ",".join(loss) or None  # several --loss options: their sum
    if sum(x is not None for x in (transfer, data, method)) != 1:
        raise UsageError("pass exactly one of --transfer FILE (data-free, offline), --method NAME (data-free, online) "
                         "or --data SPEC (KD with real data)")
    mode = "transfer" if transfer is not None else "data" if data is not None else "method"
    _refuse_options_of_other_modes(click.get_current_context(), mode)
    if mode == "method" and sidecar is None and \
            click.get_current_context().get_parameter_source("gaussian_mix") == ParameterSource.COMMANDLINE:
        raise UsageError("--gaussian-mix draws from the sidecar's first-layer Gaussian: pass --sidecar too, or drop it")
    main = dist.is_main_process()  # under torchrun: the main process alone locks, writes and reports
    with output_lock(output) if main else contextlib.nullcontext():  # a second run on the same -o fails at once
        eval_source = load_data(eval_spec, resize) if eval_spec else None
        torch.manual_seed(seed)
        if method is not None:
            if sidecar is not None:
                require_file(sidecar, "sidecar")
            from dfkd_meta.onnx.inspect import model_facts, num_classes, require_input_shape

            facts = model_facts(teacher)
            input_shape = require_input_shape(facts, teacher)
            model = build_model(student, input_shape, num_classes(facts, teacher))
            cfg = OnlineConfig(method=method, iterations=iterations, minutes=minutes, input_norm=input_norm,
                               batch_size=batch_size or OnlineConfig.batch_size,
                               lr=lr, temperature=temperature, loss=loss, features=tuple(features), seed=seed,
                               gaussian_mix=gaussian_mix,
                               options=_options(options), stop_on_stall=stop_on_stall)
            retain_freed_memory()  # the generators' large maps, reallocated every step
            result = distill_online(teacher, model, cfg, sidecar=sidecar, device=device, checkpoint=output + ".ckpt",
                                    resume=resume, eval_data=eval_source, save_transfer=save_transfer,
                                    progress=not quiet)
        else:
            source = load_transfer_for(teacher, require_file(transfer, "transfer set")) if transfer \
                else load_data(data, resize)
            input_shape = tuple(source.x.shape[1:]) if transfer else source.input_shape
            num_classes = source.teacher_logits.shape[1] if transfer else source.num_classes
            model = build_model(student, input_shape, num_classes)
            cfg = DistillConfig(temperature=temperature, loss=loss or DistillConfig.loss, alpha=alpha, epochs=epochs,
                                batch_size=batch_size or DistillConfig.batch_size, lr=lr or DistillConfig.lr, seed=seed,
                                force=force, features=tuple(features), minutes=minutes, stop_on_stall=stop_on_stall)
            result = run(teacher, model, source, cfg, input_norm=input_norm, device=device, checkpoint=output + ".ckpt",
                         resume=resume, eval_data=eval_source, progress=not quiet)
        if not main:
            return
        path = write_student(result.student, input_shape, output, {**result.report, "student": student},
                             convention=result.convention, image_shape=result.image_shape)
        if not keep_checkpoint:
            Path(output + ".ckpt").unlink(missing_ok=True)  # the run is done: nothing to resume
    r = result.report
    if as_json:
        click.echo(json.dumps({**r, "student": student, "output": str(path)}, indent=2, default=str))
        return
    click.echo(f"wrote {path} and {path.with_suffix('.json')} ({r['distill_seconds']:.1f} s)")
    if "teacher_forward_examples" in r:
        click.echo(f"  {r['iterations']} iterations of {method}, {r['teacher_forward_examples']:,} teacher forward "
                   "examples" + (f", transfer set {r['saved_transfer']}" if r.get("saved_transfer") else ""))
    for alarm in r.get("stalled", []):
        click.echo(f"  warning: {alarm['message']}" + (" (stopped there)" if r.get("stopped_on_stall") else ""))
    if "student_accuracy" in r:
        click.echo(f"  on {r['eval_data']} ({r['eval_split']}): teacher {r['teacher_accuracy']:.4f}, student "
                   f"{r['student_accuracy']:.4f}, agreement {r['agreement']:.4f}")
    elif "agreement_on_training_inputs" in r:
        click.echo(f"  agreement with the teacher on the training inputs: {r['agreement_on_training_inputs']:.4f}")


# Which source each distill option applies to (an option given for another source is refused, never ignored).
DISTILL_OPTION_MODES = {
    "epochs": {"transfer", "data"}, "alpha": {"transfer", "data"},
    "force": {"data"},
    "iterations": {"method"}, "options": {"method"}, "gaussian_mix": {"method"},
    "sidecar": {"method"}, "save_transfer": {"method"},
}


def _refuse_options_of_other_modes(ctx: click.Context, mode: str) -> None:
    """Exit 2 naming every option the user typed that does not apply to ``mode`` (click tells typed from default)."""
    flag = {"transfer": "--transfer", "data": "--data", "method": "--method"}
    typed = {name for name in ctx.params
             if ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)}
    spelled = {p.name: next((o for o in p.opts if o.startswith("--")), p.opts[0]) for p in ctx.command.params}
    wrong = sorted(n for n in typed if n in DISTILL_OPTION_MODES and mode not in DISTILL_OPTION_MODES[n])
    reasons = [f"{spelled[n]} goes with {' or '.join(sorted(flag[m] for m in DISTILL_OPTION_MODES[n]))}" for n in wrong]
    if "resize" in typed and mode != "data" and "eval_spec" not in typed:
        wrong.append("resize")
        reasons.append("--resize goes with --data or --eval")
    if wrong:
        raise UsageError(f"{', '.join(spelled[n] for n in wrong)}: not used with {flag[mode]} ({'; '.join(reasons)}); "
                         "drop them")


def _options(pairs: tuple[str, ...]) -> dict[str, float]:
    out = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        try:
            if not sep or not key:
                raise ValueError
            out[key.strip()] = float(value)
        except ValueError:
            raise UsageError(f"--set {p!r}: expected KEY=VALUE with a number") from None
    return out


@click.command(cls=Command)
@click.option("--data", "data_spec", default="fashion", show_default=True,
              help="fashion: the release shipped in the package (a LeNet-5 trained on Fashion-MNIST, its sidecar and "
                   "2,000 held-out test images), consumer side only, fixed rows at equal budgets. Or data to run the "
                   "whole pipeline on (train, export, reconstruct, distill): " + DATA_HELP)
@click.option("--resize", type=int, help="Pad/resize images to N x N (whole-pipeline demos).")
@click.option("-o", "--output", default="runs/demo", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the transfer sets and demo.json (and the teacher and its release when trained here).")
@click.option("--teacher", help="Teacher architecture (whole-pipeline demos; default: hinton-small on digits, "
              "hinton1200 on MNIST).")
@click.option("--student", help="Student architecture (default: lenet5-half for fashion, hinton-tiny on digits, "
              "hinton800 on MNIST).")
@click.option("--samples", type=click.IntRange(min=1), help="Transfer-set size per objective (whole-pipeline demos).")
@click.option("--steps", type=click.IntRange(min=0), help="Reconstruction steps per batch (whole-pipeline demos).")
@click.option("--teacher-epochs", type=click.IntRange(min=1), help="Teacher training epochs (whole-pipeline demos; "
              "default: 40 on digits, 10 on MNIST).")
@click.option("--student-epochs", type=click.IntRange(min=1), help="Epochs of every student, over its transfer set "
              "or the real data (whole-pipeline demos; default: 30 on digits, 10 on MNIST).")
@click.option("--objectives", help="Comma-separated objectives to compare (whole-pipeline demos; noise always runs).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds every transfer set and every student "
              "(and the teacher, when trained here).")
@click.option("--json", "as_json", is_flag=True, help="Print the table's rows as JSON (progress goes to stderr).")
@DEVICE
@QUIET
def demo(data_spec, resize, output, teacher, student, samples, steps, teacher_epochs, student_epochs, objectives, seed,
         as_json, device, quiet):
    """Show what the sidecar buys: students trained with and without it, at equal budgets (under 3 min on 2 cores).

    The default runs the consumer's side on the release shipped in the package; --data runs the
    whole pipeline, from training a teacher, on other data.

    \b
    Examples:
      dfkd-meta demo
      dfkd-meta demo --data digits --json
      dfkd-meta demo --data mnist:DATA/mnist --objectives spectral_all_layers,zskd
    """
    from dfkd_meta.config import settings
    from dfkd_meta.demo import DemoConfig, run_demo

    if data_spec == "fashion":
        given = [flag for flag, value in (("--resize", resize), ("--teacher", teacher), ("--samples", samples),
                                          ("--steps", steps), ("--teacher-epochs", teacher_epochs),
                                          ("--student-epochs", student_epochs), ("--objectives", objectives))
                 if value is not None]
        if given:
            raise UsageError(f"{', '.join(given)}: the fashion demo's teacher is shipped and its rows are fixed at "
                             "equal budgets; drop them, or pass --data (digits, mnist:DIR, ...) to run the whole "
                             "pipeline with your settings")
    cfg = DemoConfig.for_data(data_spec, resize=resize, teacher=teacher, student=student, samples=samples, steps=steps,
                              teacher_epochs=teacher_epochs, student_epochs=student_epochs, seed=seed, device=device,
                              objectives=tuple(o.strip() for o in objectives.split(",")) if objectives else None)
    result = run_demo(cfg, output, progress=not quiet, log=lambda line: click.echo(line, err=as_json))
    if as_json:
        click.echo(json.dumps({"config": settings(cfg), "rows": result.rows, "verdict": result.verdict(),
                               "folder": str(output)}, indent=2, default=str))
        return
    click.echo("")
    click.echo(result.table())
    verdict = result.verdict()
    if verdict:
        click.echo(f"\n{verdict}")
    click.echo(f"\nfiles in {output}/ (transfer sets, demo.json with each row's settings and command)")
