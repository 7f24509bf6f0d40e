"""SPEC §3: scan an untrusted HDF5 container before any value is read.

No link is followed and no value is read: links, external storage, virtual datasets, filters and
datatypes are recognised from metadata, and declared sizes and structure are checked against the
schema's limits. Every HDF5 file this package reads (sidecars, transfer sets) goes through it.
"""
from __future__ import annotations

import math
import os

import h5py

from ..fileio import require_file
from .report import SEVERITY_ORDER, Finding
from .schema import load_schema
from .state import Fatal, ValidationState
from .values import allowed_dtype


def disable_hdf5_plugins() -> None:
    """Remove every filter-plugin search path so no third-party code can be loaded by a file."""
    while h5py.h5pl.size():
        h5py.h5pl.remove(0)


def open_file(state: ValidationState) -> None:
    """DM101/DM102: open the file read-only (plugins disabled), or stop."""
    disable_hdf5_plugins()
    size = state.path.stat().st_size
    with open(state.path, "rb") as fh:
        head = fh.read(8)
    if size == 0 or not h5py.is_hdf5(str(state.path)):
        what = "empty" if size == 0 else f"starts with {head!r}"
        state.fatal("DM101", "/", f"not an HDF5 file ({what}, {size} bytes)")
    try:
        state.file = h5py.File(state.path, "r", locking=False)
    except Exception as exc:
        rule = "DM102" if "truncated" in str(exc) else "DM101"
        state.fatal(rule, "/", f"libhdf5 cannot open it ({type(exc).__name__}: {exc})")


def scan(state: ValidationState) -> None:
    """Walk every object once, recording kinds and children; stop at the first unsafe limit."""
    lim = state.schema.limits
    f = state.file
    seen: dict[int, str] = {}
    total_bytes = 0
    objects = 0
    state.kinds["/"] = "group"
    _scan_attrs(state, f, "/")
    seen[h5py.h5o.get_info(f.id).addr] = "/"
    stack: list[tuple[str, h5py.Group, int]] = [("/", f, 0)]
    while stack:
        gpath, grp, depth = stack.pop()
        state.where = gpath
        n = grp.id.get_num_objs()
        if objects + n > lim["max_objects"]:
            state.fatal("DM113", gpath, f"more than {lim['max_objects']} objects in the file")
        names = list(grp.keys())
        state.children[gpath] = [n for n in names if _text_name(state, gpath, n)]
        for name in names:
            objects += 1
            if not isinstance(name, str):
                continue  # reported by _text_name; such an object is never read
            cpath = f"{gpath.rstrip('/')}/{name}"
            state.where = cpath
            link = grp.get(name, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                state.kinds[cpath] = "link"
                state.add("DM104", cpath, f"external link to {link.filename}:{link.path}")
                continue
            if isinstance(link, h5py.SoftLink):
                state.kinds[cpath] = "link"
                state.add("DM105", cpath, f"soft link to {link.path}")
                continue
            if not isinstance(link, h5py.HardLink):
                state.kinds[cpath] = "link"
                state.add("DM106", cpath, f"link of type {type(link).__name__}")
                continue
            obj = grp[name]
            addr = h5py.h5o.get_info(obj.id).addr
            if addr in seen:
                state.kinds[cpath] = "link"
                state.add("DM111", cpath, f"same object as {seen[addr]}")
                continue
            seen[addr] = cpath
            _scan_attrs(state, obj, cpath)
            if isinstance(obj, h5py.Group):
                if depth + 1 > lim["max_depth"]:
                    state.fatal("DM113", cpath, f"groups nested deeper than {lim['max_depth']}")
                state.kinds[cpath] = "group"
                stack.append((cpath, obj, depth + 1))
            elif isinstance(obj, h5py.Dataset):
                state.kinds[cpath] = "dataset"
                total_bytes += _scan_dataset(state, obj, cpath)
                if total_bytes > lim["max_total_bytes"]:
                    state.fatal("DM112", cpath, f"datasets declare more than {lim['max_total_bytes']} bytes in all")
            else:
                state.kinds[cpath] = "other"
                state.add("DM110", cpath, f"{type(obj).__name__} objects (committed datatypes) are not allowed")
    if state.bounds is not None:
        state.bounds.declared(total_bytes)  # reading what the file declares may take longer than its size says


def _text_name(state: ValidationState, parent: str, name, attribute: bool = False) -> bool:
    """DM117: names are UTF-8 text (libhdf5 stores bytes; h5py hands back those it cannot decode as bytes)."""
    if isinstance(name, str) and "\x00" not in name:
        return True
    shown = name.decode("utf-8", "backslashreplace") if isinstance(name, bytes) else str(name)
    where = f"{parent}@{shown}" if attribute else f"{parent.rstrip('/')}/{shown}"
    state.add("DM117", where, f"{'attribute' if attribute else 'object'} name {name!r} is not UTF-8 text")
    return False


def _type_text(dtype, tid) -> str:
    if dtype is not None:
        return str(dtype)
    classes = {getattr(h5py.h5t, k): k.lower() for k in ("INTEGER", "FLOAT", "TIME", "STRING", "BITFIELD", "OPAQUE",
                                                          "COMPOUND", "REFERENCE", "ENUM", "VLEN", "ARRAY")}
    return f"{classes.get(tid.get_class(), tid.get_class())} (no NumPy equivalent)"


def _numpy_dtype(obj):
    """The NumPy dtype of an attribute or dataset, or None where there is none (time, unknown string encodings)."""
    try:
        return obj.dtype
    except (TypeError, ValueError, KeyError):
        return None


def _scan_attrs(state: ValidationState, obj, path: str) -> None:
    lim = state.schema.limits
    n = h5py.h5a.get_num_attrs(obj.id)
    if n > lim["max_attributes"]:
        state.fatal("DM113", path, f"{n} attributes, at most {lim['max_attributes']} allowed")
    for name in obj.attrs:
        if not _text_name(state, path, name, attribute=True):
            continue
        apath = f"{path}@{name}"
        aid = obj.attrs.get_id(name)
        shape = aid.shape or ()
        if len(shape) > lim["max_rank"]:
            state.fatal("DM113", apath, f"rank {len(shape)}, at most {lim['max_rank']}")
        dtype = _numpy_dtype(aid)
        if dtype is None or not allowed_dtype(dtype):
            state.tainted.add(apath)
            state.add("DM110", apath, f"attribute of forbidden type {_type_text(dtype, aid.get_type())}")
            continue
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes > lim["max_attribute_bytes"]:
            state.fatal("DM112", apath, f"attribute declares {nbytes} bytes, at most {lim['max_attribute_bytes']}")


def _scan_dataset(state: ValidationState, ds: h5py.Dataset, path: str) -> int:
    lim = state.schema.limits
    shape = ds.shape or ()
    if len(shape) > lim["max_rank"]:
        state.fatal("DM113", path, f"rank {len(shape)}, at most {lim['max_rank']}")
    declared = math.prod(shape) * ds.id.get_type().get_size() if ds.shape is not None else 0
    if declared > lim["max_dataset_bytes"]:
        state.fatal("DM112", path, f"declares {declared} bytes, at most {lim['max_dataset_bytes']}")
    dcpl = ds.id.get_create_plist()
    if ds.is_virtual:
        state.tainted.add(path)
        state.add("DM108", path, "virtual dataset (its data lives in other files)")
        return declared
    if dcpl.get_external_count() > 0:
        state.tainted.add(path)
        state.add("DM107", path, f"external storage in {dcpl.get_external(0)[0].decode(errors='replace')!r}")
        return declared
    for i in range(dcpl.get_nfilters()):
        code, _, _, fname = dcpl.get_filter(i)
        if code not in state.schema.allowed_filters:
            state.tainted.add(path)
            state.add("DM109", path, f"filter {code} ({fname.decode(errors='replace') or 'unnamed'})")
            return declared
    dtype = _numpy_dtype(ds)
    if dtype is None or not allowed_dtype(dtype):
        state.tainted.add(path)
        state.add("DM110", path, f"dataset of forbidden type {_type_text(dtype, ds.id.get_type())}")
        return declared
    stored = ds.id.get_storage_size()
    if declared > (64 << 10) and stored * lim["max_compression_ratio"] < declared:
        state.fatal("DM112", path, f"declares {declared} bytes but stores {stored} "
                                   f"(ratio over {lim['max_compression_ratio']})")
    return declared


def run_guarded(state: ValidationState, body) -> list[Finding]:
    """Run ``body(state)``; turn stops, libhdf5 read errors and validator bugs into findings, close the file."""
    try:
        body(state)
    except Fatal:
        pass
    except (OSError, RuntimeError, KeyError, ValueError, UnicodeError) as exc:
        # libhdf5 reports corrupt or truncated objects through these.
        state.add("DM102", state.where, f"could not read the file here ({type(exc).__name__}: {exc})")
    except Exception as exc:  # a bug in this validator: report it, never crash
        state.add("DM199", state.where, f"{type(exc).__name__}: {exc}")
    finally:
        if state.file is not None:
            try:
                state.file.close()
            except Exception:
                pass
    state.findings.sort(key=lambda x: SEVERITY_ORDER[x.severity])
    return state.findings


def scan_container(path: str | os.PathLike) -> list[Finding]:
    """Only the container rules of SPEC §3 (links, storage, filters, types, sizes), for any HDF5 file
    this package reads (transfer sets too). Plugins are disabled first."""
    state = ValidationState(load_schema(), require_file(path, "file"))
    return run_guarded(state, lambda s: (open_file(s), scan(s)))
