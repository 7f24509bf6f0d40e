"""Write and read sidecar files (SPEC.md). Writes are atomic; reads validate first.

Each element type has one writer and one reader, registered by its ``dfkd_type`` name and
MAJOR version, so that a future MAJOR of one element adds a reader instead of changing one.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np

from ..errors import DfkdError
from ..fileio import atomic_path
from .schema import load_schema
from .types import (ChannelStats, ConventionRecord, DatasetProvenance, InputDomain, LayerStats, ModelBinding,
                    PrivacyBlock, Sidecar, SpectralStats, TeacherCheck)
from .validator import Report, disable_hdf5_plugins, validate, validate_in_process

STR = h5py.string_dtype("utf-8")


class SidecarInvalidError(DfkdError):
    """A sidecar failed validation; ``report`` holds every finding."""

    def __init__(self, path: str | os.PathLike, report: Report, action: str = "read"):
        self.report = report
        first = report.errors[0]
        more = f" and {len(report.errors) - 1} more errors" if len(report.errors) > 1 else ""
        super().__init__(
            f"{path}: cannot {action} an invalid sidecar: {first.rule} {first.path}: {first.message}{more}; "
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


def _typed_group(parent: h5py.Group, name: str, tname: str) -> h5py.Group:
    g = parent.create_group(name) if name != "/" else parent
    g.attrs["dfkd_type"] = tname
    g.attrs["dfkd_type_version"] = load_schema().types[tname].version
    return g


def _str_list(values) -> np.ndarray:
    return np.array(list(values), dtype=STR)


def _dataset(g: h5py.Group, name: str, data, dtype, compression: str | None) -> None:
    arr = np.ascontiguousarray(data, dtype=dtype)
    opts = {"compression": compression, "shuffle": True} if compression and arr.size > 1024 else {}
    g.create_dataset(name, data=arr, **opts)


def _write_model(root: h5py.Group, m: ModelBinding, compression: str | None) -> None:
    g = _typed_group(root, "model", "model_binding")
    g.attrs["file_name"] = m.file_name
    g.attrs["sha256"] = m.sha256
    if m.external_data:
        g.attrs["external_data_paths"] = _str_list(m.external_data.keys())
        g.attrs["external_data_sha256"] = _str_list(m.external_data.values())
    g.attrs["ir_version"] = np.int64(m.ir_version)
    g.attrs["opset_domains"] = _str_list(m.opset_imports.keys())
    g.attrs["opset_versions"] = np.array(list(m.opset_imports.values()), dtype=np.int64)
    g.attrs["input_name"] = m.input_name
    g.attrs["input_shape"] = np.array(m.input_shape, dtype=np.int64)
    g.attrs["input_dtype"] = m.input_dtype
    g.attrs["logits_name"] = m.logits_name
    g.attrs["num_classes"] = np.int64(m.num_classes)
    if m.class_names is not None:
        g.create_dataset("class_names", data=_str_list(m.class_names))
    d = _typed_group(g, "input_domain", "input_domain")
    d.attrs["layout"] = m.input_domain.layout
    d.attrs["value_min"] = float(m.input_domain.value_min)
    d.attrs["value_max"] = float(m.input_domain.value_max)
    d.attrs["norm_mean"] = np.array(m.input_domain.norm_mean, dtype=np.float64)
    d.attrs["norm_std"] = np.array(m.input_domain.norm_std, dtype=np.float64)
    conv = m.input_domain.convention
    if conv is not None:
        c = _typed_group(d, "convention", "input_convention")
        c.attrs["dfkd_ignorable"] = np.int64(1)  # added in 1.1: 1.0 readers skip it
        c.attrs["name"] = conv.name
        c.attrs["source"] = conv.source
        if conv.image_shape is not None:
            c.attrs["image_shape"] = np.array(conv.image_shape, dtype=np.int64)


def _write_dataset(root: h5py.Group, d: DatasetProvenance, compression: str | None) -> None:
    g = _typed_group(root, "dataset", "dataset_provenance")
    g.attrs["name"] = d.name
    g.attrs["description"] = d.description
    g.attrs["license"] = d.license
    g.attrs["sample_count"] = np.int64(d.sample_count)
    _dataset(g, "class_counts", d.class_counts, np.int64, None)
    tc = d.teacher_check
    if tc is not None:
        t = _typed_group(g, "teacher_check", "teacher_check")
        t.attrs["dfkd_ignorable"] = np.int64(1)  # added in 1.1: 1.0 readers skip it
        t.attrs["split"] = tc.split
        t.attrs["samples"] = np.int64(tc.samples)
        t.attrs["accuracy"] = float(tc.accuracy)
        t.attrs["mean_confidence"] = float(tc.mean_confidence)
        t.attrs["min_accuracy"] = float(tc.min_accuracy)
        t.attrs["forced"] = np.int64(1 if tc.forced else 0)


def _write_layer(parent: h5py.Group, s: LayerStats, compression: str | None) -> None:
    g = _typed_group(parent, s.key, "layer_stats")
    g.attrs["tensor_name"] = s.tensor_name
    g.attrs["order"] = np.int64(s.order)
    g.attrs["kind"] = s.kind
    g.attrs["shape"] = np.array(s.shape, dtype=np.int64)
    if s.temperature is not None:
        g.attrs["temperature"] = float(s.temperature)
    if s.dropout_keep_prob is not None:
        g.attrs["dropout_keep_prob"] = float(s.dropout_keep_prob)
    _dataset(g, "mean", s.mean, np.float32, compression)
    _dataset(g, "std", s.std, np.float32, compression)
    _dataset(g, "count", s.count, np.int64, None)
    if s.cov_factors is not None:
        _dataset(g, "cov_factors", s.cov_factors, np.float32, compression)
    if s.channel is not None:
        c = _typed_group(g, "channel", "channel_stats")
        _dataset(c, "mean", s.channel.mean, np.float32, compression)
        _dataset(c, "std", s.channel.std, np.float32, compression)


def _write_spectral(parent: h5py.Group, s: SpectralStats, compression: str | None) -> None:
    g = _typed_group(parent, s.key, "spectral_stats")
    g.attrs["scope"] = s.scope
    g.attrs["layers"] = _str_list(s.layers)
    g.attrs["graph"] = s.graph
    g.attrs["graph_version"] = np.int64(s.graph_version)
    g.attrs["k"] = np.int64(s.k)
    g.attrs["weight_tensors"] = _str_list(s.weight_tensors)
    _dataset(g, "eigenvalues", s.eigenvalues, np.float64, None)
    _dataset(g, "basis", s.basis, np.float32, compression)
    _dataset(g, "coef_mean", s.coef_mean, np.float32, compression)
    _dataset(g, "coef_std", s.coef_std, np.float32, compression)


def _write_privacy(root: h5py.Group, p: PrivacyBlock, compression: str | None) -> None:
    g = _typed_group(root, "privacy", "privacy")
    g.attrs["mechanism"] = p.mechanism
    g.attrs["epsilon"] = float(p.epsilon)
    g.attrs["delta"] = float(p.delta)
    g.attrs["clip_norm"] = float(p.clip_norm)
    g.attrs["applies_to"] = _str_list(p.applies_to)
    if p.description is not None:
        g.attrs["description"] = p.description


def write_h5(sidecar: Sidecar, f: h5py.File, compression: str | None = None) -> None:
    """Write ``sidecar`` into an open, empty HDF5 file (no validation, not atomic)."""
    _refuse_bad_text(sidecar)
    root = _typed_group(f, "/", "sidecar")
    root.attrs["dfkd_meta_format"] = load_schema().format
    root.attrs["dfkd_meta_version"] = sidecar.format_version
    root.attrs["writer_name"] = sidecar.writer_name
    root.attrs["writer_version"] = sidecar.writer_version or _package_version()
    root.attrs["created_utc"] = sidecar.created_utc
    _write_model(root, sidecar.model, compression)
    _write_dataset(root, sidecar.dataset, compression)
    layers = _typed_group(root, "layers", "layer_list")
    for layer in sidecar.layers:
        _write_layer(layers, layer, compression)
    if sidecar.spectral:
        spectral = _typed_group(root, "spectral", "spectral_list")
        for block in sidecar.spectral:
            _write_spectral(spectral, block, compression)
    if sidecar.privacy is not None:
        _write_privacy(root, sidecar.privacy, compression)


def write_sidecar(sidecar: Sidecar, path: str | os.PathLike, *, compression: str | None = None) -> Path:
    """Write ``sidecar`` to ``path`` atomically, refusing to produce an invalid file.

    The file is written beside the target, validated, and only then renamed onto ``path``:
    on any error ``path`` keeps its previous content (or stays absent).
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        # Object timestamps off: the same statistics give byte-identical files.
        with h5py.File(tmp, "w", track_order=False) as f:
            write_h5(sidecar, f, compression)
        report = validate_in_process(tmp)
        if not report.valid:
            report.file = str(path)
            raise SidecarInvalidError(path, report, action="write")
    return path


def _package_version() -> str:
    from .. import __version__

    return __version__


# ---------------------------------------------------------------------------------------------
# reading (only after validation)

Reader = Callable[[h5py.Group], object]
_READERS: dict[tuple[str, int], Reader] = {}


def _reader(tname: str, major: int = 1):
    def register(fn: Reader) -> Reader:
        _READERS[(tname, major)] = fn
        return fn
    return register


def _read(g: h5py.Group):
    tname = _s(g.attrs["dfkd_type"])
    major = int(_s(g.attrs["dfkd_type_version"]).split(".")[0])
    try:
        return _READERS[(tname, major)](g)
    except KeyError:
        raise DfkdError(f"{g.file.filename}: no reader for {tname} {major}.x at {g.name}; upgrade dfkd-meta") from None


def _s(v) -> str:
    return v.decode("utf-8") if isinstance(v, (bytes, np.bytes_)) else str(v)


def _strs(v) -> list[str]:
    return [_s(x) for x in np.asarray(v).ravel()]


def _opt(g, name, conv):
    return conv(g.attrs[name]) if name in g.attrs else None


@_reader("model_binding")
def _read_model(g: h5py.Group) -> ModelBinding:
    d = g["input_domain"]
    a = g.attrs
    ext = dict(zip(_strs(a["external_data_paths"]), _strs(a["external_data_sha256"]))) \
        if "external_data_paths" in a else {}
    return ModelBinding(
        file_name=_s(a["file_name"]), sha256=_s(a["sha256"]), ir_version=int(a["ir_version"]),
        opset_imports=dict(zip(_strs(a["opset_domains"]), (int(v) for v in a["opset_versions"]))),
        input_name=_s(a["input_name"]), input_shape=tuple(int(v) for v in a["input_shape"]),
        input_dtype=_s(a["input_dtype"]), logits_name=_s(a["logits_name"]), num_classes=int(a["num_classes"]),
        input_domain=_read(d), external_data=ext,
        class_names=_strs(g["class_names"][()]) if "class_names" in g else None,
    )


@_reader("input_domain")
def _read_input_domain(g: h5py.Group) -> InputDomain:
    a = g.attrs
    return InputDomain(layout=_s(a["layout"]), value_min=float(a["value_min"]), value_max=float(a["value_max"]),
                       norm_mean=tuple(float(v) for v in a["norm_mean"]),
                       norm_std=tuple(float(v) for v in a["norm_std"]),
                       convention=_read(g["convention"]) if "convention" in g else None)


@_reader("input_convention")
def _read_convention(g: h5py.Group) -> ConventionRecord:
    a = g.attrs
    return ConventionRecord(name=_s(a["name"]), source=_s(a["source"]),
                            image_shape=tuple(int(v) for v in a["image_shape"]) if "image_shape" in a else None)


@_reader("teacher_check")
def _read_teacher_check(g: h5py.Group) -> TeacherCheck:
    a = g.attrs
    return TeacherCheck(split=_s(a["split"]), samples=int(a["samples"]), accuracy=float(a["accuracy"]),
                        mean_confidence=float(a["mean_confidence"]), min_accuracy=float(a["min_accuracy"]),
                        forced=bool(int(a["forced"])))


@_reader("dataset_provenance")
def _read_dataset(g: h5py.Group) -> DatasetProvenance:
    a = g.attrs
    return DatasetProvenance(name=_s(a["name"]), description=_s(a["description"]), license=_s(a["license"]),
                             sample_count=int(a["sample_count"]),
                             class_counts=np.asarray(g["class_counts"][()], dtype=np.int64),
                             teacher_check=_read(g["teacher_check"]) if "teacher_check" in g else None)


@_reader("channel_stats")
def _read_channel(g: h5py.Group) -> ChannelStats:
    return ChannelStats(mean=g["mean"][()].astype(np.float32), std=g["std"][()].astype(np.float32))


@_reader("layer_stats")
def _read_layer(g: h5py.Group) -> LayerStats:
    a = g.attrs
    return LayerStats(
        key=g.name.rsplit("/", 1)[1], tensor_name=_s(a["tensor_name"]), order=int(a["order"]), kind=_s(a["kind"]),
        shape=tuple(int(v) for v in a["shape"]),
        mean=g["mean"][()].astype(np.float32), std=g["std"][()].astype(np.float32),
        count=np.asarray(g["count"][()], dtype=np.int64),
        temperature=_opt(g, "temperature", float), dropout_keep_prob=_opt(g, "dropout_keep_prob", float),
        cov_factors=g["cov_factors"][()].astype(np.float32) if "cov_factors" in g else None,
        channel=_read(g["channel"]) if "channel" in g else None,
    )


@_reader("spectral_stats")
def _read_spectral(g: h5py.Group) -> SpectralStats:
    a = g.attrs
    return SpectralStats(
        key=g.name.rsplit("/", 1)[1], scope=_s(a["scope"]), layers=_strs(a["layers"]), k=int(a["k"]),
        eigenvalues=g["eigenvalues"][()].astype(np.float64), basis=g["basis"][()].astype(np.float32),
        coef_mean=g["coef_mean"][()].astype(np.float32), coef_std=g["coef_std"][()].astype(np.float32),
        weight_tensors=_strs(a["weight_tensors"]), graph=_s(a["graph"]), graph_version=int(a["graph_version"]),
    )


@_reader("privacy")
def _read_privacy(g: h5py.Group) -> PrivacyBlock:
    a = g.attrs
    return PrivacyBlock(mechanism=_s(a["mechanism"]), epsilon=float(a["epsilon"]), delta=float(a["delta"]),
                        clip_norm=float(a["clip_norm"]), applies_to=_strs(a["applies_to"]),
                        description=_opt(g, "description", _s))


def _children(parent: h5py.Group, tname: str) -> list:
    """Every child group of type ``tname`` (validation already refused anything not ignorable)."""
    out = []
    for key in parent:
        child = parent[key]
        if isinstance(child, h5py.Group) and _s(child.attrs.get("dfkd_type", "")) == tname:
            out.append(_read(child))
    return out


@_reader("sidecar")
def _read_sidecar(f: h5py.Group) -> Sidecar:
    a = f.attrs
    return Sidecar(
        model=_read(f["model"]), dataset=_read(f["dataset"]), layers=_children(f["layers"], "layer_stats"),
        spectral=_children(f["spectral"], "spectral_stats") if "spectral" in f else [],
        privacy=_read(f["privacy"]) if "privacy" in f else None,
        writer_name=_s(a["writer_name"]), writer_version=_s(a["writer_version"]),
        created_utc=_s(a["created_utc"]), format_version=_s(a["dfkd_meta_version"]),
    )


def read_sidecar(path: str | os.PathLike, model: str | os.PathLike | None = None, *,
                 isolate: bool = True) -> Sidecar:
    """Validate ``path`` (against ``model`` when given), then load it. Raises SidecarInvalidError.

    Validation runs in a child process (``isolate``) so a hostile file cannot crash the caller;
    the file is only opened here once it has passed.
    """
    report = validate(path, model, isolate=isolate)
    if not report.valid:
        raise SidecarInvalidError(path, report)
    disable_hdf5_plugins()
    with h5py.File(path, "r", locking=False) as f:
        return _read(f)
