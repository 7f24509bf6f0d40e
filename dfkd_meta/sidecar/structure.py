"""SPEC §4-§10, structurally: every typed group checked against its schema type (items, kinds, dtypes,
shapes, value constraints, unknown items), then the semantic rules registered for its type.

Groups are checked depth first; a group's rules run after its subgroups and children, so a rule
sees the values that passed below it (``ValidationState.values``).
"""
from __future__ import annotations

import math
import re
from typing import Any

import h5py
import numpy as np

from . import values
from .rules import run_rules
from .schema import SCHEMA_FILES, AttrSpec, DatasetSpec, is_package_schema, package_schema_for
from .state import GroupContext, ValidationState

SEMVER = re.compile(r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)$")
RESERVED_ATTRS = ("dfkd_type", "dfkd_type_version", "dfkd_ignorable")
DEFINED_SYMBOLS = ("C", "U", "CH", "K", "N")


# shape symbols an element defines from its own validated attributes (SPEC §4.2) -----------------

def _layer_symbols(state: ValidationState, path: str, a: dict) -> dict:
    return {"U": math.prod(a["shape"]), "CH": a["shape"][0]} if a.get("shape") is not None else {}


def _spectral_symbols(state: ValidationState, path: str, a: dict) -> dict:
    out: dict[str, int | None] = {"K": a.get("k"), "N": None}
    shapes = [state.group_values(f"/layers/{k}").get("shape") for k in a.get("layers") or []]
    if shapes and all(s is not None for s in shapes):
        out["N"] = sum(math.prod(s) for s in shapes)
    return out


def _binding_symbols(state: ValidationState, path: str, a: dict) -> dict:
    return {"C": a["num_classes"]} if a.get("num_classes") is not None else {}


SYMBOLS = {"model_binding": _binding_symbols, "layer_stats": _layer_symbols, "spectral_stats": _spectral_symbols}
GLOBAL_SYMBOLS = ("C",)  # defined once (by /model) and valid in every element


def check_format_version(state: ValidationState) -> bool:
    """SPEC §5 version gate: DM310 stops everything (returns False), DM311 informs."""
    v = read_raw_str(state, "/", "dfkd_meta_version")
    if v is None:
        return True  # the structural pass reports it as missing or malformed
    m = SEMVER.match(v)
    if not m:
        return True
    major, minor = int(m.group(1)), int(m.group(2))
    schema = state.schema
    if major != schema.format_major and is_package_schema(schema) and package_schema_for(major) is not None:
        schema = state.schema = package_schema_for(major)  # an older MAJOR this package still reads: its own rules
    if major != schema.format_major:
        known = "/".join(f"{m}.x" for m in sorted(SCHEMA_FILES)) if is_package_schema(schema) \
            else f"{schema.format_major}.x"
        state.add("DM310", "/@dfkd_meta_version", f"format {v}; this validator implements {known}")
        return False
    if minor > schema.format_minor:
        state.add("DM311", "/@dfkd_meta_version", f"format {v} is newer than {schema.format_version}")
    return True


def read_raw_str(state: ValidationState, path: str, name: str) -> str | None:
    obj = state.file[path]
    if name not in obj.attrs or f"{path}@{name}" in state.tainted:
        return None
    try:
        return values.as_str(obj.attrs[name])
    except (TypeError, UnicodeDecodeError):
        return None


def check_group(state: ValidationState, path: str, tname: str, symbols: dict) -> dict | None:
    """Check the group at ``path`` as type ``tname``; returns its validated attributes (None if mistyped)."""
    state.where = path
    spec = state.schema.types[tname]
    fam = spec.rules
    grp = state.file[path]
    t = read_raw_str(state, path, "dfkd_type")
    v = read_raw_str(state, path, "dfkd_type_version")
    m = SEMVER.match(v) if v is not None else None
    if t is None or m is None:
        state.add("DM201", path, f"needs string attributes dfkd_type ({tname!r}) and dfkd_type_version (SemVer)")
    elif t != tname:
        state.add("DM202", path, f"dfkd_type is {t!r}, SPEC §{spec.section} requires {tname!r} here")
        return None
    elif int(m.group(1)) != spec.major:
        state.add("DM203", path, f"{tname} version {v}; this validator implements {spec.major}.x")
        return None
    elif int(m.group(2)) > spec.minor:
        state.add("DM204", path, f"{tname} version {v} is newer than {spec.version}")

    attrs = {a.name: _check_attr(state, grp, path, a, fam) for a in spec.attrs.values()}
    for name in grp.attrs:
        if not isinstance(name, str):
            continue  # DM117, from the scan
        apath = f"{path}@{name}"
        if name not in spec.attrs and name not in RESERVED_ATTRS and apath not in state.tainted:
            if name.startswith("x_"):
                state.add("DM206", apath, "unknown ignorable attribute skipped")
            else:
                state.add("DM205", apath, "unknown attribute (prefix it with x_ if readers may ignore it)")
    state.values[path], state.types[path] = attrs, tname
    derive = SYMBOLS.get(tname)
    own = derive(state, path, attrs) if derive else {}
    sym = {**symbols, **own}
    state.global_symbols.update({k: v for k, v in own.items() if k in GLOBAL_SYMBOLS})
    sym.update(state.global_symbols)
    datasets = {d.name: _check_dataset(state, path, d, fam, sym) for d in spec.datasets.values()}
    subgroups: dict[str, dict | None] = {}
    for g in spec.groups.values():
        gpath = f"{path.rstrip('/')}/{g.name}"
        kind = state.kinds.get(gpath)
        if kind is None:
            if g.required:
                state.add(fam["missing"], gpath,
                          f"required group ({g.type}, SPEC §{state.schema.types[g.type].section}) missing")
        elif kind == "group":
            subgroups[g.name] = check_group(state, gpath, g.type, sym)
        elif kind == "dataset":
            state.add(fam["dtype"], gpath, f"must be a group of type {g.type}, found a dataset")
    known = set(spec.datasets) | set(spec.groups)
    children: dict[str, dict | None] = {}
    for name in state.children.get(path, []):
        if name in known:
            continue
        cpath = f"{path.rstrip('/')}/{name}"
        kind = state.kinds.get(cpath)
        if kind in ("link", "other") or cpath in state.tainted:
            continue  # already reported by the scan
        if spec.children_type and kind == "group" and not (
                _ignorable(state, cpath) and read_raw_str(state, cpath, "dfkd_type") != spec.children_type):
            if not spec.children_pattern.match(name):
                state.add(fam["value"], cpath, f"name does not match {spec.children_pattern.pattern}")
            children[name] = check_group(state, cpath, spec.children_type, sym)
        else:
            _unknown_item(state, cpath)
    state.where = path
    run_rules(GroupContext(state, path, tname, attrs, datasets, subgroups, children, sym))
    return attrs


def _ignorable(state: ValidationState, path: str) -> bool:
    obj = state.file[path]
    if "dfkd_ignorable" not in obj.attrs or f"{path}@dfkd_ignorable" in state.tainted:
        return False
    try:
        return values.coerce("int", obj.attrs["dfkd_ignorable"]) == 1
    except (TypeError, UnicodeDecodeError):
        return False


def _unknown_item(state: ValidationState, path: str) -> None:
    if _ignorable(state, path):
        state.add("DM206", path, "unknown ignorable item skipped")
    else:
        state.add("DM205", path, "unknown item (mark it with dfkd_ignorable=1 if readers may skip it)")


def _check_attr(state: ValidationState, grp, path: str, spec: AttrSpec, fam: dict) -> Any:
    apath = f"{path}@{spec.name}"
    if spec.name not in grp.attrs:
        if spec.required:
            state.add(fam["missing"], apath, f"required attribute ({values.KIND_TEXT[spec.kind]}) missing")
        return None
    if apath in state.tainted:
        return None
    state.where = apath
    raw = grp.attrs[spec.name]
    try:
        value = values.coerce(spec.kind, raw)
    except UnicodeDecodeError:
        state.add(fam["dtype"], apath, "string is not valid UTF-8")
        return None
    except TypeError:
        state.add(fam["dtype"], apath, f"must be {values.KIND_TEXT[spec.kind]}, found {values.describe(raw)}")
        return None
    limit = state.schema.limits["max_string_chars"]
    for s in value if isinstance(value, list) else [value]:
        if isinstance(s, str) and len(s) > limit:
            state.add("DM112", apath, f"string of {len(s)} characters, at most {limit}")
            return None
    problems = values.constraint_problems(spec, value)
    if problems:
        state.add(fam["value"], apath, "; ".join(problems))
        return None
    return value


def _shape_text(shape: tuple[str, ...], sym: dict) -> str:
    return "(" + ", ".join(f"{s}={sym[s]}" if s in sym and sym[s] is not None else s for s in shape) + ")"


def _check_dataset(state: ValidationState, path: str, spec: DatasetSpec, fam: dict, sym: dict) -> h5py.Dataset | None:
    dpath = f"{path.rstrip('/')}/{spec.name}"
    kind = state.kinds.get(dpath)
    if kind is None:
        if spec.required:
            state.add(fam["missing"], dpath, f"required dataset ({spec.dtype} {list(spec.shape)}) missing")
        return None
    if kind != "dataset":
        if kind == "group":
            state.add(fam["dtype"], dpath, f"must be a {spec.dtype} dataset, found a group")
        return None
    if dpath in state.tainted:
        return None
    state.where = dpath
    ds = state.file[dpath]
    if not values.dtype_matches(spec.dtype, ds.dtype):
        state.add(fam["dtype"], dpath, f"dtype {values.dtype_text(ds.dtype)}, SPEC requires {spec.dtype}")
        return None
    shape = ds.shape or ()
    if len(shape) != len(spec.shape):
        state.add(fam["shape"], dpath, f"shape {shape}, SPEC requires {_shape_text(spec.shape, sym)}")
        return None
    free: dict[str, int] = {}
    for dim, s in zip(shape, spec.shape, strict=True):
        if s.isdigit():
            want = int(s)
        elif sym.get(s) is not None or s in free:
            want = sym.get(s, free.get(s))
        elif s in DEFINED_SYMBOLS:
            continue  # its source attribute is invalid and already reported
        else:  # a free symbol (such as R) is bound by its first use and must be positive
            free[s] = dim
            want = dim if dim >= 1 else 1
        if dim != want:
            state.add(fam["shape"], dpath, f"shape {shape}, SPEC requires {_shape_text(spec.shape, sym)}")
            return None
    sym.update(free)
    if spec.dtype != "str":
        _value_checks(state, ds, dpath, spec.checks)
    state.datasets[dpath] = ds
    return ds


def _value_checks(state: ValidationState, ds: h5py.Dataset, path: str, checks: dict[str, str]) -> None:
    if not checks:
        return
    bad = {name: [0, None] for name in checks}
    bound = state.schema.limits.get("max_value_magnitude")  # schemas before 1.1.0's text revision have none
    for offset, block in values.blocks(ds):
        tests = {}
        if "finite" in checks and block.dtype.kind == "f":
            tests["finite"] = ~np.isfinite(block)
        if "nonnegative" in checks:
            tests["nonnegative"] = block < 0  # NaN compares False: reported by finite
        if "bounded" in checks:
            tests["bounded"] = np.isfinite(block) & (np.abs(block) > bound)  # Inf and NaN: reported by finite
        for name, mask in tests.items():
            n = int(np.count_nonzero(mask))
            if n:
                if bad[name][1] is None:
                    bad[name][1] = values.first_index(mask, offset)
                bad[name][0] += n
    for name, (n, first) in bad.items():
        if n:
            what = {"finite": "non-finite (NaN or Inf) values", "nonnegative": "negative values",
                    "bounded": f"values beyond {bound:.0e} in magnitude"}[name]
            state.add(checks[name], path, f"{n} {what}, first at {first}")
