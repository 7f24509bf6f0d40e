"""dfkd-meta command line. Thin: each command parses options, calls one library function, prints."""
from __future__ import annotations

import click

from dfkd_meta import __version__

from .check import inspect, show, validate
from .common import Group
from .consume import demo, distill, reconstruct
from .publish import audit, export, train
from .quantize import quantize


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dfkd-meta")
def main() -> None:
    """Data-free knowledge distillation from model-release metadata."""


for command in (validate, inspect, show, train, export, audit, reconstruct, distill, quantize, demo):
    main.add_command(command)


if __name__ == "__main__":
    main()
