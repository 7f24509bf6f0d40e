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

from ..fileio import require_file
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
           "finding", "scan_container", "validate", "validate_in_process", "check_file"]


def _out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or "memory allocation failed" in str(exc).lower()


@contextmanager
def _bounded(state: ValidationState):
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
    with _bounded(state):
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

    With ``isolate`` (the default) the file is read in a child process with HDF5 plugins
    disabled, so a libhdf5 crash is finding DM103 instead of killing the caller, and the reading
    is bounded by ``limits`` (default: ``limits.current_limits()``): CPU time (DM114), memory (DM115) and the child's
    wall-clock time (DM116; ``timeout`` overrides ``limits.wall_seconds``). Raises UsageError only when
    a path does not name a readable regular file. A ``schema`` other than the package's is only used
    in process, unbounded.
    """
    p = require_file(path, "sidecar")
    if model is not None:
        require_file(model, "model")
    if not isolate or schema is not None:
        return validate_in_process(path, model, schema=schema)
    limits = limits or current_limits()
    if timeout is not None:
        limits = replace(limits, wall_seconds=timeout)
    timeout = limits.wall_seconds
    cmd = worker_command(path, model, limits.cpu_seconds, limits.memory_bytes(p.stat().st_size))
    env = {**os.environ, "HDF5_PLUGIN_PRELOAD": "::", "HDF5_PLUGIN_PATH": "", "OPENBLAS_NUM_THREADS": "1",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # reading needs no threads; each costs memory
    # the child must import this very package, also when the caller found it through sys.path alone
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])
    report = Report(file=str(path), model=str(model) if model is not None else None)
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL,
                              preexec_fn=_child_limits if os.name == "posix" else None)
    except subprocess.TimeoutExpired:
        report.findings.append(finding("DM116", "/", f"the validation did not finish within {timeout:g} s of wall-clock "
                                                     "time (the CPU time spent reading the file stayed within its "
                                                     f"bound of {limits.cpu_seconds:g} s)"))
        return report
    if proc.returncode == 0:
        try:
            return Report.from_dict(json.loads(proc.stdout))
        except (ValueError, KeyError, TypeError) as exc:
            report.findings.append(_dm103(f"the validator process returned no report ({exc})"))
            return report
    xcpu = getattr(signal, "SIGXCPU", None)  # POSIX only
    if xcpu is not None and proc.returncode == -xcpu:
        report.findings.append(finding("DM114", "/", f"reading the file took more than {limits.cpu_seconds:g} s of CPU "
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


def worker_command(path: str | os.PathLike, model: str | os.PathLike | None, cpu_seconds: float,
                   memory_bytes: int) -> list[str]:
    """The child process's command line (``python -m dfkd_meta.sidecar._worker``)."""
    cmd = [sys.executable, "-m", "dfkd_meta.sidecar._worker", os.fspath(path), "--cpu", repr(float(cpu_seconds)),
           "--memory", str(int(memory_bytes))]
    return cmd + ["--model", os.fspath(model)] if model is not None else cmd


def _child_limits() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash must not litter core files


def _dm103(message: str) -> Finding:
    return finding("DM103", "/", message)
