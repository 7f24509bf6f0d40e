"""dfkd-meta command line. Thin: each command parses options, calls one library function, prints."""
from __future__ import annotations

import json
import sys

import click

from dfkd_meta import __version__
from dfkd_meta.config import DistillConfig, ExportConfig, Priors, ReconstructConfig, TrainConfig
from dfkd_meta.convention import CHOICES_HELP as CONVENTION_CHOICES
from dfkd_meta.errors import DfkdError, UsageError


class RegistryChoice(click.Choice):
    """A choice among a registry's names, loaded on first use (registries import torch; --help and other
    commands should not), with each name's one-line description in --help."""

    def __init__(self, load):
        self._load = load
        self._registry = None
        super().__init__([])

    @property
    def registry(self) -> dict:
        if self._registry is None:
            self._registry = self._load()
        return self._registry

    @property
    def choices(self):
        return sorted(self.registry)

    @choices.setter
    def choices(self, value):  # click's __init__ assigns it
        pass

    def describe(self) -> str:
        return "; ".join(f"{name}: {_first_line(self.registry[name])}" for name in self.choices)


def _first_line(obj) -> str:
    doc = (obj.__doc__ or "").strip().splitlines()
    return doc[0].rstrip(".") if doc else ""


class RegistryOption(click.Option):
    """An option over a ``RegistryChoice`` whose help lists every choice with its description."""

    def get_help_record(self, ctx):
        record = super().get_help_record(ctx)
        if record is None or not isinstance(self.type, RegistryChoice):
            return record
        return record[0], f"{record[1]} One of: {self.type.describe()}."


def _objectives():
    from dfkd_meta.reconstruct.objectives import OBJECTIVES

    return OBJECTIVES


def _losses():
    from dfkd_meta.distill.losses import LOSSES

    return LOSSES


def _fail(exc: DfkdError, names: dict[str, str] | None = None) -> None:
    click.echo(f"error: {exc.render(names)}", err=True)
    sys.exit(exc.exit_code)


class _Command(click.Command):
    """A command whose library errors name its flags: ``{param}`` placeholders become ``--param``.

    Options map by their destination name; ``flag_aliases`` maps library parameter names that
    differ from it (``{"name": "--student"}``).
    """

    def __init__(self, *args, flag_aliases: dict[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.flag_aliases = flag_aliases or {}

    def flag_names(self) -> dict[str, str]:
        names = {p.name: max(p.opts, key=len) for p in self.params if isinstance(p, click.Option) and p.name}
        names.update({p.name: p.name.upper() for p in self.params if isinstance(p, click.Argument) and p.name})
        return {**names, **self.flag_aliases}

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except DfkdError as exc:
            _fail(exc, self.flag_names())


class _Group(click.Group):
    """Turns user errors into one line on stderr and an exit code, never a traceback."""

    command_class = _Command

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except DfkdError as exc:
            _fail(exc)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dfkd-meta")
def main() -> None:
    """Data-free knowledge distillation from model-release metadata."""


DATA_HELP = ("digits (bundled 8x8 digits), mnist:DIR (MNIST-layout IDX folder) or npz:FILE (x images or feature "
             "vectors, y labels).")
CONVENTION_HELP = CONVENTION_CHOICES
DEVICE = click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
QUIET = click.option("--quiet", "-q", is_flag=True, help="No progress bars.")


@main.command()
@click.argument("path", type=click.Path())
@click.option("--model", type=click.Path(dir_okay=False), help="The ONNX file the sidecar must be bound to "
              "(default for a release folder: the model beside the sidecar).")
@click.option("--data", help="Also re-check the release against labelled data: the teacher's accuracy fed by the "
                             "recorded input domain, and the logits' statistics against a fresh pass. " + DATA_HELP)
@click.option("--resize", type=int, help="Pad/resize --data images to N x N, as for the export.")
@click.option("--limit", type=click.IntRange(min=1), help="Re-check on the first N examples only.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--timeout", type=click.FloatRange(min=1), default=300.0, show_default=True,
              help="Seconds before a file that hangs libhdf5 is reported as DM103.")
def validate(path: str, model: str | None, data: str | None, resize: int | None, limit: int | None, as_json: bool,
             timeout: float) -> None:
    """Check a sidecar (or a release folder) against the format spec, and its binding to the model.

    PATH is a .dfkd.h5 sidecar, or a release folder holding one sidecar and its model.
    Exit status: 0 valid, 1 invalid, 2 not run (usage error, missing or unreadable path).

    \b
    Examples:
      dfkd-meta validate release/teacher.dfkd.h5 --model release/teacher.onnx
      dfkd-meta validate release/ --data mnist:DATA/mnist --json
    """
    from dfkd_meta.sidecar.release import locate_release
    from dfkd_meta.sidecar.validator import validate as run

    sidecar, model = locate_release(path, model)
    report = run(sidecar, model, timeout=timeout)
    numbers = None
    if data is not None and report.valid:
        if model is None:
            raise UsageError("{data} re-checks the teacher: pass {model} too (or a release folder)")
        from dfkd_meta.data import load_data
        from dfkd_meta.sidecar import read_sidecar
        from dfkd_meta.stats.recheck import recheck_release

        findings, numbers = recheck_release(read_sidecar(sidecar, model), str(model), load_data(data, resize),
                                            limit=limit)
        report.findings += findings
        report.sort()
    if as_json:
        click.echo(json.dumps({**report.to_dict(), **({"recheck": numbers} if numbers else {})}, indent=2))
    else:
        for f in report.findings:
            click.echo(f.format())
            if f.severity != "info" and f.fix:
                click.echo(f"        fix: {f.fix}")
        if numbers:
            click.echo(f"re-check on {data} ({numbers['split']}, {numbers['samples']} examples): teacher accuracy "
                       f"{numbers['accuracy']:.4f} (threshold {numbers['min_accuracy']:.2f}), mean confidence "
                       f"{numbers['mean_confidence']:.3f}"
                       + (f", logits means within {numbers['logits_max_mean_difference_in_stds']:.3f} recorded stds"
                          if "logits_max_mean_difference_in_stds" in numbers else ""))
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
        click.echo(f"  {'*' if r['default'] else ' '} {r['name']:<{width}}  {r['op']:<18} {dims(r['shape']):<14} "
                   f"{r['kind']}")


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


@main.command(flag_aliases={"name": "--model"})
@click.option("--model", "name", required=True, help="hinton1200, hinton800, hinton-small, hinton-tiny, lenet5, "
              "lenet5-half, bn-cnn, or module:factory (imports and runs that module's code).")
@click.option("--data", default="digits", show_default=True, help=DATA_HELP)
@click.option("--resize", type=int, help="Pad/resize images to N x N (LeNet uses 32).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to write the ONNX teacher.")
@click.option("--input-norm", default=TrainConfig.input_norm, show_default=True,
              help="How the teacher's inputs are normalised, recorded in its ONNX metadata: " + CONVENTION_HELP)
@click.option("--epochs", type=click.IntRange(min=1), default=TrainConfig.epochs, show_default=True,
              help="Passes over the train split.")
@click.option("--batch-size", type=click.IntRange(min=1), default=TrainConfig.batch_size, show_default=True,
              help="Examples per step.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=TrainConfig.lr, show_default=True,
              help="Adam learning rate (cosine schedule).")
@click.option("--seed", type=int, default=TrainConfig.seed, show_default=True, help="Seeds initialisation and shuffling.")
@click.option("--exporter", type=click.Choice(["legacy", "dynamo"]), default="legacy", show_default=True,
              help="torch's TorchScript-based (legacy) or torch.export-based (dynamo) ONNX exporter.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@DEVICE
@QUIET
def train(name, data, resize, output, input_norm, epochs, batch_size, lr, seed, exporter, as_json, device, quiet):
    """Train a reference teacher on labelled data and write it as ONNX.

    \b
    Example:
      dfkd-meta train --model lenet5 --data mnist:DATA/mnist --resize 32 -o teacher.onnx
    """
    from dfkd_meta.data import load_data
    from dfkd_meta.models import build_model, hidden_dropout_keep_probs
    from dfkd_meta.onnx.torch_export import export_onnx
    from dfkd_meta.train import train_teacher

    source = load_data(data, resize)
    model = build_model(name, source.input_shape, source.num_classes)
    cfg = TrainConfig(input_norm=input_norm, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    result = train_teacher(model, source, cfg, device=device, progress=not quiet,
                           log=None if quiet or as_json else (lambda line: click.echo(line)))
    path = export_onnx(result.model, source.input_shape, output, exporter=exporter, convention=result.convention,
                       dropout_keep=hidden_dropout_keep_probs(result.model))
    summary = {"model": str(path), "architecture": name, "data": data, "test_accuracy": result.test_accuracy,
               "input_convention": result.convention.describe(),
               "train_seconds": round(result.seconds, 2), "history": result.history}
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        acc = f"{result.test_accuracy:.4f}" if result.test_accuracy is not None else "n/a (no test split)"
        click.echo(f"wrote {path} ({name}, test accuracy {acc}, {result.seconds:.1f} s); input convention "
                   f"{result.convention.describe()}")


@main.command()
@click.option("--model", required=True, type=click.Path(dir_okay=False), help="The trained ONNX teacher.")
@click.option("--data", default="digits", show_default=True, help="The labelled data the statistics are taken from: "
              + DATA_HELP)
@click.option("--resize", type=int, help="Pad/resize images to N x N, as for training.")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Release folder to write.")
@click.option("--input-norm", help="How the teacher expects its inputs: " + CONVENTION_HELP + ". Default: what the "
              "teacher's ONNX metadata records (dfkd-meta train writes it), else raw values.")
@click.option("--value-range", help="LO,HI: the raw value range of valid inputs (default: the convention's, else [0, 1] "
              "for images in [0, 1], else the data's observed min and max).")
@click.option("--min-accuracy", type=click.FloatRange(0, 1), help="Refuse when the teacher is right on fewer of the "
              "examples (default: halfway between chance and 1, at least 0.5).")
@click.option("--force", is_flag=True, help="Export even when the teacher fails the accuracy check (recorded).")
@click.option("--layers", help="Comma-separated tensor names (default: hidden pre-activations and the logits).")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=ExportConfig.temperature,
              show_default=True, help="Logits are recorded divided by it.")
@click.option("--cov-rank", type=click.IntRange(min=0), default=ExportConfig.cov_rank, show_default=True,
              help="Per-class low-rank covariance factors of this rank (0: none); reconstruct --init first-layer "
                   "needs them on the first layer (32 is a good start).")
@click.option("--spectral-k", type=click.IntRange(min=0), default=None,
              help="Eigenvectors per spectral block (default 64 for all layers, 32 per pair; 0: no spectral stats).")
@click.option("--split", type=click.Choice(["train", "test"]), default=ExportConfig.split, show_default=True,
              help="The split the statistics are taken from.")
@click.option("--limit", type=click.IntRange(min=1), help="Use only the first N examples.")
@click.option("--batch-size", type=click.IntRange(min=1), default=ExportConfig.batch_size, show_default=True,
              help="Examples per ONNX Runtime call.")
@click.option("--name", help="Release file stem (default: the model's).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary (sizes, time, samples/s).")
@QUIET
def export(model, data, resize, output, input_norm, value_range, min_accuracy, force, layers, temperature, cov_rank,
           spectral_k, split, limit, batch_size, name, as_json, quiet):
    """Write a release folder: the ONNX teacher and its statistics sidecar.

    The teacher is fed its own input convention and must be right on most of the examples it is
    described on; a wrong convention is refused instead of silently recorded.

    \b
    Examples:
      dfkd-meta export --model teacher.onnx --data npz:train.npz -o release/
      dfkd-meta export --model resnet.onnx --data npz:images.npz --input-norm imagenet -o release/
    """
    from dfkd_meta.data import load_data
    from dfkd_meta.fileio import require_file
    from dfkd_meta.stats.export import export_release

    require_file(model, "model")
    source = load_data(data, resize)
    cfg = ExportConfig(layers=[x.strip() for x in layers.split(",") if x.strip()] if layers else None,
                       temperature=temperature, cov_rank=cov_rank, spectral_k=spectral_k, split=split,
                       batch_size=batch_size, limit=limit, input_norm=input_norm,
                       value_range=_pair(value_range, "value_range"), min_accuracy=min_accuracy, force=force)
    result = export_release(model, source, output, cfg, name=name, progress=not quiet)
    s = result.summary
    if as_json:
        click.echo(json.dumps(s, indent=2))
        return
    t, conv = s["teacher_check"], s["input_convention"]
    click.echo(f"wrote {s['model']} and {s['sidecar']} ({s['sidecar_bytes'] / 1e6:.2f} MB)")
    click.echo(f"  input convention {conv['description']}, raw range {conv['value_range']}")
    click.echo(f"  teacher on the {t['samples']} {t['split']} examples: accuracy {t['accuracy']:.4f} "
               f"(threshold {t['min_accuracy']:.2f}), mean confidence {t['mean_confidence']:.3f}"
               + (" -- BELOW THE THRESHOLD, exported with --force" if t["forced"] else ""))
    click.echo(f"  {s['samples']} examples, {s['classes']} classes, {len(s['layers'])} layers "
               f"({', '.join(x['key'] for x in s['layers'])}), {len(s['spectral_blocks'])} spectral blocks")
    click.echo(f"  {s['seconds']:.1f} s ({s['samples_per_second']:.0f} examples/s in the statistics pass)")
    if s["cov_skipped_layers"]:
        click.echo(f"  note: no covariance for layers too large for the covariance sketch: {s['cov_skipped_layers']}")


def _pair(text: str | None, param: str) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"{{{param}}} {text!r}: expected LO,HI (two numbers)") from None
    return lo, hi


@main.command(flag_aliases={"feature": "--feature-weight"})
@click.option("--model", required=True, type=click.Path(dir_okay=False), help="The ONNX teacher.")
@click.option("--sidecar", required=True, type=click.Path(dir_okay=False), help="Its .dfkd.h5 statistics sidecar.")
@click.option("--objective", cls=RegistryOption, type=RegistryChoice(_objectives),
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
@click.option("--init", "init", type=click.Choice(["uniform", "first-layer"]), default=ReconstructConfig.init,
              show_default=True,
              help="Starting inputs: uniform over the input domain, or a per-class Gaussian whose image under the "
                   "first stored layer (affine in the input) has its recorded mean and covariance factors; export "
                   "with --cov-rank for the covariance.")
@click.option("--store", type=click.Choice(["model", "raw"]), default=ReconstructConfig.store, show_default=True,
              help="Store inputs as the model takes them (normalised) or as raw values; the file says which.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its .partial file.")
@click.option("--preview", type=click.Path(dir_okay=False), help="Write a PNG grid of samples per class (images).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@DEVICE
@QUIET
def reconstruct(model, sidecar, objective, samples, output, steps, batch_size, lr, seed, tv, l2, jitter, flip,
                feature, feature_layers, init, store, resume, preview, as_json, device, quiet):
    """Reconstruct a transfer set from a teacher and its sidecar (no data needed).

    \b
    Example:
      dfkd-meta reconstruct --model release/teacher.onnx --sidecar release/teacher.dfkd.h5 \\
          --objective spectral_all_layers --samples 10000 -o transfer.h5 --preview samples.png
    """
    from dfkd_meta.fileio import require_file
    from dfkd_meta.reconstruct.synthesize import reconstruct as run

    require_file(model, "model")
    require_file(sidecar, "sidecar")
    cfg = ReconstructConfig(objective=objective, samples=samples, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                            priors=Priors(tv=tv, l2=l2, jitter=jitter, flip=flip, feature=feature,
                                          feature_layers=feature_layers), init=init, store=store)
    result = run(model, sidecar, output, cfg, device=device, resume=resume, progress=not quiet, preview=preview)
    s = result.summary
    if as_json:
        click.echo(json.dumps(s, indent=2))
        return
    click.echo(f"wrote {s['transfer']}: {s['samples']} samples ({objective}), teacher agrees with the target class "
               f"on {s['teacher_agreement']:.1%}, mean final loss {s['mean_loss']:.4g}, {s['seconds']:.1f} s"
               + (f" (resumed after {s['resumed_batches']} batches)" if s["resumed_batches"] else ""))


@main.command(flag_aliases={"name": "--student", "source": "--transfer/--data"})
@click.option("--teacher", required=True, type=click.Path(dir_okay=False), help="The ONNX teacher.")
@click.option("--transfer", type=click.Path(dir_okay=False), help="A transfer set from `dfkd-meta reconstruct`.")
@click.option("--data", help="Distill on real data instead (vanilla KD baseline): " + DATA_HELP)
@click.option("--resize", type=int, help="Pad/resize --data/--eval images to N x N.")
@click.option("--input-norm", help="How the teacher expects real --data/--eval inputs: " + CONVENTION_HELP +
              ". Default: what the transfer set records, else the teacher's ONNX metadata, else raw values.")
@click.option("--student", required=True, help="A reference model name (hinton800, lenet5-half, ...) or "
              "module:factory (imports and runs that module's code).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="student.onnx to write (+ .json report).")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True),
              help=f"Default: the transfer set's (else {ExportConfig.temperature:g}).")
@click.option("--loss", cls=RegistryOption, type=RegistryChoice(_losses), default=DistillConfig.loss, show_default=True,
              help="The distillation loss.")
@click.option("--alpha", type=click.FloatRange(0, 1), default=DistillConfig.alpha, show_default=True,
              help="Weight of cross-entropy on the teacher's argmax labels (the loss gets 1 - alpha).")
@click.option("--epochs", type=click.IntRange(min=1), default=DistillConfig.epochs, show_default=True,
              help="Passes over the inputs.")
@click.option("--batch-size", type=click.IntRange(min=1), default=DistillConfig.batch_size, show_default=True,
              help="Examples per step.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=DistillConfig.lr, show_default=True,
              help="Adam learning rate (cosine schedule).")
@click.option("--seed", type=int, default=DistillConfig.seed, show_default=True,
              help="Seeds initialisation and shuffling.")
@click.option("--eval", "eval_spec", help="Labelled data to report accuracies on: " + DATA_HELP)
@click.option("--force", is_flag=True, help="With --data: go ahead even when the teacher fails the accuracy check.")
@click.option("--resume", is_flag=True, help="Continue from the per-epoch checkpoint <output>.ckpt.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report.")
@DEVICE
@QUIET
def distill(teacher, transfer, data, resize, input_norm, student, output, temperature, loss, alpha, epochs, batch_size,
            lr, seed, eval_spec, force, resume, as_json, device, quiet):
    """Train a student on a transfer set (or real data) against the teacher's softened outputs.

    \b
    Example:
      dfkd-meta distill --teacher release/teacher.onnx --transfer transfer.h5 --student lenet5-half \\
          -o student.onnx --eval mnist:DATA/mnist --resize 32
    """
    from dfkd_meta.data import load_data
    from dfkd_meta.distill import distill as run
    from dfkd_meta.distill import load_transfer_for, write_student
    from dfkd_meta.fileio import require_file
    from dfkd_meta.models import build_model

    require_file(teacher, "teacher")
    if (transfer is None) == (data is None):
        raise UsageError("pass exactly one of --transfer FILE (data-free) or --data SPEC (KD with real data)")
    source = load_transfer_for(teacher, require_file(transfer, "transfer set")) if transfer else load_data(data, resize)
    input_shape = tuple(source.x.shape[1:]) if transfer else source.input_shape
    num_classes = source.teacher_logits.shape[1] if transfer else source.num_classes
    model = build_model(student, input_shape, num_classes)
    cfg = DistillConfig(temperature=temperature, loss=loss, alpha=alpha, epochs=epochs, batch_size=batch_size, lr=lr,
                        seed=seed, force=force)
    result = run(teacher, model, source, cfg, input_norm=input_norm, device=device, checkpoint=output + ".ckpt",
                 resume=resume, eval_data=load_data(eval_spec, resize) if eval_spec else None, progress=not quiet)
    path = write_student(result.student, input_shape, output, {**result.report, "student": student},
                         convention=result.convention, image_shape=result.image_shape)
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
