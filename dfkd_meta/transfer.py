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


def read_transfer(path: str | os.PathLike, num_classes: int | None = None) -> TransferSet:
    """Load a transfer set after checking it: container rules, type, dtypes, shapes, finite values."""
    path = Path(path)
    errors = [f for f in scan_container(path) if f.severity == "error"]
    if errors:
        raise DfkdError(f"{path}: not a usable transfer set: {errors[0].rule} {errors[0].path}: {errors[0].message}")
    with h5py.File(path, "r", locking=False) as f:
        kind = f.attrs.get("dfkd_type")
        if (kind.decode() if isinstance(kind, bytes) else kind) != TRANSFER_TYPE:
            raise DfkdError(f"{path}: not a transfer set (dfkd_type {kind!r}); pass the file `dfkd-meta reconstruct` wrote")
        missing = [d for d in DATASETS if not isinstance(f.get(d, getlink=False), h5py.Dataset)]
        if missing:
            raise DfkdError(f"{path}: missing datasets {missing}; the file is incomplete or damaged")
        data = {d: f[d][()] for d in DATASETS}
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
    n = len(data["classes"])
    c = data["teacher_logits"].shape[1] if data["teacher_logits"].ndim == 2 else -1
    bad = [d for d in DATASETS if len(data[d]) != n] + (["teacher_logits"] if c < 2 else [])
    bad += ["teacher_soft"] if data["teacher_soft"].shape != (n, c) else []
    bad += [d for d in ("x", "teacher_logits", "teacher_soft", "loss") if data[d].dtype.kind != "f"
            or not np.isfinite(data[d]).all()]
    if data["classes"].dtype.kind not in "iu" or (n and (data["classes"].min() < 0 or data["classes"].max() >= c)):
        bad.append("classes")
    if num_classes is not None and c != num_classes:
        bad.append(f"teacher_logits ({c} classes, expected {num_classes})")
    temperature = attrs.get("temperature")
    if not isinstance(temperature, (float, np.floating)) or not temperature > 0:
        bad.append("@temperature")
    space = attrs.get("input_space", "model")  # files of version 1.0 stored model inputs only
    domain = None
    if "input_domain" in attrs:
        try:
            domain = json.loads(attrs["input_domain"]) if isinstance(attrs["input_domain"], str) else None
            if not isinstance(domain, dict):
                raise ValueError
            np.asarray(domain["norm_mean"], np.float64), np.asarray(domain["norm_std"], np.float64)
        except (ValueError, TypeError, KeyError):
            bad.append("@input_domain")
            domain = None
    if not isinstance(space, str) or space not in INPUT_SPACES or (space == "raw" and domain is None):
        bad.append("@input_space")
    if bad:
        raise DfkdError(f"{path}: inconsistent transfer set ({', '.join(sorted(set(bad)))}); re-run reconstruct")
    prov = {k: v for k, v in attrs.items()
            if k not in ("dfkd_type", "dfkd_type_version", "temperature", "input_space", "input_domain")}
    if "settings" in prov:
        try:
            prov["settings"] = json.loads(prov["settings"])
        except ValueError:
            pass
    return TransferSet(x=data["x"].astype(np.float32), classes=data["classes"].astype(np.int64),
                       teacher_logits=data["teacher_logits"].astype(np.float32),
                       teacher_soft=data["teacher_soft"].astype(np.float32), loss=data["loss"].astype(np.float32),
                       temperature=float(temperature), provenance=prov, input_space=space, input_domain=domain)
