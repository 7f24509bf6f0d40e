"""Write and read sidecar files (SPEC.md), both driven by the schema. Writes are atomic; reads validate first.

The writer walks the schema from the root type: every attribute, dataset and group it declares is
written from the registered dataclass's field of that name (types.py), with the schema's kind or
dtype; groups carry their ``dfkd_type``/``dfkd_type_version`` and, for types added by a MINOR
version, ``dfkd_ignorable``. The reader dispatches on ``dfkd_type`` and MAJOR version: a type of the
schema's MAJOR is read generically; a reader for another MAJOR is registered with ``reader``.
"""
from __future__ import annotations

import dataclasses
import os
import types as _types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path

import h5py
import numpy as np

from ..errors import DfkdError
from ..fileio import PrivateFolder, atomic_path, require_file
from .report import Report
from .schema import SCHEMA_FILES, AttrSpec, DatasetSpec, Schema, TypeSpec, package_schema_for, schema_or_default
from .types import ELEMENTS, Element, Sidecar
from .validator import disable_hdf5_plugins, validate_copy, validate_in_process

STR = h5py.string_dtype("utf-8")
_NUMPY = {"float32": np.float32, "float64": np.float64, "int64": np.int64}


# Warnings in format 1.x that every consumer still refuses (SPEC §8.1): errors from format 2.0.
REFUSED_BY_CONSUMERS = frozenset({"DM618", "DM619", "DM719"})


class SidecarInvalidError(DfkdError):
    """A sidecar failed validation; ``report`` holds every finding."""

    def __init__(self, path: str | os.PathLike, report: Report, action: str = "read"):
        self.report = report
        blocking = report.errors or [f for f in report.findings if f.rule in REFUSED_BY_CONSUMERS]
        first = blocking[0]
        more = f" and {len(blocking) - 1} more" if len(blocking) > 1 else ""
        what = "an invalid sidecar" if report.errors else "a sidecar whose values consumers cannot use"
        super().__init__(
            f"{path}: cannot {action} {what}: {first.rule} {first.path}: {first.message}{more}; "
            f"fix: {first.fix} (run `dfkd-meta validate {path}"
            f"{' --model ' + str(report.model) if report.model else ''}` for every finding)")


# ---------------------------------------------------------------------------------------------
# writing

def _refuse_bad_text(obj, where: str = "sidecar") -> None:
    """SPEC §1: strings are UTF-8 without U+0000 (HDF5 ends strings there). Checked before writing."""
    if isinstance(obj, str):
        if "\x00" in obj:
            raise DfkdError(f"{where}: string {obj!r} contains U+0000, which HDF5 strings cannot hold; remove it")
        try:
            obj.encode("utf-8")
        except UnicodeEncodeError:
            raise DfkdError(f"{where}: string {obj!r} is not valid Unicode text (lone surrogate); fix the text") from None
    elif dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            _refuse_bad_text(getattr(obj, f.name), f"{where}.{f.name}")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _refuse_bad_text(k, f"{where} key")
            _refuse_bad_text(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _refuse_bad_text(v, f"{where}[{i}]")


def _attr_value(spec: AttrSpec, value):
    if spec.kind == "str":
        return str(value)
    if spec.kind == "int":
        return np.int64(value)
    if spec.kind == "float":
        return float(value)
    if spec.kind == "str_list":
        return np.array([str(v) for v in value], dtype=STR)
    return np.array(list(value), dtype=np.int64 if spec.kind == "int_list" else np.float64)


def _write_dataset(g: h5py.Group, spec: DatasetSpec, value, compression: str | None) -> None:
    if spec.dtype == "str":
        g.create_dataset(spec.name, data=np.array([str(v) for v in value], dtype=STR))
        return
    arr = np.ascontiguousarray(value, dtype=_NUMPY[spec.dtype])
    opts = {"compression": compression, "shuffle": True} if compression and arr.dtype.kind == "f" and arr.size > 1024 \
        else {}
    g.create_dataset(spec.name, data=arr, **opts)


def _typed_group(parent: h5py.Group, name: str, spec: TypeSpec) -> h5py.Group:
    g = parent if name == "/" else parent.create_group(name)
    g.attrs["dfkd_type"] = spec.name
    g.attrs["dfkd_type_version"] = spec.version
    if spec.ignorable:
        g.attrs["dfkd_ignorable"] = np.int64(1)
    return g


def write_element(parent: h5py.Group, name: str, obj, type_name: str, schema: Schema,
                  registry: Mapping[str, Element], compression: str | None = None) -> None:
    """Write ``obj`` as the group ``name`` of ``parent`` (``"/"``: the file itself), following the schema."""
    spec = schema.types[type_name]
    g = _typed_group(parent, name, spec)
    values = registry[type_name].items(obj)
    for a in spec.attrs.values():
        if values.get(a.name) is not None:
            g.attrs[a.name] = _attr_value(a, values[a.name])
    for d in spec.datasets.values():
        if values.get(d.name) is not None:
            _write_dataset(g, d, values[d.name], compression)
    for ref in spec.groups.values():
        value = values.get(ref.name)
        child = schema.types[ref.type]
        if child.children_type is not None:  # a list type: one group per item, named by its key
            if not value and not ref.required:
                continue
            lst = _typed_group(g, ref.name, child)
            key = registry[child.children_type].key
            for item in value or []:
                write_element(lst, getattr(item, key), item, child.children_type, schema, registry, compression)
        elif value is not None:
            write_element(g, ref.name, value, ref.type, schema, registry, compression)


def writer_schema(sidecar: Sidecar) -> Schema:
    """The package's schema of ``sidecar.format_version``'s MAJOR, refusing a version too old for its content."""
    needed = sidecar.needed_format_version()
    major = int(str(sidecar.format_version).split(".")[0])
    if major < int(needed.split(".")[0]):
        raise DfkdError(f"sidecar: format {sidecar.format_version} cannot hold layers coarser than per unit "
                        f"({', '.join(x.key for x in sidecar.layers if not x.per_unit)}); write it as {needed}")
    schema = package_schema_for(major)
    if schema is None:
        raise DfkdError(f"sidecar: format {sidecar.format_version} is not one this package writes "
                        f"({', '.join(f'{m}.x' for m in sorted(SCHEMA_FILES))})")
    return schema


def write_h5(sidecar: Sidecar, f: h5py.File, compression: str | None = None, *, schema: Schema | None = None,
             registry: Mapping[str, Element] | None = None) -> None:
    """Write ``sidecar`` into an open, empty HDF5 file (no validation, not atomic), following the schema of
    its format version (``schema`` overrides: tests pass extended copies)."""
    _refuse_bad_text(sidecar)
    write_element(f, "/", sidecar, "sidecar", schema or writer_schema(sidecar), registry or ELEMENTS, compression)


def write_sidecar(sidecar: Sidecar, path: str | os.PathLike, *, compression: str | None = None,
                  schema: Schema | None = None, registry: Mapping[str, Element] | None = None) -> Path:
    """Write ``sidecar`` to ``path`` atomically, refusing to produce an invalid file.

    The file is written beside the target, validated, and only then renamed onto ``path``:
    on any error ``path`` keeps its previous content (or stays absent). ``schema`` and
    ``registry`` default to the package's (tests pass extended copies).
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        # Object timestamps off: the same statistics give byte-identical files.
        with h5py.File(tmp, "w", track_order=False) as f:
            write_h5(sidecar, f, compression, **({"schema": schema, "registry": registry}
                                                 if schema is not None or registry is not None else {}))
        report = validate_in_process(tmp, schema=schema)
        if not report.valid:
            report.file = str(path)
            raise SidecarInvalidError(path, report, action="write")
    return path


# ---------------------------------------------------------------------------------------------
# reading (only after validation)

Reader = Callable[[h5py.Group, Schema, Mapping[str, Element]], object]
_READERS: dict[tuple[str, int], Reader] = {}


def reader(type_name: str, major: int):
    """Register a reader for an element type's other MAJOR version (the schema's MAJOR is read generically)."""
    def register(fn: Reader) -> Reader:
        _READERS[(type_name, major)] = fn
        return fn
    return register


def _s(v) -> str:
    return v.decode("utf-8") if isinstance(v, (bytes, np.bytes_)) else str(v)


def _strs(v) -> list[str]:
    return [_s(x) for x in np.asarray(v).ravel()]


def _container(cls: type, field_name: str) -> type | None:
    """tuple, list or bool when the field's annotation says so (Optional stripped), else None."""
    hint = typing.get_type_hints(cls).get(field_name)
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, _types.UnionType) else (hint,)
    for a in args:
        origin = typing.get_origin(a) or a
        if origin in (tuple, list, bool):
            return origin
    return None


def _read_attr(spec: AttrSpec, raw, shape: type | None):
    if spec.kind == "str":
        return _s(raw)
    if spec.kind == "int":
        return bool(int(raw)) if shape is bool else int(raw)
    if spec.kind == "float":
        return float(raw)
    if spec.kind == "str_list":
        items = _strs(raw)
    else:
        items = [int(v) if spec.kind == "int_list" else float(v) for v in np.asarray(raw).ravel()]
    return tuple(items) if shape is tuple else items


def read_element(g: h5py.Group, schema: Schema, registry: Mapping[str, Element]):
    """The registered dataclass instance of a validated group, dispatching on its type and MAJOR version."""
    type_name = _s(g.attrs["dfkd_type"])
    major = int(_s(g.attrs["dfkd_type_version"]).split(".")[0])
    custom = _READERS.get((type_name, major))
    if custom is not None:
        return custom(g, schema, registry)
    if type_name not in schema.types or major != schema.types[type_name].major:
        raise DfkdError(f"{g.file.filename}: no reader for {type_name} {major}.x at {g.name}; upgrade dfkd-meta")
    spec, el = schema.types[type_name], registry[type_name]
    values: dict[str, object] = {}
    for a in spec.attrs.values():
        if a.name in g.attrs:
            values[a.name] = _read_attr(a, g.attrs[a.name], _container(el.cls, el.field_of(a.name)))
    for d in spec.datasets.values():
        if d.name in g:
            raw = g[d.name][()]
            values[d.name] = _strs(raw) if d.dtype == "str" else np.asarray(raw).astype(_NUMPY[d.dtype])
    for ref in spec.groups.values():
        if ref.name not in g:
            continue
        child = schema.types[ref.type]
        if child.children_type is not None:
            values[ref.name] = [read_element(c, schema, registry) for k, c in g[ref.name].items()
                                if isinstance(c, h5py.Group) and _s(c.attrs.get("dfkd_type", "")) == child.children_type]
        else:
            values[ref.name] = read_element(g[ref.name], schema, registry)
    return el.build(values, key=g.name.rsplit("/", 1)[1] if el.key else None)


@dataclasses.dataclass(frozen=True)
class CheckedSidecar:
    """A sidecar read from the very bytes that were validated, and their SHA-256."""

    sidecar: Sidecar
    sha256: str
    path: Path


def read_sidecar(path: str | os.PathLike, model: str | os.PathLike | None = None, *, isolate: bool = True,
                 schema: Schema | None = None, registry: Mapping[str, Element] | None = None,
                 for_use: bool = True) -> Sidecar:
    """Validate ``path`` (against ``model`` when given), then load it. Raises SidecarInvalidError.

    ``for_use`` (the default) also refuses the warnings consumers cannot work with (REFUSED_BY_CONSUMERS:
    statistics that overflow float32, non-zero statistics of empty classes); ``show`` reads without it.

    Validation runs in an isolated child process (``isolate``) so a hostile file cannot crash the caller,
    on a private copy of the file that is then the copy loaded here: a file replaced after the check is
    never read. A ``schema`` other than the package's needs ``isolate=False`` (the child process reads the
    installed schema). ``open_sidecar`` also returns the hash of the bytes read.
    """
    return open_sidecar(path, model, isolate=isolate, schema=schema, registry=registry, for_use=for_use).sidecar


def open_sidecar(path: str | os.PathLike, model: str | os.PathLike | None = None, *, isolate: bool = True,
                 schema: Schema | None = None, registry: Mapping[str, Element] | None = None,
                 for_use: bool = True) -> CheckedSidecar:
    """``read_sidecar``, returning the sidecar with the SHA-256 of the bytes validated and read."""
    if schema is not None and isolate:
        raise ValueError("a schema other than the package's is validated in process: pass isolate=False")
    p = require_file(path, "sidecar")
    m = require_file(model, "model") if model is not None else None
    with PrivateFolder() as folder:
        if isolate:
            report, snap = validate_copy(folder, p, m)
        else:
            snap = folder.copy(p, "sidecar", name=f"sidecar/{p.name}")
            report = validate_in_process(snap.path, m, schema=schema)
            report.file = str(path)
        if not report.valid or (for_use and REFUSED_BY_CONSUMERS & set(report.rules)):
            raise SidecarInvalidError(path, report)
        sc = load_validated(snap.path, schema=schema, registry=registry)
    return CheckedSidecar(sc, snap.sha256, p)


def load_validated(path: str | os.PathLike, *, schema: Schema | None = None,
                   registry: Mapping[str, Element] | None = None) -> Sidecar:
    """Load a sidecar that has just validated (``read_sidecar`` validates first; call this only on the copy
    that was validated, ``validator.validate_copy``)."""
    disable_hdf5_plugins()
    with h5py.File(path, "r", locking=False) as f:
        if schema is None:  # the file's own MAJOR (validated: one this package reads)
            schema = package_schema_for(int(_s(f.attrs["dfkd_meta_version"]).split(".")[0]))
        return read_element(f, schema_or_default(schema), registry or ELEMENTS)
