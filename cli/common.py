"""What every command shares: error rendering with flag names, registry-backed choices, common options."""
from __future__ import annotations

import contextlib
import os
import sys

import click

from dfkd_meta.convention import CHOICES_HELP as CONVENTION_CHOICES
from dfkd_meta.errors import DfkdError, UsageError, shown


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


class WeightedRegistryChoice(RegistryChoice):
    """``NAME`` or ``NAME:WEIGHT``, the name from a registry, the weight a number >= 0 (kept as typed)."""

    def convert(self, value, param, ctx):
        name, sep, weight = str(value).partition(":")
        super().convert(name, param, ctx)
        if sep:
            try:
                ok = float(weight) >= 0
            except ValueError:
                ok = False
            if not ok:
                self.fail(f"{value!r}: the weight after ':' must be a number >= 0, e.g. {name}:1", param, ctx)
        return str(value)

    def get_metavar(self, param, ctx=None):
        return "NAME[:WEIGHT]"


class RegistryOption(click.Option):
    """An option over a ``RegistryChoice`` whose help lists every choice with its description."""

    def get_help_record(self, ctx):
        record = super().get_help_record(ctx)
        if record is None or not isinstance(self.type, RegistryChoice):
            return record
        return record[0], f"{record[1]} One of: {self.type.describe()}."


def objectives():
    from dfkd_meta.reconstruct.objectives import OBJECTIVES

    return OBJECTIVES


def losses():
    from dfkd_meta.distill.losses import LOSSES

    return LOSSES


def methods():
    from dfkd_meta.synthesis import METHODS

    return METHODS


def fail(exc: DfkdError, names: dict[str, str] | None = None) -> None:
    click.echo(f"error: {shown(exc.render(names))}", err=True)
    sys.exit(exc.exit_code)


class Command(click.Command):
    """A command whose library errors name its flags: ``{param}`` placeholders become ``--param``.

    Options map by their destination name; ``flag_aliases`` maps library parameter names that
    differ from it (``{"name": "--student"}``).
    """

    def __init__(self, *args, flag_aliases: dict[str, str] | None = None, distributed: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.flag_aliases = flag_aliases or {}
        self.distributed = distributed  # runs as several processes under torchrun (export, reconstruct, distill)

    def flag_names(self) -> dict[str, str]:
        names = {p.name: max(p.opts, key=len) for p in self.params if isinstance(p, click.Option) and p.name}
        names.update({p.name: p.name.upper() for p in self.params if isinstance(p, click.Argument) and p.name})
        return {**names, **self.flag_aliases}

    def invoke(self, ctx: click.Context):
        from dfkd_meta import dist

        try:
            if not dist.launched():
                return super().invoke(ctx)
            if not self.distributed:
                raise UsageError(f"`dfkd-meta {ctx.info_name}` runs in one process; start it without torchrun (export, "
                                 "reconstruct and distill run on several)")
            dist.init_from_env(ctx.params.get("device") or "cpu")  # export has no --device: ONNX Runtime on the CPU
            try:
                if not dist.is_main_process():  # one voice: the main process prints and shows progress
                    if "quiet" in ctx.params:
                        ctx.params["quiet"] = True
                    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
                        return super().invoke(ctx)
                return super().invoke(ctx)
            finally:
                dist.shutdown()
        except DfkdError as exc:
            fail(exc, self.flag_names())


class Group(click.Group):
    """Turns user errors into one line on stderr and an exit code, never a traceback."""

    command_class = Command

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except DfkdError as exc:
            fail(exc)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


DATA_HELP = ("digits (bundled 8x8 digits), fashion-demo (the 2,000 Fashion-MNIST test images shipped with the demo "
             "release, evaluation only), mnist:DIR (MNIST-layout IDX folder), npz:FILE (x images or feature "
             "vectors, y labels) or imagefolder:DIR (DIR/<class>/<image> or DIR/train/<class>/..., PNG, JPEG, BMP "
             "or WebP, decoded batch by batch).")
CONVENTION_HELP = CONVENTION_CHOICES
DEVICE = click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
QUIET = click.option("--quiet", "-q", is_flag=True, help="No progress bars.")


def pair(text: str | None, param: str) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"{{{param}}} {text!r}: expected LO,HI (two numbers)") from None
    return lo, hi




def read_limit_options(command):
    """--read-cpu-limit, --read-memory-limit and --timeout: the bounds on validating an untrusted sidecar
    (SPEC §3.4), in force for every validation the command makes."""
    import functools

    from dfkd_meta.sidecar.limits import DEFAULT_CPU_SECONDS, DEFAULT_WALL_SECONDS

    @functools.wraps(command)
    def run(*args, read_cpu_limit: float, read_memory_limit: int | None, timeout: float, **kwargs):
        from dfkd_meta.sidecar.limits import ReadLimits, using_limits

        with using_limits(ReadLimits(read_cpu_limit, read_memory_limit, timeout)):
            return command(*args, **kwargs)

    options = [
        click.option("--read-cpu-limit", type=click.FloatRange(min=0, min_open=True), default=DEFAULT_CPU_SECONDS,
                     metavar="SECONDS",
                     help="CPU time reading the sidecar may take before it is refused as DM114 "
                          "[default: 10 s plus 30 s per GB the file holds or declares]."),
        click.option("--read-memory-limit", type=click.IntRange(min=1), metavar="MIB",
                     help="Memory reading the sidecar may add before it is refused as DM115 "
                          "[default: 256 + half the file's size in MiB]."),
        click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=DEFAULT_WALL_SECONDS,
                     show_default=True, metavar="SECONDS",
                     help="Wall-clock limit of each validation (start-up and model checks included); "
                          "exceeding it is DM116, which says nothing about the file."),
    ]
    for option in reversed(options):
        run = option(run)
    return run
