"""dfkd-meta command line. Thin: each command parses options, calls one library function, prints."""
from __future__ import annotations

import json
import sys

import click

from dfkd_meta import __version__
from dfkd_meta.errors import DfkdError


class _Group(click.Group):
    """Turns user errors into one line on stderr and an exit code, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except DfkdError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dfkd-meta")
def main() -> None:
    """Data-free knowledge distillation from model-release metadata."""


@main.command()
@click.argument("sidecar", type=click.Path(dir_okay=False))
@click.option("--model", type=click.Path(dir_okay=False), help="The ONNX file the sidecar must be bound to.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--timeout", type=click.FloatRange(min=1), default=300.0, show_default=True,
              help="Seconds before a file that hangs libhdf5 is reported as DM103.")
def validate(sidecar: str, model: str | None, as_json: bool, timeout: float) -> None:
    """Check SIDECAR against the format spec (and, with --model, its binding to the model).

    Exit status: 0 valid, 1 invalid, 2 not run (usage error, missing or unreadable path).
    """
    from dfkd_meta.sidecar.validator import validate as run

    report = run(sidecar, model, timeout=timeout)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        for f in report.findings:
            click.echo(f.format())
            if f.severity != "info" and f.fix:
                click.echo(f"        fix: {f.fix}")
        click.echo(report.summary())
    sys.exit(0 if report.valid else 1)


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def inspect(model: str, as_json: bool) -> None:
    """Show MODEL's inputs, outputs, ops (supported or not) and candidate statistics layers."""
    from dfkd_meta.fileio import require_file
    from dfkd_meta.onnx.inspect import inspect_model

    info = inspect_model(require_file(model, "model"))
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    dims = lambda s: "[" + ", ".join(str(d) for d in s) + "]" if s is not None else "[?]"  # noqa: E731
    click.echo(f"{info['model']}: ir_version {info['ir_version']}, opsets {info['opset_imports']}, "
               f"{info['nodes']} nodes" + (f", external data {info['external_data']}" if info["external_data"] else ""))
    for role in ("inputs", "outputs"):
        for t in info[role]:
            click.echo(f"{role[:-1]:7} {t['name']}  {t['dtype']} {dims(t['shape'])}")
    bad = [o["op"] for o in info["ops"] if not o["supported"]]
    click.echo("ops     " + ", ".join(f"{o['op']}x{o['count']}" + ("" if o["supported"] else " (UNSUPPORTED)")
                                      for o in info["ops"]))
    if bad:
        click.echo(f"warning: {len(bad)} unsupported ops: {', '.join(bad)}; reconstruction needs every op supported")
    rows = info["candidate_layers"]
    click.echo(f"candidate layers ({sum(r['default'] for r in rows)} chosen by default, marked *):")
    width = max([len(r["name"]) for r in rows] + [6])
    for r in rows:
        click.echo(f"  {'*' if r['default'] else ' '} {r['name']:<{width}}  {r['op']:<18} {dims(r['shape']):<14} {r['kind']}")


DATA_HELP = "digits (bundled 8x8 digits), mnist:DIR (MNIST-layout IDX folder) or npz:FILE."
DEVICE = click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
QUIET = click.option("--quiet", "-q", is_flag=True, help="No progress bars.")


@main.command()
@click.argument("sidecar", type=click.Path(dir_okay=False))
@click.option("--model", type=click.Path(dir_okay=False), help="Also check the binding to this ONNX file.")
@click.option("--plot", type=click.Path(dir_okay=False), help="Write per-class top-layer means +- std as a PNG.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def show(sidecar: str, model: str | None, plot: str | None, as_json: bool) -> None:
    """Summarise SIDECAR (validated first): model, data, layers, spectral blocks, privacy, sizes."""
    from dfkd_meta.sidecar import read_sidecar
    from dfkd_meta.sidecar.summary import describe, format_summary, plot_top_layer

    sc = read_sidecar(sidecar, model)
    info = describe(sc, sidecar)
    click.echo(json.dumps(info, indent=2) if as_json else format_summary(info))
    if plot:
        plot_top_layer(sc, plot)
        if not as_json:
            click.echo(f"wrote {plot}")


@main.command()
@click.option("--model", "arch", required=True, help="hinton1200, hinton800, lenet5, lenet5-half, bn-cnn, ... or module:factory.")
@click.option("--data", "data_spec", default="digits", show_default=True, help=DATA_HELP)
@click.option("--resize", type=int, help="Pad/resize images to N x N (LeNet uses 32).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to write the ONNX teacher.")
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--exporter", type=click.Choice(["legacy", "dynamo"]), default="legacy", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@DEVICE
@QUIET
def train(arch, data_spec, resize, output, epochs, batch_size, lr, seed, exporter, as_json, device, quiet):
    """Train a reference teacher on labelled data and write it as ONNX."""
    from dfkd_meta.data import load_data
    from dfkd_meta.models import build_model, hidden_dropout_keep_probs
    from dfkd_meta.train import export_onnx, train_teacher

    data = load_data(data_spec, resize)
    model = build_model(arch, data.input_shape, data.num_classes)
    result = train_teacher(model, data, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device,
                           progress=not quiet)
    path = export_onnx(result.model, data.input_shape, output, exporter=exporter,
                       dropout_keep=hidden_dropout_keep_probs(result.model))
    summary = {"model": str(path), "architecture": arch, "data": data_spec, "test_accuracy": result.test_accuracy,
               "train_seconds": round(result.seconds, 2), "history": result.history}
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        acc = f"{result.test_accuracy:.4f}" if result.test_accuracy is not None else "n/a (no test split)"
        click.echo(f"wrote {path} ({arch}, test accuracy {acc}, {result.seconds:.1f} s)")


@main.command()
@click.option("--model", required=True, type=click.Path(dir_okay=False), help="The trained ONNX teacher.")
@click.option("--data", "data_spec", default="digits", show_default=True, help=DATA_HELP)
@click.option("--resize", type=int, help="Pad/resize images to N x N, as for training.")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Release folder to write.")
@click.option("--layers", help="Comma-separated tensor names (default: hidden pre-activations and the logits).")
@click.option("--temperature", type=float, default=8.0, show_default=True, help="Logits are recorded divided by it.")
@click.option("--cov-rank", type=click.IntRange(min=0), default=0, show_default=True,
              help="Per-class low-rank covariance factors of this rank (0: none); reconstruct --init first-layer "
                   "needs them on the first layer (32 is a good start).")
@click.option("--spectral-k", type=click.IntRange(min=0), default=None,
              help="Eigenvectors per spectral block (default 64 for all layers, 32 per pair; 0: no spectral stats).")
@click.option("--split", type=click.Choice(["train", "test"]), default="train", show_default=True)
@click.option("--limit", type=click.IntRange(min=1), help="Use only the first N examples.")
@click.option("--batch-size", type=click.IntRange(min=1), default=512, show_default=True)
@click.option("--name", help="Release file stem (default: the model's).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary (sizes, time, samples/s).")
@QUIET
def export(model, data_spec, resize, output, layers, temperature, cov_rank, spectral_k, split, limit, batch_size,
           name, as_json, quiet):
    """Write a release folder: the ONNX teacher and its statistics sidecar."""
    from dfkd_meta.data import load_data
    from dfkd_meta.fileio import require_file
    from dfkd_meta.stats.export import export_release

    require_file(model, "model")
    data = load_data(data_spec, resize)
    result = export_release(model, data, output, layers=[x.strip() for x in layers.split(",") if x.strip()]
                            if layers else None, temperature=temperature, cov_rank=cov_rank,
                            spectral_k=spectral_k, split=split, batch_size=batch_size,
                            limit=limit, name=name, progress=not quiet)
    s = result.summary
    if as_json:
        click.echo(json.dumps(s, indent=2))
        return
    click.echo(f"wrote {s['model']} and {s['sidecar']} ({s['sidecar_bytes'] / 1e6:.2f} MB)")
    click.echo(f"  {s['samples']} examples, {s['classes']} classes, {len(s['layers'])} layers "
               f"({', '.join(x['key'] for x in s['layers'])}), {len(s['spectral_blocks'])} spectral blocks")
    click.echo(f"  {s['seconds']:.1f} s ({s['samples_per_second']:.0f} examples/s in the statistics pass)")
    if s["cov_skipped_layers"]:
        click.echo(f"  note: no covariance for layers too large for the covariance sketch: {s['cov_skipped_layers']}")


@main.command()
@click.option("--model", required=True, type=click.Path(dir_okay=False), help="The ONNX teacher.")
@click.option("--sidecar", required=True, type=click.Path(dir_okay=False), help="Its .dfkd.h5 statistics sidecar.")
@click.option("--objective", default="all_layers", show_default=True,
              help="top_layer, all_layers, all_layers_dropout, spectral_all_layers, spectral_layer_pairs, noise or zskd.")
@click.option("--samples", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The transfer-set file to write.")
@click.option("--steps", type=click.IntRange(min=0), default=200, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=0.05, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--tv", type=click.FloatRange(min=0), default=0.0, help="Total-variation prior weight.")
@click.option("--l2", type=click.FloatRange(min=0), default=0.0, help="L2 prior weight.")
@click.option("--jitter", type=click.IntRange(min=0), default=0, help="Random shifts of up to N pixels.")
@click.option("--flip", is_flag=True, help="Random horizontal flips (flip-symmetric classes only).")
@click.option("--feature-weight", type=click.FloatRange(min=0), default=0.0,
              help="Batch moment matching: each class's examples spread like the recorded class on every hidden "
                   "layer (per channel where the sidecar has channel statistics, else per unit).")
@click.option("--feature-layers", type=click.Choice(["all", "channels"]), default="all", show_default=True,
              help="Layers the moment matching covers: every hidden layer, or only those with channel statistics.")
@click.option("--init", "init", type=click.Choice(["uniform", "first-layer"]), default="uniform", show_default=True,
              help="Starting inputs: uniform over the input domain, or a per-class Gaussian whose image under the "
                   "first stored layer (affine in the input) has its recorded mean and covariance factors; export "
                   "with --cov-rank for the covariance.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its .partial file.")
@click.option("--preview", type=click.Path(dir_okay=False), help="Write a PNG grid of samples per class.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@DEVICE
@QUIET
def reconstruct(model, sidecar, objective, samples, output, steps, batch_size, lr, seed, tv, l2, jitter, flip,
                feature_weight, feature_layers, init, resume, preview, as_json, device, quiet):
    """Reconstruct a transfer set from a teacher and its sidecar (no data needed)."""
    from dfkd_meta.fileio import require_file
    from dfkd_meta.reconstruct.priors import Priors
    from dfkd_meta.reconstruct.synthesize import ReconstructConfig
    from dfkd_meta.reconstruct.synthesize import reconstruct as run

    require_file(model, "model")
    require_file(sidecar, "sidecar")
    cfg = ReconstructConfig(objective=objective, samples=samples, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                            priors=Priors(tv=tv, l2=l2, jitter=jitter, flip=flip, feature=feature_weight,
                                          feature_layers=feature_layers), init=init)
    result = run(model, sidecar, output, cfg, device=device, resume=resume, progress=not quiet, preview=preview)
    s = result.summary
    if as_json:
        click.echo(json.dumps(s, indent=2))
        return
    click.echo(f"wrote {s['transfer']}: {s['samples']} samples ({objective}), teacher agrees with the target class "
               f"on {s['teacher_agreement']:.1%}, mean final loss {s['mean_loss']:.4g}, {s['seconds']:.1f} s"
               + (f" (resumed after {s['resumed_batches']} batches)" if s["resumed_batches"] else ""))


@main.command()
@click.option("--teacher", required=True, type=click.Path(dir_okay=False), help="The ONNX teacher.")
@click.option("--transfer", type=click.Path(dir_okay=False), help="A transfer set from `dfkd-meta reconstruct`.")
@click.option("--data", "data_spec", help="Distill on real data instead (vanilla KD baseline): " + DATA_HELP)
@click.option("--resize", type=int, help="Pad/resize --data/--eval images to N x N.")
@click.option("--student", required=True, help="A reference model name (hinton800, lenet5-half, ...) or module:factory.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="student.onnx to write (+ .json report).")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), help="Default: the transfer set's (else 8).")
@click.option("--alpha", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Weight of cross-entropy on the teacher's argmax labels.")
@click.option("--epochs", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--eval", "eval_spec", help="Labelled data to report accuracies on: " + DATA_HELP)
@click.option("--resume", is_flag=True, help="Continue from the per-epoch checkpoint <output>.ckpt.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report.")
@DEVICE
@QUIET
def distill(teacher, transfer, data_spec, resize, student, output, temperature, alpha, epochs, batch_size, lr, seed,
            eval_spec, resume, as_json, device, quiet):
    """Train a student on a transfer set (or real data) against the teacher's softened outputs."""
    from dfkd_meta.data import load_data
    from dfkd_meta.distill import DistillConfig, load_transfer_for, write_student
    from dfkd_meta.distill import distill as run
    from dfkd_meta.errors import UsageError
    from dfkd_meta.fileio import require_file
    from dfkd_meta.models import build_model

    require_file(teacher, "teacher")
    if (transfer is None) == (data_spec is None):
        raise UsageError("pass exactly one of --transfer FILE (data-free) or --data SPEC (KD with real data)")
    source = load_transfer_for(teacher, require_file(transfer, "transfer set")) if transfer else load_data(data_spec, resize)
    input_shape = tuple(source.x.shape[1:]) if transfer else source.input_shape
    num_classes = source.teacher_logits.shape[1] if transfer else source.num_classes
    model = build_model(student, input_shape, num_classes)
    cfg = DistillConfig(temperature=temperature, alpha=alpha, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    result = run(teacher, model, source, cfg, device=device, checkpoint=output + ".ckpt", resume=resume,
                 eval_data=load_data(eval_spec, resize) if eval_spec else None, progress=not quiet)
    path = write_student(result.student, input_shape, output, {**result.report, "student": student})
    r = result.report
    if as_json:
        click.echo(json.dumps({**r, "student": student, "output": str(path)}, indent=2, default=str))
        return
    click.echo(f"wrote {path} and {path.with_suffix('.json')} ({r['distill_seconds']:.1f} s)")
    if "student_accuracy" in r:
        click.echo(f"  on {r['eval_data']} ({r['eval_split']}): teacher {r['teacher_accuracy']:.4f}, student "
                   f"{r['student_accuracy']:.4f}, agreement {r['agreement']:.4f}")
    else:
        click.echo(f"  agreement with the teacher on the training inputs: {r['agreement_on_training_inputs']:.4f}")


@main.command()
@click.option("--data", "data_spec", default="digits", show_default=True, help=DATA_HELP)
@click.option("--resize", type=int, help="Pad/resize images to N x N.")
@click.option("-o", "--output", default="runs/demo", show_default=True, type=click.Path(file_okay=False))
@click.option("--teacher", help="Teacher architecture (default: hinton-small on digits, hinton1200 on MNIST).")
@click.option("--student", help="Student architecture (default: hinton-tiny on digits, hinton800 on MNIST).")
@click.option("--samples", type=click.IntRange(min=1), help="Transfer-set size per objective.")
@click.option("--steps", type=click.IntRange(min=0), help="Reconstruction steps per batch.")
@click.option("--teacher-epochs", type=click.IntRange(min=1))
@click.option("--student-epochs", type=click.IntRange(min=1))
@click.option("--objectives", help="Comma-separated objectives to compare (noise always runs).")
@click.option("--seed", type=int, default=0, show_default=True)
@DEVICE
@QUIET
def demo(data_spec, resize, output, teacher, student, samples, steps, teacher_epochs, student_epochs, objectives, seed,
         device, quiet):
    """Run the whole pipeline and print a comparison table (a few minutes on 2 CPU cores on digits)."""
    from dfkd_meta.demo import DemoConfig, run_demo

    cfg = DemoConfig.for_data(data_spec, resize=resize, teacher=teacher, student=student, samples=samples, steps=steps,
                              teacher_epochs=teacher_epochs, student_epochs=student_epochs, seed=seed, device=device,
                              objectives=tuple(o.strip() for o in objectives.split(",")) if objectives else None)
    result = run_demo(cfg, output, progress=not quiet, log=click.echo)
    click.echo("")
    click.echo(result.table())
    click.echo(f"\nfiles in {output}/ (release/, transfer sets, demo.json)")


if __name__ == "__main__":
    main()
