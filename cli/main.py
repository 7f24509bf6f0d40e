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


if __name__ == "__main__":
    main()
