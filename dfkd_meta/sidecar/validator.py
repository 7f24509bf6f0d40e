"""Validate a sidecar against SPEC.md, driven by the schema. Never trusts the file.

Order (SPEC §11.2): the container is scanned without following links or reading values
(``scan``); only then are items read, in bounded blocks, and checked against the schema
(``structure``), with the semantic rules of each element type (``rules``); then, given a model,
the binding (``model_checks``). Findings and the report are in ``report``.

``validate()`` runs all of this in a child process by default, so that a libhdf5 crash on a
crafted file becomes a finding (DM103) instead of killing the caller, and bounds the reading in CPU
time (DM114) and memory (DM115), and the child in wall-clock time (DM116; see ``limits``).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from ..fileio import PrivateFolder, Snapshot, require_file
from . import scan as _scan
from .limits import ReadBounds, ReadLimits, current_limits
from .report import SEVERITY_ORDER, Finding, Report, finding
from .schema import Schema, schema_or_default
from .state import ValidationState
from .structure import check_format_version, check_group

DEFAULT_TIMEOUT_S = ReadLimits.wall_seconds
disable_hdf5_plugins = _scan.disable_hdf5_plugins
scan_container = _scan.scan_container

__all__ = ["Finding", "Report", "SEVERITY_ORDER", "DEFAULT_TIMEOUT_S", "ReadLimits", "disable_hdf5_plugins",
           "finding", "scan_container", "validate", "validate_copy", "validate_in_process", "check_file",
           "run_isolated"]


def _out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or "memory allocation failed" in str(exc).lower()


@contextmanager
def bounded_reading(state: ValidationState):
    """The reading under ``state.bounds``: a failed allocation while the memory bound holds is DM115."""
    bounds = state.bounds
    if bounds is None:
        yield
        return
    bounds.apply()
    try:
        yield
    except (MemoryError, OSError, RuntimeError, ValueError) as exc:
        if bounds.memory_active and _out_of_memory(exc):
            state.fatal("DM115", state.where, f"reading needed more than the {bounds.memory_bytes >> 20} MiB allowed "
                                              f"({type(exc).__name__}: {exc})")
        raise
    finally:
        bounds.lift()


def _check(state: ValidationState) -> None:
    with bounded_reading(state):
        _scan.open_file(state)
        _scan.scan(state)
        if not check_format_version(state):
            return
        check_group(state, "/", "sidecar", {})
    if state.model is not None:
        from .model_checks import check_against_model  # imports onnx: only when a model is given

        check_against_model(state, state.model)


def check_file(path: Path, model: Path | None = None, schema: Schema | None = None, *,
               bounds: ReadBounds | None = None) -> list[Finding]:
    """Every finding for ``path`` (and ``model``), in this process, against ``schema`` (default: the package's).

    ``bounds`` (set by the child process of validate()) limit the reading of the file itself.
    """
    return _scan.run_guarded(ValidationState(schema_or_default(schema), path, model, bounds=bounds), _check)


def validate_in_process(path: str | os.PathLike, model: str | os.PathLike | None = None, *,
                        schema: Schema | None = None, bounds: ReadBounds | None = None) -> Report:
    """Validate in this process. Safe against everything but libhdf5 crashes and hangs; prefer validate()."""
    p = require_file(path, "sidecar")
    m = require_file(model, "model") if model is not None else None
    findings = check_file(p, m, schema, bounds=bounds)
    return Report(file=str(path), model=str(model) if model is not None else None, findings=findings)


def validate(path: str | os.PathLike, model: str | os.PathLike | None = None, *,
             isolate: bool = True, limits: ReadLimits | None = None, timeout: float | None = None,
             schema: Schema | None = None) -> Report:
    """Validate a sidecar (and, given the model file, its binding). Returns a Report.

    With ``isolate`` (the default) the file is first copied once into a private folder (hashed as it is
    copied: ``Report.sha256``), then that copy is read in an isolated child process with HDF5 plugins
    disabled, so a libhdf5 crash is finding DM103 instead of killing the caller, and the reading is
    bounded by ``limits`` (default: ``limits.current_limits()``): CPU time (DM114), memory (DM115) and the
    child's wall-clock time (DM116; ``timeout`` overrides ``limits.wall_seconds``). Raises UsageError only
    when a path does not name a readable regular file. A ``schema`` other than the package's is only used
    in process, unbounded.
    """
    p = require_file(path, "sidecar")
    m = require_file(model, "model") if model is not None else None
    if not isolate or schema is not None:
        return validate_in_process(path, model, schema=schema)
    with PrivateFolder() as folder:
        report, _ = validate_copy(folder, p, m, limits=limits, timeout=timeout)
    return report


def validate_copy(folder: PrivateFolder, path: Path, model: Path | None = None, *, limits: ReadLimits | None = None,
                  timeout: float | None = None) -> tuple[Report, Snapshot]:
    """Copy ``path`` (and ``model`` with its external data) into ``folder`` and validate the copies in the
    isolated child. Returns the report (naming the original paths) and the sidecar's copy: read that copy,
    never ``path`` again, and what was read is what was validated."""
    snap = folder.copy(path, "sidecar", name=f"sidecar/{path.name}")
    model_copy = None
    if model is not None:
        from ..onnx.inspect import copy_model  # imports onnx: only when a model is given

        model_copy = copy_model(folder, model, under="model")  # its external data travel with it
    report = run_isolated("sidecar", snap, folder, limits=limits, timeout=timeout,
                          extra=["--model", os.fspath(model_copy.path)] if model_copy is not None else [])
    report.file, report.model, report.sha256 = str(path), str(model) if model is not None else None, snap.sha256
    return report, snap


def run_isolated(kind: str, snap: Snapshot, folder: PrivateFolder, *, limits: ReadLimits | None = None,
                 timeout: float | None = None, extra: list[str] | None = None) -> Report:
    """Read the private copy ``snap`` in the isolated child (``_worker``) under the read bounds; its report."""
    limits = limits or current_limits()
    if timeout is not None:
        limits = replace(limits, wall_seconds=timeout)
    timeout = limits.wall_seconds
    cpu = limits.cpu_seconds_for(snap.size)
    cmd = worker_command(kind, snap.path, cpu, limits.memory_bytes(snap.size), limits.cpu_seconds_per_gb / 1e9,
                         extra or [])
    # the child imports nothing through the environment (-I ignores PYTHON* variables) and reads no thread count
    env = {**os.environ, "HDF5_PLUGIN_PRELOAD": "::", "HDF5_PLUGIN_PATH": "", "OPENBLAS_NUM_THREADS": "1",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",  # reading needs no threads; each costs memory
           "DFKD_META_CHILD_PATH": os.pathsep.join(child_import_path())}
    report = Report(file=str(snap.source))
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL,
                              cwd=folder.path, preexec_fn=_child_limits if os.name == "posix" else None)
    except subprocess.TimeoutExpired:
        report.findings.append(finding("DM116", "/", f"the check did not finish within {timeout:g} s of wall-clock "
                                                     "time (the CPU time spent reading the file stayed within its "
                                                     f"bound of {cpu:g} s)"))
        return report
    if proc.returncode == 0:
        try:
            return Report.from_dict(json.loads(proc.stdout))
        except (ValueError, KeyError, TypeError) as exc:
            report.findings.append(_dm103(f"the reading process returned no report ({exc})"))
            return report
    xcpu = getattr(signal, "SIGXCPU", None)  # POSIX only
    if xcpu is not None and proc.returncode == -xcpu:
        report.findings.append(finding("DM114", "/", f"reading the file took more than {cpu:g} s of CPU "
                                                     "time (libhdf5 did not return)"))
        return report
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name if -proc.returncode in signal.valid_signals() else "?"
        why = f"the reading process was killed by signal {-proc.returncode} ({name})"
    else:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
        why = f"the reading process failed with exit code {proc.returncode}: {tail[0]}"
    report.findings.append(_dm103(why))
    return report


PACKAGE_DIR = Path(__file__).resolve().parents[1]


def child_import_path() -> list[str]:
    """Where this process found its libraries, for the child to look after its own site folders: ``sys.path``
    without the current folder and anything inside it (where a release may have been unpacked)."""
    cwd = Path.cwd().resolve()
    out = []
    for entry in sys.path:
        if not entry:
            continue
        p = Path(entry).resolve()
        if p != cwd and cwd not in p.parents:
            out.append(str(p))
    return out
# Run by the parent with ``-I -c``: loads this package from its own folder and nothing from elsewhere.
BOOT = ("import importlib.util, os, sys\n"
        "sys.path += [p for p in os.environ.get('DFKD_META_CHILD_PATH', '').split(os.pathsep) if p]\n"
        "pkg = sys.argv[1]\n"
        "spec = importlib.util.spec_from_file_location('dfkd_meta', pkg + '/__init__.py', "
        "submodule_search_locations=[pkg])\n"
        "mod = importlib.util.module_from_spec(spec)\n"
        "sys.modules['dfkd_meta'] = mod\n"
        "spec.loader.exec_module(mod)\n"
        "from dfkd_meta.sidecar._worker import main\n"
        "sys.exit(main(sys.argv[2:]))\n")




def worker_command(kind: str, path: str | os.PathLike, cpu_seconds: float, memory_bytes: int,
                   cpu_seconds_per_byte: float = 0.0, extra: list[str] | None = None) -> list[str]:
    """The child process's command line: isolated mode (``-I``: neither the working directory nor PYTHONPATH
    nor the user's site folder is on its import path) and this package loaded from its own folder."""
    return [sys.executable, "-I", "-c", BOOT, os.fspath(PACKAGE_DIR), kind, os.fspath(path),
            "--cpu", repr(float(cpu_seconds)), "--cpu-per-byte", repr(float(cpu_seconds_per_byte)),
            "--memory", str(int(memory_bytes)), *(extra or [])]


def _child_limits() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash must not litter core files


def _dm103(message: str) -> Finding:
    return finding("DM103", "/", message)
