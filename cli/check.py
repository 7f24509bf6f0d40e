"""Commands that read releases: validate, inspect, show (none of them imports torch unless it must)."""
from __future__ import annotations

import json
import sys

import click

from dfkd_meta.errors import UsageError, shown_deep

from .common import DATA_HELP, Command, read_limit_options


@click.command(cls=Command)
@click.argument("path", type=click.Path())
@click.option("--model", type=click.Path(dir_okay=False), help="The ONNX file the sidecar must be bound to "
              "(default for a release folder: the model beside the sidecar).")
@click.option("--data", help="Also re-check the release against labelled data: the teacher's accuracy fed by the "
                             "recorded input domain, and the logits' statistics against a fresh pass. " + DATA_HELP)
@click.option("--resize", type=int, help="Pad/resize --data images to N x N, as for the export.")
@click.option("--limit", type=click.IntRange(min=1), help="Re-check on the first N examples only.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@read_limit_options
def validate(path: str, model: str | None, data: str | None, resize: int | None, limit: int | None,
             as_json: bool) -> None:
    """Check a sidecar (or a release folder) against the format spec, and its binding to the model.

    PATH is a .dfkd.h5 sidecar, or a release folder: its sidecar, model (external data included) and
    model card (README.md, read as untrusted text and checked against the release) are checked.
    Exit status: 0 valid, 1 invalid, 2 not run (usage error, missing or unreadable path).

    \b
    Examples:
      dfkd-meta validate release/teacher.dfkd.h5 --model release/teacher.onnx
      dfkd-meta validate release/ --data mnist:DATA/mnist --json
    """
    from pathlib import Path

    from dfkd_meta.sidecar.release import locate_release, validate_release
    from dfkd_meta.sidecar.validator import validate as run

    sidecar, model = locate_release(path, model)
    report = validate_release(path, model) if Path(path).is_dir() else run(sidecar, model)
    numbers = None
    if data is not None and report.valid:
        if model is None:
            raise UsageError("{data} re-checks the teacher: pass {model} too (or a release folder)")
        from dfkd_meta.data import load_data
        from dfkd_meta.fileio import PrivateFolder
        from dfkd_meta.onnx.inspect import copy_model
        from dfkd_meta.sidecar import read_sidecar
        from dfkd_meta.stats.recheck import recheck_release

        with PrivateFolder() as private:  # the model the binding is checked against is the model that runs
            copy = copy_model(private, model)
            findings, numbers = recheck_release(read_sidecar(sidecar, copy.path), str(copy.path),
                                                load_data(data, resize), limit=limit)
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
            rivals = ", ".join(f"{k} {v:.4f}" for k, v in numbers["rival_conventions"].items())
            if rivals:
                click.echo(f"  on a sample of the same examples: recorded domain {numbers['sample_accuracy']:.4f}; "
                           f"rivals {rivals}")
        click.echo(report.summary())
    sys.exit(0 if report.valid else 1)


@click.command(cls=Command)
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def inspect(model: str, as_json: bool) -> None:
    """Show MODEL's inputs, outputs, ops (supported or not) and candidate statistics layers.

    Reads the graph only: nothing runs, no external weights are loaded, torch is not imported.

    \b
    Examples:
      dfkd-meta inspect teacher.onnx
      dfkd-meta inspect teacher.onnx --json
    """
    from dfkd_meta.fileio import require_file
    from dfkd_meta.onnx.inspect import inspect_model

    info = inspect_model(require_file(model, "model"))
    if as_json:  # JSON escapes control characters itself
        click.echo(json.dumps(info, indent=2))
        return
    info = shown_deep(info)  # names come from the model file: no raw control characters to the terminal
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


@click.command(cls=Command)
@click.argument("sidecar", type=click.Path(dir_okay=False))
@click.option("--model", type=click.Path(dir_okay=False), help="Also check the binding to this ONNX file.")
@click.option("--plot", type=click.Path(dir_okay=False), help="Write per-class top-layer means +- std as a PNG.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@read_limit_options
def show(sidecar: str, model: str | None, plot: str | None, as_json: bool) -> None:
    """Summarise SIDECAR (validated first): model, data, layers, spectral blocks, privacy, sizes.

    \b
    Examples:
      dfkd-meta show release/teacher.dfkd.h5
      dfkd-meta show release/teacher.dfkd.h5 --model release/teacher.onnx --plot classes.png
    """
    from dfkd_meta.sidecar import read_sidecar
    from dfkd_meta.sidecar.summary import describe, format_summary, plot_top_layer

    sc = read_sidecar(sidecar, model, for_use=False)  # a summary shows what is there, warnings and all
    info = describe(sc, sidecar)
    click.echo(json.dumps(info, indent=2) if as_json else format_summary(shown_deep(info)))
    if plot:
        plot_top_layer(sc, plot)
        if not as_json:
            click.echo(f"wrote {plot}")


