"""The transfer-set file: reconstructed inputs, their classes, the teacher's outputs, provenance.

HDF5, written batch by batch to ``<path>.partial`` (so an interrupted run can resume) and renamed
onto ``<path>`` when complete. Layout (every dataset's first axis is N):

    (described in spec/TRANSFER.md)
    /          @dfkd_type="transfer_set" @dfkd_type_version="1.1.0" @temperature
               @model_sha256 @sidecar_sha256 @objective @settings (JSON) @created_utc @writer_*
               @input_space ("model" or "raw") @input_domain (JSON: the sidecar's input domain)
    /x               float32 [N, *input_shape]   inputs, in the space @input_space names
    /classes         int64   [N]                 the class each input was reconstructed for
    /teacher_logits  float32 [N, C]
    /teacher_soft    float32 [N, C]              softmax(logits / temperature)
    /loss            float32 [N]                 final per-sample reconstruction loss
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from . import __version__, dist
from .config import STORE_SPACES, changed
from .errors import DfkdError, UsageError
from .sidecar.scan import disable_hdf5_plugins, scan_container
from .sidecar.types import utc_now

TRANSFER_TYPE, TRANSFER_VERSION = "transfer_set", "1.1.0"
DATASETS = ("x", "classes", "teacher_logits", "teacher_soft", "loss")
INPUT_SPACES = STORE_SPACES  # x as the model takes it (normalised), or raw values before normalisation


def _channel_view(domain: dict, ndim: int) -> tuple[int, ...]:
    return (1, *([1] * (ndim - 2)), -1) if domain.get("layout") == "NHWC" else (1, -1, *([1] * (ndim - 2)))


def raw_to_model(x: np.ndarray, domain: dict) -> np.ndarray:
    """Model inputs from raw values, by the recorded input domain: (r - norm_mean) / norm_std per channel."""
    view = _channel_view(domain, x.ndim)
    mean = np.asarray(domain["norm_mean"], np.float64).reshape(view)
    std = np.asarray(domain["norm_std"], np.float64).reshape(view)
    return ((x.astype(np.float64) - mean) / std).astype(np.float32)


def model_to_raw(x: np.ndarray, domain: dict) -> np.ndarray:
    view = _channel_view(domain, x.ndim)
    mean = np.asarray(domain["norm_mean"], np.float64).reshape(view)
    std = np.asarray(domain["norm_std"], np.float64).reshape(view)
    return (x.astype(np.float64) * std + mean).astype(np.float32)


@dataclass
class TransferSet:
    x: np.ndarray
    classes: np.ndarray
    teacher_logits: np.ndarray
    teacher_soft: np.ndarray
    loss: np.ndarray
    temperature: float
    provenance: dict = field(default_factory=dict)
    input_space: str = "model"
    input_domain: dict | None = None  # layout, value_min, value_max, norm_mean, norm_std, convention, image_shape
    sha256: str | None = None  # of the file's bytes that were checked and read (None: made in memory)

    def __len__(self) -> int:
        return len(self.classes)

    def model_inputs(self) -> np.ndarray:
        """``x`` as the teacher takes it, whatever space the file stores it in."""
        if self.input_space == "model":
            return self.x
        return raw_to_model(self.x, self.input_domain)


class TransferWriter:
    """Append batches to ``<path>.partial``; ``finish()`` renames it onto ``path``.

    With ``resume`` an existing partial file made with the same provenance is continued;
    ``done`` says how many samples it already holds.
    """

    def __init__(self, path: str | os.PathLike, *, input_shape: tuple[int, ...], num_classes: int,
                 temperature: float, provenance: dict, input_domain: dict, input_space: str = "model",
                 resume: bool = False):
        if input_space not in INPUT_SPACES:
            raise UsageError(f"{{store}} {input_space!r}: expected one of {', '.join(INPUT_SPACES)}")
        dist.require_main(f"write {path}")
        self.path, self.num_classes = Path(path), num_classes
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        disable_hdf5_plugins()
        self.restarted: str | None = None  # why a --resume found nothing to continue from
        if resume and self.partial.exists() and not self._holds_batches():
            self.restarted = f"{self.partial} holds no finished batch; starting from zero"
            print(self.restarted, file=sys.stderr)
            resume = False
        if resume and self.partial.exists():
            self.f = self._reopen(provenance, input_domain, input_space)
        else:
            self.partial.unlink(missing_ok=True)
            self.f = h5py.File(self.partial, "w", track_order=False)
            a = self.f.attrs
            a["dfkd_type"], a["dfkd_type_version"] = TRANSFER_TYPE, TRANSFER_VERSION
            a["writer_name"], a["writer_version"], a["created_utc"] = "dfkd-meta", __version__, utc_now()
            a["temperature"] = float(temperature)
            a["input_space"] = input_space
            a["input_domain"] = json.dumps(input_domain, sort_keys=True)
            for k, v in provenance.items():
                a[k] = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
            shapes = {"x": tuple(input_shape), "classes": (), "teacher_logits": (num_classes,),
                      "teacher_soft": (num_classes,), "loss": ()}
            for name, shape in shapes.items():
                dtype = np.int64 if name == "classes" else np.float32
                self.f.create_dataset(name, shape=(0, *shape), maxshape=(None, *shape), dtype=dtype,
                                      chunks=(max(1, min(256, 2 ** 20 // max(1, 4 * int(np.prod(shape))))), *shape))
            self.f.flush()  # a run killed before its first batch leaves a readable, empty partial file
        self.done = len(self.f["classes"])

    def _holds_batches(self) -> bool:
        """Whether the partial file can be read and holds at least one batch (a run killed before its first
        batch leaves an empty or unreadable file, with nothing to resume)."""
        if any(f.severity == "error" for f in scan_container(self.partial)):
            return self.partial.stat().st_size > 4096  # larger: real batches may be lost; _reopen says so
        try:
            with h5py.File(self.partial, "r", locking=False) as f:
                ds = f.get("classes")
                return isinstance(ds, h5py.Dataset) and ds.ndim == 1 and len(ds) > 0
        except (OSError, ValueError):
            return False

    def _reopen(self, provenance: dict, input_domain: dict, input_space: str) -> h5py.File:
        problems = [f for f in scan_container(self.partial) if f.severity == "error"]
        if problems:
            raise DfkdError(f"{self.partial}: the partial file is damaged ({problems[0].message}); rerun without {{resume}}")
        f = h5py.File(self.partial, "r+")
        for k, v in {**provenance, "input_space": input_space,
                     "input_domain": json.dumps(input_domain, sort_keys=True)}.items():
            want = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
            got = f.attrs.get(k)
            got = got.decode() if isinstance(got, bytes) else got
            if got == want:
                continue
            f.close()
            what = k
            if isinstance(v, dict) and isinstance(got, str):
                try:
                    what = "; ".join(changed(json.loads(got), v)) or k
                except ValueError:
                    pass
            raise UsageError(f"{self.partial}: it was made with different {k} ({what}); rerun with the same "
                             "settings, or without {resume} to start over")
        lengths = {len(f[name]) for name in DATASETS}
        if len(lengths) != 1:
            f.close()
            raise DfkdError(f"{self.partial}: datasets of different lengths; rerun without {{resume}}")
        return f

    def append(self, **batch: np.ndarray) -> None:
        n = len(batch["classes"])
        for name in DATASETS:
            ds = self.f[name]
            ds.resize(self.done + n, axis=0)
            ds[self.done:] = batch[name]
        self.done += n
        self.f.flush()  # a batch on disk is a batch a --resume will not redo

    def finish(self) -> TransferSet:
        """Mark the partial file complete, read it as a consumer would (raising on anything a consumer would
        refuse, with ``path`` untouched), and only then rename it onto ``path``. Returns what was read."""
        self.f.attrs["complete"] = 1
        self.f.close()
        checked = read_transfer(self.partial, self.num_classes)
        os.replace(self.partial, self.path)
        return checked

    def close(self) -> None:
        if self.f.id.valid:
            self.f.close()


# ------------------------------------------------------------------------------------------------
# checking and reading (TRANSFER.md §3): the container rules, then these, in the isolated child

TRANSFER_RULES = {  # id: (what, fix)
    "DT201": ("not a transfer set", "pass the file `dfkd-meta reconstruct` (or `distill --save-transfer`) wrote"),
    "DT202": ("a required dataset is missing or not a dataset", "the file is incomplete or damaged: re-run reconstruct"),
    "DT203": ("datasets of different lengths", "the file is damaged: re-run reconstruct"),
    "DT204": ("a dataset of the wrong type or shape", "the file is damaged: re-run reconstruct"),
    "DT205": ("non-finite values", "the file is damaged or was made from an overflowing sidecar: re-run reconstruct"),
    "DT206": ("a class index outside [0, C)", "the file is damaged: re-run reconstruct"),
    "DT207": ("@temperature missing or not a positive number", "the file is damaged: re-run reconstruct"),
    "DT208": ("@input_space or @input_domain missing or unreadable", "the file is damaged: re-run reconstruct"),
    "DT209": ("made for a teacher with another number of classes", "pass the teacher this transfer set was made for"),
}
_BLOCK_BYTES = 16 << 20  # values are checked in blocks of rows: memory bounded by the block, not the file


def _dt(rule: str, path: str, message: str):
    from .sidecar.report import Finding

    return Finding("error", rule, f"TRANSFER {rule}", path, message, TRANSFER_RULES[rule][1])


def _text(v):
    return v.decode("utf-8", "replace") if isinstance(v, (bytes, np.bytes_)) else v


def _check_values(f: h5py.File, num_classes: int | None, findings: list) -> None:
    version = _text(f.attrs.get("dfkd_type_version"))
    if _text(f.attrs.get("dfkd_type")) != TRANSFER_TYPE or not isinstance(version, str) \
            or version.split(".")[0] != TRANSFER_VERSION.split(".")[0]:
        findings.append(_dt("DT201", "/", f"dfkd_type {f.attrs.get('dfkd_type')!r} version {version!r}, expected "
                                          f"{TRANSFER_TYPE!r} {TRANSFER_VERSION.split('.')[0]}.x"))
        return
    missing = [d for d in DATASETS if not isinstance(f.get(d, getlink=False), h5py.Dataset)]
    if missing:
        findings.append(_dt("DT202", "/", f"missing datasets {missing}"))
        return
    ds = {d: f[d] for d in DATASETS}
    n = ds["classes"].shape[0] if ds["classes"].ndim == 1 else -1
    c = ds["teacher_logits"].shape[1] if ds["teacher_logits"].ndim == 2 else -1
    shapes_ok = True
    for name, want_kind, want in (("classes", "iu", (n,)), ("teacher_logits", "f", (n, c)),
                                  ("teacher_soft", "f", (n, c)), ("loss", "f", (n,))):
        if ds[name].dtype.kind not in want_kind or ds[name].shape != want:
            findings.append(_dt("DT204", f"/{name}", f"{ds[name].dtype} {ds[name].shape}, expected "
                                                     f"{'integers' if want_kind == 'iu' else 'floats'} {want}"))
            shapes_ok = False
    if ds["x"].dtype.kind != "f" or ds["x"].ndim < 2 or ds["x"].shape[0] != n:
        findings.append(_dt("DT204", "/x", f"{ds['x'].dtype} {ds['x'].shape}, expected floats [{n}, ...]"))
        shapes_ok = False
    if n < 0 or c < 2:
        findings.append(_dt("DT204", "/teacher_logits", f"shape {ds['teacher_logits'].shape}: expected [N, C], C >= 2"))
        return
    lengths = {d: ds[d].shape[0] if ds[d].ndim else None for d in DATASETS}
    if len(set(lengths.values())) != 1:
        findings.append(_dt("DT203", "/", f"lengths {lengths}"))
        return
    if not shapes_ok:
        return
    if num_classes is not None and c != num_classes:
        findings.append(_dt("DT209", "/teacher_logits", f"{c} classes, the teacher has {num_classes}"))
    for name in ("x", "teacher_logits", "teacher_soft", "loss"):
        row = max(1, int(np.prod(ds[name].shape[1:], dtype=np.int64)) * 4)
        step = max(1, _BLOCK_BYTES // row)
        for i in range(0, n, step):
            if not np.isfinite(ds[name][i:i + step]).all():
                findings.append(_dt("DT205", f"/{name}", f"non-finite values in rows {i}-{min(n, i + step) - 1}"))
                break
    step = max(1, _BLOCK_BYTES // 8)
    for i in range(0, n, step):
        block = ds["classes"][i:i + step]
        if block.size and (block.min() < 0 or block.max() >= c):
            findings.append(_dt("DT206", "/classes", f"values in [{block.min()}, {block.max()}], expected [0, {c})"))
            break
    temperature = f.attrs.get("temperature")
    if not isinstance(temperature, (float, np.floating)) or not (np.isfinite(temperature) and temperature > 0):
        findings.append(_dt("DT207", "/@temperature", f"{temperature!r}"))
    space = _text(f.attrs.get("input_space", "model"))  # files of version 1.0 stored model inputs only
    domain = _text(f.attrs.get("input_domain")) if "input_domain" in f.attrs else None
    if domain is not None:
        try:
            d = json.loads(domain) if isinstance(domain, str) else None
            if not isinstance(d, dict):
                raise ValueError
            mean, std = np.asarray(d["norm_mean"], np.float64), np.asarray(d["norm_std"], np.float64)
            if mean.ndim != 1 or std.shape != mean.shape or not mean.size or not np.isfinite(mean).all() \
                    or not (np.isfinite(std).all() and (std > 0).all()):
                raise ValueError
        except (ValueError, TypeError, KeyError):
            findings.append(_dt("DT208", "/@input_domain", "not a JSON input domain with finite norm_mean and "
                                                           "positive norm_std"))
            domain = None
    if not isinstance(space, str) or space not in INPUT_SPACES or (space == "raw" and domain is None):
        findings.append(_dt("DT208", "/@input_space", f"{space!r}" + (" without an input domain" if space == "raw"
                                                                       else "")))


def check_transfer_in_process(path: str | os.PathLike, num_classes: int | None = None, *, bounds=None):
    """Every finding for the transfer file ``path``, in this process: the container rules (SPEC §3) and
    TRANSFER.md's, under ``bounds`` (set by the isolated child). Prefer ``read_transfer``."""
    from .sidecar.report import Report
    from .sidecar.scan import open_file, run_guarded, scan
    from .sidecar.schema import load_schema
    from .sidecar.state import ValidationState
    from .sidecar.validator import bounded_reading

    def body(state: ValidationState) -> None:
        with bounded_reading(state):
            open_file(state)
            scan(state)
            if not any(x.severity == "error" for x in state.findings):
                _check_values(state.file, num_classes, state.findings)

    state = ValidationState(load_schema(), Path(path), bounds=bounds)
    return Report(file=str(path), findings=run_guarded(state, body))


def check_transfer(path: str | os.PathLike, num_classes: int | None = None):
    """The report on a transfer file, read as ``read_transfer`` reads it (a private copy, in the child)."""
    from .fileio import PrivateFolder

    with PrivateFolder() as folder:
        return _check_copy(folder, Path(path), num_classes)[0]


def _check_copy(folder, path: Path, num_classes: int | None):
    from .fileio import require_file
    from .sidecar.validator import run_isolated

    snap = folder.copy(require_file(path, "transfer set"), "transfer set", name=f"transfer/{Path(path).name}")
    report = run_isolated("transfer", snap, folder,
                          extra=["--classes", str(num_classes)] if num_classes is not None else [])
    report.file, report.sha256 = str(path), snap.sha256
    return report, snap


def read_transfer(path: str | os.PathLike, num_classes: int | None = None) -> TransferSet:
    """Load a transfer set after checking it: a private copy of the file (hashed as copied) is checked in the
    isolated, bounded child (container rules, type, dtypes, shapes, finite values, class range; TRANSFER.md),
    and that copy is what is loaded. ``TransferSet.sha256`` is the hash of those bytes."""
    from .fileio import PrivateFolder

    path = Path(path)
    with PrivateFolder() as folder:
        report, snap = _check_copy(folder, path, num_classes)
        if report.errors:
            e = report.errors[0]
            more = f" and {len(report.errors) - 1} more" if len(report.errors) > 1 else ""
            raise DfkdError(f"{path}: not a usable transfer set: {e.rule} {e.path}: {e.message}{more}; fix: {e.fix}")
        return _load_checked(snap.path, snap.sha256)


def _load_checked(path: Path, sha256: str) -> TransferSet:
    disable_hdf5_plugins()
    with h5py.File(path, "r", locking=False) as f:
        data = {d: f[d][()] for d in DATASETS}
        attrs = {k: _text(v) for k, v in f.attrs.items()}
    space = attrs.get("input_space", "model")
    domain = json.loads(attrs["input_domain"]) if "input_domain" in attrs else None
    prov = {k: v for k, v in attrs.items()
            if k not in ("dfkd_type", "dfkd_type_version", "temperature", "input_space", "input_domain")}
    if "settings" in prov:
        try:
            prov["settings"] = json.loads(prov["settings"])
        except (ValueError, TypeError):
            pass
    return TransferSet(x=data["x"].astype(np.float32), classes=data["classes"].astype(np.int64),
                       teacher_logits=data["teacher_logits"].astype(np.float32),
                       teacher_soft=data["teacher_soft"].astype(np.float32), loss=data["loss"].astype(np.float32),
                       temperature=float(attrs["temperature"]), provenance=prov, input_space=space,
                       input_domain=domain, sha256=sha256)
