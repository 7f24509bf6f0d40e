"""The publisher's commands: train a reference teacher, export a release."""
from __future__ import annotations

import json

import click

from dfkd_meta.config import ExportConfig, TrainConfig
from dfkd_meta.sidecar.types import forced_reason

from .common import CONVENTION_HELP, DATA_HELP, DEVICE, QUIET, Command, pair


@click.command(cls=Command, flag_aliases={"name": "--model"})
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
@click.option("--keep-batchnorm", is_flag=True, help="Keep the BatchNormalization nodes (both exporters fold them "
              "into the convolutions by default); their running statistics are the prior DeepInversion, CMI and "
              "FastDFKD read. Refused for a model without BatchNorm.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@DEVICE
@QUIET
def train(name, data, resize, output, input_norm, epochs, batch_size, lr, seed, exporter, keep_batchnorm, as_json,
          device, quiet):
    """Train a reference teacher on labelled data and write it as ONNX.

    \b
    Examples:
      dfkd-meta train --model lenet5 --data mnist:DATA/mnist --resize 32 -o teacher.onnx
      dfkd-meta train --model hinton-small --data digits --epochs 40 -o teacher.onnx --json
    """
    import torch

    from dfkd_meta.data import load_data
    from dfkd_meta.errors import UsageError
    from dfkd_meta.models import build_model, hidden_dropout_keep_probs
    from dfkd_meta.onnx.torch_export import export_onnx
    from dfkd_meta.train import train_teacher

    source = load_data(data, resize)
    model = build_model(name, source.input_shape, source.num_classes)
    if keep_batchnorm and not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise UsageError(f"--keep-batchnorm: {name} has no BatchNorm layers; drop --keep-batchnorm")
    cfg = TrainConfig(input_norm=input_norm, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    result = train_teacher(model, source, cfg, device=device, progress=not quiet,
                           log=None if quiet or as_json else (lambda line: click.echo(line)))
    path = export_onnx(result.model, source.input_shape, output, exporter=exporter, convention=result.convention,
                       dropout_keep=hidden_dropout_keep_probs(result.model), keep_batchnorm=keep_batchnorm)
    summary = {"model": str(path), "architecture": name, "data": data, "test_accuracy": result.test_accuracy,
               "input_convention": result.convention.describe(),
               "train_seconds": round(result.seconds, 2), "history": result.history}
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        acc = f"{result.test_accuracy:.4f}" if result.test_accuracy is not None else "n/a (no test split)"
        click.echo(f"wrote {path} ({name}, test accuracy {acc}, {result.seconds:.1f} s); input convention "
                   f"{result.convention.describe()}")


@click.command(cls=Command, distributed=True)
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
@click.option("--min-class-count", type=click.IntRange(min=0), default=ExportConfig.min_class_count, show_default=True,
              metavar="K", help="Refuse when a class has fewer than K examples (per-class statistics of a few examples "
                                "describe those individuals); 0 turns the guard off.")
@click.option("--dp-epsilon", type=click.FloatRange(min=0, min_open=True), metavar="EPS",
              help="Release the statistics with differential privacy at this budget (Gaussian noise, Gaussian-DP "
                   "accounting recorded in the sidecar; docs/privacy.md). Default: exact statistics.")
@click.option("--dp-delta", type=click.FloatRange(min=0, max=1, min_open=True, max_open=True), metavar="DELTA",
              help=f"With --dp-epsilon: the budget's delta (default {ExportConfig.dp_delta:g}; keep it well below "
                   "1 / the number of examples).")
@click.option("--dp-clip", type=click.FloatRange(min=0, min_open=True), metavar="C",
              help=f"With --dp-epsilon: each example's values in a layer are scaled down to a root mean square of C "
                   f"per unit at most (default {ExportConfig.dp_clip:g}).")
@click.option("--overwrite", is_flag=True, help="Replace the release already in the output folder (refused "
              "otherwise).")
@click.option("--layers", help="Comma-separated tensor names (default: hidden pre-activations and the logits).")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=ExportConfig.temperature,
              show_default=True, help="Logits are recorded divided by it.")
@click.option("--cov-rank", type=click.IntRange(min=0), default=ExportConfig.cov_rank, show_default=True,
              help="Per-class low-rank covariance factors of this rank (0: none); reconstruct --init first-layer "
                   "needs them on the first layer (32 is a good start).")
@click.option("--spectral-k", type=click.IntRange(min=0), default=None,
              help="Eigenvectors per spectral block (default 64 for all layers, 32 per pair; 0: no spectral stats).")
@click.option("--spectral-max-nodes", type=click.IntRange(min=2), default=ExportConfig.spectral_max_nodes,
              show_default=True, help="Units of one spectral block at most: larger blocks (a ResNet's early maps) are "
                                      "left out and listed, since their graph costs a forward pass per 256 units.")
@click.option("--split", type=click.Choice(["train", "test"]), default=ExportConfig.split, show_default=True,
              help="The split the statistics are taken from.")
@click.option("--limit", type=click.IntRange(min=1), help="Use only the first N examples.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Examples per ONNX Runtime call (default: up to 512, "
              "fewer for wide models, so that a batch's tapped activations stay within 128 MB).")
@click.option("--max-size", type=click.FloatRange(min=0, min_open=True), metavar="MB",
              help="Size budget of the sidecar in MB (default: the larger of twice the model's size and 64 MB). "
                   "Layers that do not fit per unit and class are stored per channel and class, the largest first; "
                   "the choice is printed and recorded in the sidecar.")
@click.option("--name", help="Release file stem (default: the model's).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary (sizes, time, samples/s).")
@QUIET
def export(model, data, resize, output, input_norm, value_range, min_accuracy, force, min_class_count, dp_epsilon,
           dp_delta, dp_clip, overwrite, layers, temperature, cov_rank, spectral_k, spectral_max_nodes, split, limit,
           batch_size, max_size, name, as_json, quiet):
    """Write a release folder: the ONNX teacher and its statistics sidecar.

    The teacher is fed its own input convention and must be right on most of the examples it is
    described on; a wrong convention is refused instead of silently recorded.

    \b
    Examples:
      dfkd-meta export --model teacher.onnx --data npz:train.npz -o release/
      dfkd-meta export --model resnet.onnx --data npz:images.npz --input-norm imagenet -o release/
    """
    from dfkd_meta import dist
    from dfkd_meta.data import load_data
    from dfkd_meta.errors import UsageError
    from dfkd_meta.fileio import require_file
    from dfkd_meta.stats.export import export_release

    require_file(model, "model")
    if dp_epsilon is None and (dp_delta is not None or dp_clip is not None):
        raise UsageError("{dp_delta} and {dp_clip} apply to a private export only: pass {dp_epsilon} too, or "
                         "leave them out")
    private = {k: v for k, v in (("dp_epsilon", dp_epsilon), ("dp_delta", dp_delta), ("dp_clip", dp_clip))
               if v is not None}
    source = load_data(data, resize)
    cfg = ExportConfig(layers=[x.strip() for x in layers.split(",") if x.strip()] if layers else None,
                       temperature=temperature, cov_rank=cov_rank, spectral_k=spectral_k, split=split,
                       batch_size=batch_size, limit=limit, input_norm=input_norm,
                       value_range=pair(value_range, "value_range"), min_accuracy=min_accuracy, force=force,
                       max_size=max_size, spectral_max_nodes=spectral_max_nodes, min_class_count=min_class_count,
                       **private)
    result = export_release(model, source, output, cfg, name=name, progress=not quiet, overwrite=overwrite)
    if not dist.is_main_process():  # under torchrun: the main process wrote the release and reports it
        return
    s = result.summary
    if as_json:
        click.echo(json.dumps(s, indent=2))
        return
    t, conv = s["teacher_check"], s["input_convention"]
    click.echo(f"wrote {s['model']} and {s['sidecar']} ({s['sidecar_bytes'] / 1e6:.2f} MB)")
    click.echo(f"  input convention {conv['description']}, raw range {conv['value_range']}")
    forced = f" -- exported with --force: {forced_reason(t['accuracy'], t['min_accuracy'])}" if t["forced"] else ""
    click.echo(f"  teacher on the {t['samples']} {t['split']} examples: accuracy {t['accuracy']:.4f} "
               f"(threshold {t['min_accuracy']:.2f}), mean confidence {t['mean_confidence']:.3f}{forced}")
    rivals = ", ".join(f"{name} {acc:.4f}" for name, acc in t.get("rival_conventions", {}).items())
    if rivals:
        click.echo(f"  on a sample of the same examples: {conv['name']} {t['sample_accuracy']:.4f}; rivals {rivals}")
    click.echo(f"  {s['samples']} examples, {s['classes']} classes, {len(s['layers'])} layers "
               f"({', '.join(x['key'] for x in s['layers'])}), {len(s['spectral_blocks'])} spectral blocks")
    if s["privacy"]:
        pv = s["privacy"]
        click.echo(f"  differentially private: epsilon {pv['epsilon']:g}, delta {pv['delta']:g} over {pv['statistics']} "
                   f"noised statistics, values clipped to a root mean square of {pv['clip']:g} per unit; the teacher "
                   "check above is released exactly")
    click.echo(f"  {s['seconds']:.1f} s ({s['samples_per_second']:.0f} examples/s in the statistics pass)")
    if s.get("spectral_omitted"):
        click.echo(f"  note: spectral blocks left out: {'; '.join(s['spectral_omitted'])}"
                   + (" (--spectral-max-nodes raises the limit)" if "planning limit" in str(s["spectral_omitted"])
                      else ""))
    coarse = {k: g for k, g in s["granularity"].items() if g != "unit"}
    click.echo(f"  size budget {s['size_budget_bytes'] / 2 ** 20:.1f} MB: "
               + (f"per channel for {', '.join(f'{k} ({g})' for k, g in coarse.items())}; the other layers per unit"
                  if coarse else "every layer per unit and class"))
    if s["covariance_dropped_for_budget"]:
        click.echo(f"  note: covariance factors left out to fit the budget: {s['covariance_dropped_for_budget']}")
    if s["cov_skipped_layers"]:
        click.echo(f"  note: no covariance for layers too large for the covariance sketch: {s['cov_skipped_layers']}")




@click.command(cls=Command)
@click.argument("release", type=click.Path())
@click.option("--model", type=click.Path(dir_okay=False), help="The ONNX file the sidecar is bound to (default for a "
              "release folder: the model beside the sidecar).")
@click.option("--data", required=True, help="The private data the release was made from, with a test split the "
              "teacher never saw: " + DATA_HELP)
@click.option("--resize", type=int, help="Pad/resize images to N x N, as for the export.")
@click.option("--transfer", type=click.Path(dir_okay=False), help="A transfer set reconstructed from the release: its "
              "samples join the first-layer Gaussian's as reconstructions to measure.")
@click.option("--members", type=click.IntRange(min=10), default=2000, show_default=True,
              help="Examples in the shadow release of the membership test (and as many non-members); the nearest-"
                   "neighbour pools are this size too.")
@click.option("--samples", type=click.IntRange(min=1), default=500, show_default=True,
              help="Reconstructed samples whose nearest neighbours are measured.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the subsets and the draws.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the whole report here as JSON.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@QUIET
def audit(release, model, data, resize, transfer, members, samples, seed, output, as_json, quiet):
    """Measure what a release leaks about the private data it was made from (docs/privacy.md).

    RELEASE is a .dfkd.h5 sidecar or a release folder. Three figures: how close the best reconstruction of
    each class's mean input gets to the true one (PSNR, SSIM); a membership test's AUC and advantage on a
    shadow release exported with the release's own settings from --members examples; and whether
    reconstructed samples lie nearer training examples than test examples.

    \b
    Examples:
      dfkd-meta audit release/ --data mnist:DATA/mnist
      dfkd-meta audit release/ --data mnist:DATA/mnist --transfer transfer.h5 -o audit.json
    """
    from dfkd_meta.audit import audit_release, summary_lines
    from dfkd_meta.data import load_data
    from dfkd_meta.errors import UsageError
    from dfkd_meta.fileio import atomic_path
    from dfkd_meta.sidecar.release import locate_release

    sidecar, model = locate_release(release, model)
    if model is None:
        raise UsageError(f"{release}: the audit runs the teacher: pass {{model}} too, or a release folder")
    report = audit_release(model, sidecar, load_data(data, resize), transfer=transfer, members=members,
                           samples=samples, seed=seed, progress=not quiet,
                           log=None if quiet or as_json else lambda m: click.echo(m, err=True))
    if output:
        with atomic_path(output) as tmp:
            tmp.write_text(json.dumps(report, indent=1) + "\n")
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        for line in summary_lines(report):
            click.echo(line)
