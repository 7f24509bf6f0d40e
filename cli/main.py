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


if __name__ == "__main__":
    main()
