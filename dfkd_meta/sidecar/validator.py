"""Validate a sidecar against SPEC.md, driven by the schema. Never trusts the file.

Order (SPEC §11.2): the container is scanned without following links or reading values
(forbidden features, declared sizes, structure limits); only then are items read, in bounded
blocks, and checked against the schema; then semantic rules; then, given a model, the binding.

``validate()`` runs all of this in a child process by default, so that a libhdf5 crash on a
crafted file becomes a finding (DM103) instead of killing the caller.
"""
from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..fileio import require_file
from .schema import AttrSpec, DatasetSpec, Schema, load_schema

SEMVER = re.compile(r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)$")
RESERVED_ATTRS = ("dfkd_type", "dfkd_type_version", "dfkd_ignorable")
BLOCK_BYTES = 16 << 20  # values are read in blocks of at most this many bytes
DEFAULT_TIMEOUT_S = 300.0
SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}


@dataclass(frozen=True)
class Finding:
    severity: str
    rule: str
    section: str
    path: str
    message: str
    fix: str = ""

    def format(self) -> str:
        return f"{self.severity.upper():7} {self.rule} (SPEC §{self.section}) {self.path}: {self.message}"


@dataclass
class Report:
    file: str
    model: str | None = None
    findings: list[Finding] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def valid(self) -> bool:
        return not self.errors

    @property
    def rules(self) -> set[str]:
        return {f.rule for f in self.findings}

    def summary(self) -> str:
        status = "valid" if self.valid else "INVALID"
        info = len(self.findings) - len(self.errors) - len(self.warnings)
        return (f"{self.file}: {status} ({len(self.errors)} errors, {len(self.warnings)} warnings, "
                f"{info} notes)")

    def to_dict(self) -> dict:
        return {"file": self.file, "model": self.model, "valid": self.valid,
                "findings": [asdict(f) for f in self.findings]}

    @classmethod
    def from_dict(cls, d: dict) -> Report:
        return cls(file=d["file"], model=d.get("model"), findings=[Finding(**f) for f in d["findings"]])


class _Fatal(Exception):
    """Stop validating: reading further would be unsafe or meaningless."""


# ---------------------------------------------------------------------------------------------
# value helpers

def _blocks(ds: h5py.Dataset, prefix: tuple[int, ...] = ()) -> Iterator[tuple[tuple[int, ...], np.ndarray]]:
    """Blocks of at most BLOCK_BYTES (one element row at least), with the index of their first element.

    A block is ``ds[prefix + (slice(start, stop),)]``; when even one row of the remaining axes is
    larger than the budget, the next axis is split too, so memory never grows with the file.
    """
    if ds.shape is None:
        return
    if ds.ndim == 0:
        yield (), np.asarray(ds[()])
        return
    shape = ds.shape[len(prefix):]
    row_bytes = max(1, math.prod(shape[1:]) * ds.dtype.itemsize)
    if row_bytes > BLOCK_BYTES and len(shape) > 1:
        for i in range(shape[0]):
            yield from _blocks(ds, prefix + (i,))
        return
    step = max(1, BLOCK_BYTES // row_bytes)
    for start in range(0, shape[0], step):
        yield prefix + (start,), ds[prefix + (slice(start, start + step),)]


def _first_index(mask: np.ndarray, origin: tuple[int, ...]) -> list[int]:
    """Index in the dataset of the first True of a block whose first element sits at ``origin``."""
    idx = [int(i) for i in np.unravel_index(int(np.argmax(mask)), mask.shape)]
    if not origin:
        return idx
    return list(origin[:-1]) + [origin[-1] + idx[0]] + idx[1:]


def _as_str(raw: Any) -> str:
    if isinstance(raw, np.ndarray) and raw.shape == ():
        raw = raw[()]
    if isinstance(raw, (bytes, np.bytes_)):
        return bytes(raw).decode("utf-8")
    if isinstance(raw, str):
        return raw
    raise TypeError


def _coerce(kind: str, raw: Any) -> Any:
    """Attribute value as the schema kind; TypeError/UnicodeDecodeError if it is not that kind."""
    if kind == "str":
        return _as_str(raw)
    if kind in ("int", "float"):
        arr = np.asarray(raw)
        if arr.shape != () or arr.dtype.kind not in ("iu" if kind == "int" else "iuf"):
            raise TypeError
        return int(arr) if kind == "int" else float(arr)
    arr = np.asarray(raw)
    if arr.ndim != 1:
        raise TypeError
    if kind == "str_list":
        return [_as_str(x) for x in arr]
    if arr.size and arr.dtype.kind not in ("iu" if kind == "int_list" else "iuf"):
        raise TypeError
    return [int(x) for x in arr] if kind == "int_list" else [float(x) for x in arr]


def _describe(raw: Any) -> str:
    arr = np.asarray(raw)
    if arr.dtype.kind in "OSU":
        return "a string" if arr.shape == () else f"an array of strings with shape {arr.shape}"
    return f"{arr.dtype} with shape {arr.shape}"


_KIND_TEXT = {"str": "a string", "int": "an integer", "float": "a number",
              "str_list": "a 1-D list of strings", "int_list": "a 1-D list of integers",
              "float_list": "a 1-D list of numbers"}


def _constraint_problems(spec: AttrSpec, value: Any) -> list[str]:
    problems: list[str] = []
    items = value if isinstance(value, list) else [value]
    if spec.min_len is not None or spec.max_len is not None:
        n = len(value)
        what = "entries" if isinstance(value, list) else "characters"
        if spec.min_len is not None and n < spec.min_len:
            problems.append(f"has {n} {what}, needs at least {spec.min_len}")
        if spec.max_len is not None and n > spec.max_len:
            problems.append(f"has {n} {what}, allows at most {spec.max_len}")
    for v in items:
        if spec.enum is not None and v not in spec.enum:
            problems.append(f"{v!r} is not one of {list(spec.enum)}")
        if spec.pattern is not None and isinstance(v, str) and not spec.pattern.match(v):
            problems.append(f"{v!r} does not match {spec.pattern.pattern}")
        if isinstance(v, (int, float)):
            if spec.finite and not math.isfinite(v):
                problems.append(f"{v} is not finite")
            elif spec.min is not None and v < spec.min:
                problems.append(f"{v} is below the minimum {spec.min}")
            elif spec.max is not None and v > spec.max:
                problems.append(f"{v} is above the maximum {spec.max}")
            elif spec.exclusive_min is not None and not v > spec.exclusive_min:
                problems.append(f"{v} must be greater than {spec.exclusive_min}")
            elif spec.exclusive_max is not None and not v < spec.exclusive_max:
                problems.append(f"{v} must be less than {spec.exclusive_max}")
        if problems:
            break
    return problems


def _dtype_matches(want: str, dt: np.dtype) -> bool:
    if want == "str":
        return h5py.check_string_dtype(dt) is not None
    if want == "int64":
        return dt.kind in "iu" and h5py.check_enum_dtype(dt) is None
    return dt.kind == "f" and dt.itemsize == {"float32": 4, "float64": 8}[want]


def _dtype_text(dt: np.dtype) -> str:
    s = h5py.check_string_dtype(dt)
    return "string" if s is not None else str(dt.newbyteorder("="))


def _allowed_dtype(dt: np.dtype) -> bool:
    """SPEC §3.2: integers, floats and strings only."""
    if h5py.check_string_dtype(dt) is not None:
        return True
    if dt.subdtype is not None or dt.names is not None:
        return False
    if dt.kind in "iu":
        return h5py.check_enum_dtype(dt) is None
    return dt.kind == "f" and dt.itemsize <= 8


# ---------------------------------------------------------------------------------------------
# the checker

class _Checker:
    def __init__(self, schema: Schema, path: Path, model: Path | None):
        self.schema = schema
        self.path = path
        self.model = model
        self.findings: list[Finding] = []
        self.f: h5py.File | None = None
        self.kinds: dict[str, str] = {}  # path -> group | dataset | link | other (from the scan)
        self.children: dict[str, list[str]] = {}
        self.tainted: set[str] = set()  # datasets / attributes whose values must not be read
        self.facts: dict[str, Any] = {"layers": {}}
        self.where = "/"
        self.scan_only = False

    # findings --------------------------------------------------------------------------------
    def add(self, rule: str, path: str, message: str) -> None:
        r = self.schema.rules[rule]
        self.findings.append(Finding(r.severity, rule, r.section, path, message, r.fix))

    def errors_under(self, prefix: str) -> bool:
        return any(f.severity == "error" and f.path.startswith(prefix) for f in self.findings)

    def fatal(self, rule: str, path: str, message: str) -> None:
        self.add(rule, path, message)
        raise _Fatal

    # entry -----------------------------------------------------------------------------------
    def run(self) -> list[Finding]:
        try:
            self._run()
        except _Fatal:
            pass
        except (OSError, RuntimeError, KeyError, ValueError, UnicodeError) as exc:
            # libhdf5 reports corrupt or truncated objects through these.
            self.add("DM102", self.where, f"could not read the file here ({type(exc).__name__}: {exc})")
        except Exception as exc:  # a bug in this validator: report it, never crash
            self.add("DM199", self.where, f"{type(exc).__name__}: {exc}")
        finally:
            if self.f is not None:
                try:
                    self.f.close()
                except Exception:
                    pass
        self.findings.sort(key=lambda x: SEVERITY_ORDER[x.severity])
        return self.findings

    def _run(self) -> None:
        size = self.path.stat().st_size
        with open(self.path, "rb") as fh:
            head = fh.read(8)
        if size == 0 or not h5py.is_hdf5(str(self.path)):
            what = "empty" if size == 0 else f"starts with {head!r}"
            self.fatal("DM101", "/", f"not an HDF5 file ({what}, {size} bytes)")
        try:
            self.f = h5py.File(self.path, "r", locking=False)
        except Exception as exc:
            rule = "DM102" if "truncated" in str(exc) else "DM101"
            self.fatal(rule, "/", f"libhdf5 cannot open it ({type(exc).__name__}: {exc})")
        self._scan()
        if self.scan_only:
            return
        if self._check_format_version():
            self._check_group("/", "sidecar", {})
            if self.model is not None:
                self._check_model()

    # §3 container scan: no link is followed, no value is read --------------------------------
    def _scan(self) -> None:
        lim = self.schema.limits
        f = self.f
        seen: dict[int, str] = {}
        total_bytes = 0
        objects = 0
        self.kinds["/"] = "group"
        self._scan_attrs(f, "/")
        seen[h5py.h5o.get_info(f.id).addr] = "/"
        stack: list[tuple[str, h5py.Group, int]] = [("/", f, 0)]
        while stack:
            gpath, grp, depth = stack.pop()
            self.where = gpath
            n = grp.id.get_num_objs()
            if objects + n > lim["max_objects"]:
                self.fatal("DM113", gpath, f"more than {lim['max_objects']} objects in the file")
            names = list(grp.keys())
            self.children[gpath] = names
            for name in names:
                cpath = f"{gpath.rstrip('/')}/{name}"
                self.where = cpath
                objects += 1
                link = grp.get(name, getlink=True)
                if isinstance(link, h5py.ExternalLink):
                    self.kinds[cpath] = "link"
                    self.add("DM104", cpath, f"external link to {link.filename}:{link.path}")
                    continue
                if isinstance(link, h5py.SoftLink):
                    self.kinds[cpath] = "link"
                    self.add("DM105", cpath, f"soft link to {link.path}")
                    continue
                if not isinstance(link, h5py.HardLink):
                    self.kinds[cpath] = "link"
                    self.add("DM106", cpath, f"link of type {type(link).__name__}")
                    continue
                obj = grp[name]
                addr = h5py.h5o.get_info(obj.id).addr
                if addr in seen:
                    self.kinds[cpath] = "link"
                    self.add("DM111", cpath, f"same object as {seen[addr]}")
                    continue
                seen[addr] = cpath
                self._scan_attrs(obj, cpath)
                if isinstance(obj, h5py.Group):
                    if depth + 1 > lim["max_depth"]:
                        self.fatal("DM113", cpath, f"groups nested deeper than {lim['max_depth']}")
                    self.kinds[cpath] = "group"
                    stack.append((cpath, obj, depth + 1))
                elif isinstance(obj, h5py.Dataset):
                    self.kinds[cpath] = "dataset"
                    total_bytes += self._scan_dataset(obj, cpath)
                    if total_bytes > lim["max_total_bytes"]:
                        self.fatal("DM112", cpath, f"datasets declare more than {lim['max_total_bytes']} bytes in all")
                else:
                    self.kinds[cpath] = "other"
                    self.add("DM110", cpath, f"{type(obj).__name__} objects (committed datatypes) are not allowed")

    def _scan_attrs(self, obj, path: str) -> None:
        lim = self.schema.limits
        n = h5py.h5a.get_num_attrs(obj.id)
        if n > lim["max_attributes"]:
            self.fatal("DM113", path, f"{n} attributes, at most {lim['max_attributes']} allowed")
        for name in obj.attrs:
            apath = f"{path}@{name}"
            aid = obj.attrs.get_id(name)
            shape = aid.shape or ()
            if len(shape) > lim["max_rank"]:
                self.fatal("DM113", apath, f"rank {len(shape)}, at most {lim['max_rank']}")
            if not _allowed_dtype(aid.dtype):
                self.tainted.add(apath)
                self.add("DM110", apath, f"attribute of forbidden type {aid.dtype}")
                continue
            nbytes = math.prod(shape) * aid.dtype.itemsize
            if nbytes > lim["max_attribute_bytes"]:
                self.fatal("DM112", apath, f"attribute declares {nbytes} bytes, at most {lim['max_attribute_bytes']}")

    def _scan_dataset(self, ds: h5py.Dataset, path: str) -> int:
        lim = self.schema.limits
        shape = ds.shape or ()
        if len(shape) > lim["max_rank"]:
            self.fatal("DM113", path, f"rank {len(shape)}, at most {lim['max_rank']}")
        declared = math.prod(shape) * ds.dtype.itemsize if ds.shape is not None else 0
        if declared > lim["max_dataset_bytes"]:
            self.fatal("DM112", path, f"declares {declared} bytes, at most {lim['max_dataset_bytes']}")
        dcpl = ds.id.get_create_plist()
        if ds.is_virtual:
            self.tainted.add(path)
            self.add("DM108", path, "virtual dataset (its data lives in other files)")
            return declared
        if dcpl.get_external_count() > 0:
            self.tainted.add(path)
            self.add("DM107", path, f"external storage in {dcpl.get_external(0)[0].decode(errors='replace')!r}")
            return declared
        for i in range(dcpl.get_nfilters()):
            code, _, _, fname = dcpl.get_filter(i)
            if code not in self.schema.allowed_filters:
                self.tainted.add(path)
                self.add("DM109", path, f"filter {code} ({fname.decode(errors='replace') or 'unnamed'})")
                return declared
        if not _allowed_dtype(ds.dtype):
            self.tainted.add(path)
            self.add("DM110", path, f"dataset of forbidden type {ds.dtype}")
            return declared
        stored = ds.id.get_storage_size()
        if declared > (64 << 10) and stored * lim["max_compression_ratio"] < declared:
            self.fatal("DM112", path, f"declares {declared} bytes but stores {stored} "
                                      f"(ratio over {lim['max_compression_ratio']})")
        return declared

    # §5 root version gate ----------------------------------------------------------------------
    def _check_format_version(self) -> bool:
        """DM310 stops everything; returns False then."""
        v = self._read_raw_str("/", "dfkd_meta_version")
        if v is None:
            return True  # the schema pass reports it as missing or malformed
        m = SEMVER.match(v)
        if not m:
            return True
        major, minor = int(m.group(1)), int(m.group(2))
        if major != self.schema.format_major:
            self.add("DM310", "/@dfkd_meta_version",
                     f"format {v}; this validator implements {self.schema.format_major}.x")
            return False
        if minor > self.schema.format_minor:
            self.add("DM311", "/@dfkd_meta_version", f"format {v} is newer than {self.schema.format_version}")
        return True

    def _read_raw_str(self, path: str, name: str) -> str | None:
        obj = self.f[path]
        if name not in obj.attrs or f"{path}@{name}" in self.tainted:
            return None
        try:
            return _as_str(obj.attrs[name])
        except (TypeError, UnicodeDecodeError):
            return None

    # §4 generic, schema-driven checks ------------------------------------------------------------
    def _check_group(self, path: str, tname: str, symbols: dict) -> dict | None:
        self.where = path
        spec = self.schema.types[tname]
        fam = spec.rules
        grp = self.f[path]
        t = self._read_raw_str(path, "dfkd_type")
        v = self._read_raw_str(path, "dfkd_type_version")
        m = SEMVER.match(v) if v is not None else None
        if t is None or m is None:
            self.add("DM201", path, f"needs string attributes dfkd_type ({tname!r}) and dfkd_type_version (SemVer)")
        elif t != tname:
            self.add("DM202", path, f"dfkd_type is {t!r}, SPEC §{spec.section} requires {tname!r} here")
            return None
        elif int(m.group(1)) != spec.major:
            self.add("DM203", path, f"{tname} version {v}; this validator implements {spec.major}.x")
            return None
        elif int(m.group(2)) > spec.minor:
            self.add("DM204", path, f"{tname} version {v} is newer than {spec.version}")

        values = {a.name: self._check_attr(grp, path, a, fam) for a in spec.attrs.values()}
        for name in grp.attrs:
            apath = f"{path}@{name}"
            if name not in spec.attrs and name not in RESERVED_ATTRS and apath not in self.tainted:
                if name.startswith("x_"):
                    self.add("DM206", apath, "unknown ignorable attribute skipped")
                else:
                    self.add("DM205", apath, "unknown attribute (prefix it with x_ if readers may ignore it)")
        sym = {**symbols, **self.facts.get("global_symbols", {}), **_derive_symbols(self, tname, path, values)}
        datasets = {d.name: self._check_dataset(path, d, fam, sym) for d in spec.datasets.values()}
        subgroups: dict[str, dict | None] = {}
        for g in spec.groups.values():
            gpath = f"{path.rstrip('/')}/{g.name}"
            kind = self.kinds.get(gpath)
            if kind is None:
                if g.required:
                    self.add(fam["missing"], gpath, f"required group ({g.type}, SPEC §{self.schema.types[g.type].section}) missing")
            elif kind == "group":
                subgroups[g.name] = self._check_group(gpath, g.type, sym)
            elif kind == "dataset":
                self.add(fam["dtype"], gpath, f"must be a group of type {g.type}, found a dataset")
        known = set(spec.datasets) | set(spec.groups)
        children: dict[str, dict | None] = {}
        for name in self.children.get(path, []):
            if name in known:
                continue
            cpath = f"{path.rstrip('/')}/{name}"
            kind = self.kinds.get(cpath)
            if kind in ("link", "other") or cpath in self.tainted:
                continue  # already reported by the scan
            if spec.children_type and kind == "group" and not (
                    self._ignorable(cpath) and self._read_raw_str(cpath, "dfkd_type") != spec.children_type):
                if not spec.children_pattern.match(name):
                    self.add(fam["value"], cpath, f"name does not match {spec.children_pattern.pattern}")
                children[name] = self._check_group(cpath, spec.children_type, sym)
            else:
                self._unknown_item(cpath)
        ctx = _GroupContext(path, values, datasets, subgroups, children, sym)
        semantic = _SEMANTIC.get(tname)
        if semantic is not None:
            self.where = path
            semantic(self, ctx)
        return values

    def _ignorable(self, path: str) -> bool:
        obj = self.f[path]
        if "dfkd_ignorable" not in obj.attrs or f"{path}@dfkd_ignorable" in self.tainted:
            return False
        try:
            return _coerce("int", obj.attrs["dfkd_ignorable"]) == 1
        except (TypeError, UnicodeDecodeError):
            return False

    def _unknown_item(self, path: str) -> None:
        if self._ignorable(path):
            self.add("DM206", path, "unknown ignorable item skipped")
        else:
            self.add("DM205", path, "unknown item (mark it with dfkd_ignorable=1 if readers may skip it)")

    def _check_attr(self, grp, path: str, spec: AttrSpec, fam: dict) -> Any:
        apath = f"{path}@{spec.name}"
        if spec.name not in grp.attrs:
            if spec.required:
                self.add(fam["missing"], apath, f"required attribute ({_KIND_TEXT[spec.kind]}) missing")
            return None
        if apath in self.tainted:
            return None
        self.where = apath
        raw = grp.attrs[spec.name]
        try:
            value = _coerce(spec.kind, raw)
        except UnicodeDecodeError:
            self.add(fam["dtype"], apath, "string is not valid UTF-8")
            return None
        except TypeError:
            self.add(fam["dtype"], apath, f"must be {_KIND_TEXT[spec.kind]}, found {_describe(raw)}")
            return None
        for s in value if isinstance(value, list) else [value]:
            if isinstance(s, str) and len(s) > self.schema.limits["max_string_chars"]:
                self.add("DM112", apath, f"string of {len(s)} characters, at most {self.schema.limits['max_string_chars']}")
                return None
        problems = _constraint_problems(spec, value)
        if problems:
            self.add(fam["value"], apath, "; ".join(problems))
            return None
        return value

    def _check_dataset(self, path: str, spec: DatasetSpec, fam: dict, sym: dict) -> h5py.Dataset | None:
        dpath = f"{path.rstrip('/')}/{spec.name}"
        kind = self.kinds.get(dpath)
        if kind is None:
            if spec.required:
                self.add(fam["missing"], dpath, f"required dataset ({spec.dtype} {list(spec.shape)}) missing")
            return None
        if kind != "dataset":
            if kind == "group":
                self.add(fam["dtype"], dpath, f"must be a {spec.dtype} dataset, found a group")
            return None
        if dpath in self.tainted:
            return None
        self.where = dpath
        ds = self.f[dpath]
        if not _dtype_matches(spec.dtype, ds.dtype):
            self.add(fam["dtype"], dpath, f"dtype {_dtype_text(ds.dtype)}, SPEC requires {spec.dtype}")
            return None
        shape = ds.shape or ()
        if len(shape) != len(spec.shape):
            self.add(fam["shape"], dpath, f"shape {shape}, SPEC requires {_shape_text(spec.shape, sym)}")
            return None
        free: dict[str, int] = {}
        for dim, s in zip(shape, spec.shape):
            if s.isdigit():
                want = int(s)
            elif sym.get(s) is not None or s in free:
                want = sym.get(s, free.get(s))
            elif s in _DEFINED_SYMBOLS:
                continue  # its source attribute is invalid and already reported
            else:  # a free symbol (such as R) is bound by its first use and must be positive
                free[s] = dim
                want = dim if dim >= 1 else 1
            if dim != want:
                self.add(fam["shape"], dpath, f"shape {shape}, SPEC requires {_shape_text(spec.shape, sym)}")
                return None
        sym.update(free)
        if spec.dtype != "str":
            self._value_checks(ds, dpath, spec.checks)
        return ds

    def _value_checks(self, ds: h5py.Dataset, path: str, checks: dict[str, str]) -> None:
        if not checks:
            return
        bad = {name: [0, None] for name in checks}
        for offset, block in _blocks(ds):
            tests = {}
            if "finite" in checks and block.dtype.kind == "f":
                tests["finite"] = ~np.isfinite(block)
            if "nonnegative" in checks:
                tests["nonnegative"] = block < 0  # NaN compares False: reported by finite
            for name, mask in tests.items():
                n = int(np.count_nonzero(mask))
                if n:
                    if bad[name][1] is None:
                        bad[name][1] = _first_index(mask, offset)
                    bad[name][0] += n
        for name, (n, first) in bad.items():
            if n:
                what = "non-finite (NaN or Inf)" if name == "finite" else "negative"
                self.add(checks[name], path, f"{n} {what} values, first at {first}")

    # §6.2 / §8.4 / §9.3 checks against the model -----------------------------------------------------
    def _check_model(self) -> None:
        from . import model_checks  # imports onnx: only when a model is given

        model_checks.check_against_model(self, self.model)


@dataclass
class _GroupContext:
    path: str
    attrs: dict[str, Any]  # validated attribute values; None where invalid or absent
    datasets: dict[str, h5py.Dataset | None]  # datasets that passed dtype and shape checks
    groups: dict[str, dict | None]
    children: dict[str, dict | None]
    symbols: dict[str, int]


_DEFINED_SYMBOLS = ("C", "U", "CH", "K", "N")


def _shape_text(shape: tuple[str, ...], sym: dict) -> str:
    return "(" + ", ".join(f"{s}={sym[s]}" if s in sym and sym[s] is not None else s for s in shape) + ")"


def _derive_symbols(chk: _Checker, tname: str, path: str, a: dict) -> dict:
    """Shape symbols an element defines from its own (validated) attributes."""
    if tname == "model_binding" and a.get("num_classes") is not None:
        chk.facts["global_symbols"] = {"C": a["num_classes"]}
        return {"C": a["num_classes"]}
    if tname == "layer_stats" and a.get("shape") is not None:
        return {"U": math.prod(a["shape"]), "CH": a["shape"][0]}
    if tname == "spectral_stats":
        out: dict[str, int | None] = {"K": a.get("k"), "N": None}
        layers = chk.facts["layers"]
        if a.get("layers") and all(k in layers and layers[k]["units"] for k in a["layers"]):
            out["N"] = sum(layers[k]["units"] for k in a["layers"])
        return out
    return {}


# ---------------------------------------------------------------------------------------------
# semantic rules, one function per element type (registry)

_SEMANTIC: dict[str, Any] = {}


def _semantic(tname: str):
    def register(fn):
        _SEMANTIC[tname] = fn
        return fn
    return register


@_semantic("model_binding")
def _model_binding(chk: _Checker, ctx: _GroupContext) -> None:
    a, p = ctx.attrs, ctx.path
    chk.facts["model"] = a
    paths, hashes = a.get("external_data_paths"), a.get("external_data_sha256")
    if (paths is None) != (hashes is None) or (paths is not None and len(paths) != len(hashes)):
        chk.add("DM411", f"{p}@external_data_sha256", "external_data_paths and external_data_sha256 differ in length")
    for rel in paths or []:
        parts = rel.replace("\\", "/").split("/")
        if not rel or rel.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
            chk.add("DM410", f"{p}@external_data_paths", f"{rel!r} is not a path inside the model's folder")
    if paths and len(set(paths)) != len(paths):
        chk.add("DM410", f"{p}@external_data_paths", "a file is listed twice")
    dom, ver = a.get("opset_domains"), a.get("opset_versions")
    if dom is not None and ver is not None and len(dom) != len(ver):
        chk.add("DM411", f"{p}@opset_versions", f"{len(dom)} domains but {len(ver)} versions")
    shape = a.get("input_shape")
    if shape is not None and (shape[0] != -1 or any(d < 1 for d in shape[1:])):
        chk.add("DM414", f"{p}@input_shape", f"{shape}: the first entry must be -1, the others >= 1")
    if shape is not None:
        _input_domain_against_shape(chk, shape)


@_semantic("input_domain")
def _input_domain(chk: _Checker, ctx: _GroupContext) -> None:
    a, p = ctx.attrs, ctx.path
    lo, hi = a.get("value_min"), a.get("value_max")
    if lo is not None and hi is not None and not lo < hi:
        chk.add("DM413", f"{p}@value_max", f"value_min {lo} is not below value_max {hi}")
    mean, std = a.get("norm_mean"), a.get("norm_std")
    if std is not None and any(s <= 0 for s in std):
        chk.add("DM413", f"{p}@norm_std", f"{std}: every entry must be > 0")
    if mean is not None and std is not None and len(mean) != len(std):
        chk.add("DM413", f"{p}@norm_std", f"norm_mean has {len(mean)} entries, norm_std {len(std)}")
    # checked against the binding's input_shape once /model's own attributes are known (_model_binding)
    chk.facts["input_domain"] = {**a, "path": p,
                                 "image_shape": (ctx.groups.get("convention") or {}).get("image_shape")}


def _input_domain_against_shape(chk: _Checker, shape: list[int]) -> None:
    dom = chk.facts.get("input_domain") or {}
    p, layout, mean, std = dom.get("path"), dom.get("layout"), dom.get("norm_mean"), dom.get("norm_std")
    if layout is None:
        return
    if len(layout) != len(shape):
        chk.add("DM413", f"{p}@layout", f"layout {layout} has rank {len(layout)}, input_shape {shape} rank {len(shape)}")
        return
    channels = shape[-1] if layout == "NHWC" else shape[1]
    for name, lst in (("norm_mean", mean), ("norm_std", std)):
        if lst is not None and len(lst) not in (1, channels):
            chk.add("DM413", f"{p}@{name}", f"{len(lst)} entries; needs 1 or the channel count {channels}")
    image = dom.get("image_shape")
    if image is not None:
        if layout != "NC":
            chk.add("DM413", f"{p}/convention@image_shape", f"only a flat input (layout NC) records the image it "
                                                             f"flattens; the layout is {layout}")
        elif math.prod(image) != shape[1]:
            chk.add("DM413", f"{p}/convention@image_shape", f"{image} has {math.prod(image)} values, the input "
                                                             f"{shape[1]}")


def _dataset_provenance(chk: _Checker, ctx: _GroupContext) -> None:
    ds, n = ctx.datasets.get("class_counts"), ctx.attrs.get("sample_count")
    if ds is None:
        return
    counts = np.asarray(ds[()], dtype=np.int64)
    chk.facts["class_counts"] = counts
    if n is not None and int(counts.sum()) != n:
        chk.add("DM510", f"{ctx.path}/class_counts", f"sum {int(counts.sum())} != sample_count {n}")


@_semantic("dataset_provenance")
def _dataset_provenance_rules(chk: _Checker, ctx: _GroupContext) -> None:
    _dataset_provenance(chk, ctx)
    tc, n = ctx.groups.get("teacher_check"), ctx.attrs.get("sample_count")
    if not tc:
        return
    p = f"{ctx.path}/teacher_check"
    if tc.get("samples") is not None and n is not None and tc["samples"] > n:
        chk.add("DM521", f"{p}@samples", f"{tc['samples']} samples, but the statistics saw {n}")
    acc, floor, forced = tc.get("accuracy"), tc.get("min_accuracy"), tc.get("forced")
    if acc is None or floor is None or forced is None or acc >= floor:
        return
    if forced:
        chk.add("DM520", f"{p}@accuracy", f"the teacher was right on {acc:.1%} of the export data, below the "
                                          f"threshold {floor:.1%}; the publisher forced the export")
    else:
        chk.add("DM521", f"{p}@forced", f"accuracy {acc:.1%} is below min_accuracy {floor:.1%} but forced is 0")


@_semantic("layer_stats")
def _layer_stats(chk: _Checker, ctx: _GroupContext) -> None:
    a, p = ctx.attrs, ctx.path
    kind, temp = a.get("kind"), a.get("temperature")
    has_temp = "temperature" in chk.f[p].attrs
    if kind == "logits" and not has_temp:
        chk.add("DM613", f"{p}@temperature", "a logits layer needs @temperature > 0")
    elif kind in ("pre_activation", "post_activation") and has_temp:
        chk.add("DM613", f"{p}@temperature", f"a {kind} layer must not carry @temperature")
    shape = a.get("shape")
    if "channel" in ctx.groups and shape is not None and len(shape) < 2:
        chk.add("DM617", f"{p}/channel", f"layer shape {shape} has no channel axis")
    count = ctx.datasets.get("count")
    chk.facts["layers"][p.rsplit("/", 1)[1]] = {
        "order": a.get("order"), "tensor_name": a.get("tensor_name"), "kind": kind, "shape": shape,
        "units": math.prod(shape) if shape else None, "temperature": temp,
        "count": np.asarray(count[()], dtype=np.int64) if count is not None else None,
    }
    cov, std = ctx.datasets.get("cov_factors"), ctx.datasets.get("std")
    if cov is not None and std is not None:
        worst, where = 0.0, None
        step = max(1, BLOCK_BYTES // (8 * max(1, cov.shape[2])))  # [units, R] slabs in float64, bounded in size
        for c, u0 in ((c, u0) for c in range(cov.shape[0]) for u0 in range(0, cov.shape[1], step)):
            f = np.asarray(cov[c, u0:u0 + step], dtype=np.float64)
            var = np.asarray(std[c, u0:u0 + step], dtype=np.float64) ** 2
            excess = (f * f).sum(axis=1) - (var * (1 + 1e-3) + 1e-6)
            if excess.max(initial=-1.0) > worst:
                worst, where = float(excess.max()), [c, u0 + int(np.argmax(excess))]
        if where is not None:
            chk.add("DM616", f"{p}/cov_factors", f"rowsum(F*F) exceeds std^2 by {worst:.3g} at {where}")


@_semantic("layer_list")
def _layer_list(chk: _Checker, ctx: _GroupContext) -> None:
    layers = {k: v for k, v in chk.facts["layers"].items() if ctx.children.get(k) is not None}
    if not ctx.children:
        chk.add("DM610", ctx.path, "no layer groups")
    for field_ in ("tensor_name", "order"):
        seen: dict[Any, str] = {}
        for key, info in layers.items():
            v = info[field_]
            if v is None:
                continue
            if v in seen:
                chk.add("DM614", f"{ctx.path}/{key}@{field_}", f"{v!r} is also used by layer {seen[v]!r}")
            seen.setdefault(v, key)
    counts = chk.facts.get("class_counts")
    for key, info in layers.items():
        c = info["count"]
        if counts is not None and c is not None and c.shape == counts.shape and (c > counts).any():
            i = int(np.argmax(c > counts))
            chk.add("DM615", f"{ctx.path}/{key}/count", f"class {i}: {int(c[i])} examples, dataset has {int(counts[i])}")


@_semantic("spectral_stats")
def _spectral_stats(chk: _Checker, ctx: _GroupContext) -> None:
    a, p, sym = ctx.attrs, ctx.path, ctx.symbols
    layers = chk.facts["layers"]
    refs = a.get("layers")
    # validated values (None where invalid) for the checks against the model
    chk.facts.setdefault("spectral", {})[p] = {"layers": refs, "weight_tensors": a.get("weight_tensors")}
    ordered = sorted((v["order"], k) for k, v in layers.items() if v["order"] is not None)
    keys_in_order = [k for _, k in ordered]
    if refs is not None:
        unknown = [r for r in refs if r not in layers]
        if unknown:
            chk.add("DM710", f"{p}@layers", f"unknown layers {unknown}; /layers has {sorted(layers)}")
        elif [k for k in keys_in_order if k in refs] != refs or len(set(refs)) != len(refs):
            chk.add("DM710", f"{p}@layers", f"{refs} are not in increasing @order")
        elif a.get("scope") == "all_layers" and refs != keys_in_order:
            chk.add("DM715", f"{p}@layers", f"all_layers must list every layer in order: {keys_in_order}")
        elif a.get("scope") == "layer_pair" and (
                len(refs) != 2 or keys_in_order.index(refs[1]) != keys_in_order.index(refs[0]) + 1):
            chk.add("DM715", f"{p}@layers", f"layer_pair needs two adjacent layers, got {refs}")
        if refs and len(refs) > 1 and a.get("weight_tensors") == []:
            chk.add("DM704", f"{p}@weight_tensors", "empty, but the graph spans several layers")
    k, n = sym.get("K"), sym.get("N")
    if k is not None and n is not None and k > n:
        chk.add("DM704", f"{p}@k", f"k={k} exceeds the number of graph nodes N={n}")
    ev = ctx.datasets.get("eigenvalues")
    if ev is not None:
        lam = np.asarray(ev[()], dtype=np.float64)
        if np.isfinite(lam).all():
            if lam.size and (lam.min() < -1e-6 or lam.max() > 2 + 1e-6):
                chk.add("DM712", f"{p}/eigenvalues", f"range [{lam.min():.6g}, {lam.max():.6g}] outside [0, 2]")
            elif (np.diff(lam) < 0).any():
                chk.add("DM712", f"{p}/eigenvalues", f"not ascending (first drop at {int(np.argmax(np.diff(lam) < 0))})")
    basis = ctx.datasets.get("basis")
    if basis is not None and basis.ndim == 2:
        gram = np.zeros((basis.shape[1], basis.shape[1]))
        finite = True
        for _, block in _blocks(basis):
            b = block.astype(np.float64)
            finite &= bool(np.isfinite(b).all())
            gram += b.T @ b
        if finite:
            err = float(np.abs(gram - np.eye(gram.shape[0])).max(initial=0.0))
            if err > 1e-3:
                chk.add("DM713", f"{p}/basis", f"max |V^T V - I| = {err:.3g} (allowed 1e-3)")


@_semantic("privacy")
def _privacy(chk: _Checker, ctx: _GroupContext) -> None:
    a = ctx.attrs
    if a.get("mechanism") == "laplace" and a.get("delta") not in (None, 0.0):
        chk.add("DM804", f"{ctx.path}@delta", f"delta must be 0 for the laplace mechanism, got {a['delta']}")


# ---------------------------------------------------------------------------------------------
# public entry points

def disable_hdf5_plugins() -> None:
    """Remove every filter-plugin search path so no third-party code can be loaded by a file."""
    while h5py.h5pl.size():
        h5py.h5pl.remove(0)


def validate_in_process(path: str | os.PathLike, model: str | os.PathLike | None = None) -> Report:
    """Validate in this process. Safe against everything but libhdf5 crashes; prefer validate()."""
    p = require_file(path, "sidecar")
    m = require_file(model, "model") if model is not None else None
    disable_hdf5_plugins()
    findings = _Checker(load_schema(), p, m).run()
    return Report(file=str(path), model=str(model) if model is not None else None, findings=findings)


def scan_container(path: str | os.PathLike) -> list[Finding]:
    """Only the container rules of SPEC §3 (links, storage, filters, types, sizes), for any HDF5 file
    this package reads (transfer sets too). Plugins are disabled first."""
    disable_hdf5_plugins()
    checker = _Checker(load_schema(), require_file(path, "file"), None)
    checker.scan_only = True
    return checker.run()


def validate(path: str | os.PathLike, model: str | os.PathLike | None = None, *,
             isolate: bool = True, timeout: float = DEFAULT_TIMEOUT_S) -> Report:
    """Validate a sidecar (and, given the model file, its binding). Returns a Report.

    With ``isolate`` (the default) the file is read in a child process with HDF5 plugins
    disabled, so a libhdf5 crash or hang is reported as finding DM103 instead of killing the
    caller. Raises UsageError only when a path does not name a readable regular file.
    """
    require_file(path, "sidecar")
    if model is not None:
        require_file(model, "model")
    if not isolate:
        return validate_in_process(path, model)
    cmd = _worker_command(path, model)
    env = {**os.environ, "HDF5_PLUGIN_PRELOAD": "::", "HDF5_PLUGIN_PATH": ""}
    # the child must import this very package, also when the caller found it through sys.path alone
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])
    report = Report(file=str(path), model=str(model) if model is not None else None)
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL,
                              preexec_fn=_child_limits if os.name == "posix" else None)
    except subprocess.TimeoutExpired:
        report.findings.append(_dm103(f"reading the file took longer than {timeout:g} s"))
        return report
    if proc.returncode == 0:
        try:
            return Report.from_dict(json.loads(proc.stdout))
        except (ValueError, KeyError, TypeError) as exc:
            report.findings.append(_dm103(f"the validator process returned no report ({exc})"))
            return report
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name if -proc.returncode in signal.valid_signals() else "?"
        why = f"the reading process was killed by signal {-proc.returncode} ({name})"
    else:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
        why = f"the reading process failed with exit code {proc.returncode}: {tail[0]}"
    report.findings.append(_dm103(why))
    return report


def _worker_command(path: str | os.PathLike, model: str | os.PathLike | None) -> list[str]:
    cmd = [sys.executable, "-m", "dfkd_meta.sidecar._worker", os.fspath(path)]
    return cmd + ["--model", os.fspath(model)] if model is not None else cmd


def _child_limits() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash must not litter core files


def finding(rule: str, path: str, message: str) -> Finding:
    """A finding of ``rule`` (severity, section and fix from the schema's rule table)."""
    r = load_schema().rules[rule]
    return Finding(r.severity, r.id, r.section, path, message, r.fix)


def _dm103(message: str) -> Finding:
    return finding("DM103", "/", message)
