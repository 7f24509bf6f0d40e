"""Typed, in-memory form of a sidecar (SPEC.md §5-§10). No HDF5 here: see io.py.

Each dataclass is registered (``@element``) as the Python form of one element type of the schema
(spec/dfkd-meta-2.0.schema.yaml). Its fields carry the schema's item names; the registration only
names the exceptions (a field stored as two parallel lists, a constant, the group's own name). The
writer, the reader and ``show`` walk the schema with this registry, so an optional item is added by
declaring it in the schema, describing it in SPEC.md and adding the field here.
"""
from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass, field, fields

import numpy as np

FORMAT_NAME = "dfkd-meta"
FORMAT_VERSION = "2.1.0"  # the newest; a writer writes the oldest version that holds the file (SPEC §2)
GRANULARITY_FORMAT_VERSION = "2.0.0"  # per-channel layers
LEGACY_FORMAT_VERSION = "1.1.0"
LAYER_KINDS = ("pre_activation", "post_activation", "logits")
SPECTRAL_GRAPH = "abs_weight_normalized_laplacian"
SPECTRAL_GRAPH_VERSION = 1


def utc_now() -> str:
    """Current UTC time in the format SPEC §5 requires."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _package_version() -> str:
    from .. import __version__

    return __version__


@dataclass(frozen=True)
class Element:
    """How one dataclass maps onto the items of one schema type."""

    cls: type
    type_name: str
    renamed: dict[str, str]  # schema item -> field, where they differ
    pairs: dict[str, tuple[str, str]]  # dict field -> (item of its keys, item of its values)
    constants: dict[str, str]  # schema item -> fixed value (not a field)
    key: str | None  # field holding the group's own name (children of list types)

    def field_of(self, item: str) -> str:
        return self.renamed.get(item, item)

    def items(self, obj) -> dict[str, object]:
        """Schema item name -> value (None when absent) for the instance ``obj``."""
        out: dict[str, object] = dict(self.constants)
        paired = {name for pair in self.pairs.values() for name in pair}
        for f in fields(self.cls):
            if f.name == self.key:
                continue
            if f.name in self.pairs:
                keys_item, values_item = self.pairs[f.name]
                mapping = getattr(obj, f.name) or {}
                out[keys_item] = list(mapping.keys()) if mapping else None
                out[values_item] = list(mapping.values()) if mapping else None
                continue
            item = next((i for i, n in self.renamed.items() if n == f.name), f.name)
            if item not in paired:
                out[item] = getattr(obj, f.name)
        return out

    def build(self, values: dict[str, object], key: str | None = None):
        """An instance from schema item values (absent items take the field's default)."""
        kwargs = {}
        for f_name, (keys_item, values_item) in self.pairs.items():
            if values.get(keys_item) is not None:
                kwargs[f_name] = dict(zip(values[keys_item], values[values_item]))
        skip = {n for pair in self.pairs.values() for n in pair} | set(self.constants)
        for item, value in values.items():
            if item not in skip and value is not None:
                kwargs[self.field_of(item)] = value
        if self.key is not None:
            kwargs[self.key] = key
        return self.cls(**kwargs)


ELEMENTS: dict[str, Element] = {}


def element(type_name: str, *, renamed: dict[str, str] | None = None,
            pairs: dict[str, tuple[str, str]] | None = None, constants: dict[str, str] | None = None,
            key: str | None = None):
    """Register a dataclass as the Python form of schema type ``type_name``."""
    def register(cls):
        ELEMENTS[type_name] = Element(cls, type_name, renamed or {}, pairs or {}, constants or {}, key)
        return cls
    return register


@element("input_convention")
@dataclass
class ConventionRecord:
    """Where the input normalisation came from, and the image behind a flat input (SPEC §6.1.1, format 1.1)."""

    name: str  # none | data | imagenet | custom
    source: str  # option | model_metadata | legacy_train | default
    image_shape: tuple[int, ...] | None = None  # (C, H, W) of images fed flattened (layout NC)


@element("input_domain")
@dataclass
class InputDomain:
    """What a valid model input looks like (SPEC §6.1): x = (r - norm_mean) / norm_std, r in range."""

    layout: str  # NC, NCHW, NHWC or NCL
    value_min: float
    value_max: float
    norm_mean: tuple[float, ...] = (0.0,)
    norm_std: tuple[float, ...] = (1.0,)
    convention: ConventionRecord | None = None

    def as_record(self) -> dict:
        """The domain as the plain record ``convention.from_domain`` (and a transfer set's ``input_domain``) reads."""
        return {"layout": self.layout, "norm_mean": list(self.norm_mean), "norm_std": list(self.norm_std),
                "value_min": self.value_min, "value_max": self.value_max,
                "convention": self.convention.name if self.convention else None}

    def normalized_range(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (low, high) bounds of the model input after normalisation."""
        mean, std = np.asarray(self.norm_mean, np.float64), np.asarray(self.norm_std, np.float64)
        return (self.value_min - mean) / std, (self.value_max - mean) / std


@element("model_binding", pairs={"external_data": ("external_data_paths", "external_data_sha256"),
                                 "opset_imports": ("opset_domains", "opset_versions")})
@dataclass
class ModelBinding:
    """Ties a sidecar to one exact ONNX file and describes its input and logits (SPEC §6)."""

    file_name: str
    sha256: str
    ir_version: int
    opset_imports: dict[str, int]
    input_name: str
    input_shape: tuple[int, ...]  # batch first, recorded as -1
    input_dtype: str
    logits_name: str
    num_classes: int
    input_domain: InputDomain
    external_data: dict[str, str] = field(default_factory=dict)  # relative path -> sha256
    class_names: list[str] | None = None

    @property
    def image_shape(self) -> tuple[int, ...] | None:
        """(C, H, W) of the images behind the model input: the input itself, or the images it flattens."""
        dom, shape = self.input_domain, tuple(self.input_shape[1:])
        if dom.layout == "NCHW":
            return shape
        if dom.layout == "NHWC":
            return (shape[2], shape[0], shape[1])
        if dom.convention is not None and dom.convention.image_shape is not None:
            return tuple(dom.convention.image_shape)
        return None


@element("teacher_check")
@dataclass
class TeacherCheck:
    """The teacher measured on the data the statistics come from, under the recorded convention (SPEC §7.1)."""

    split: str
    samples: int
    accuracy: float
    mean_confidence: float  # mean over examples of the largest softmax probability (temperature 1)
    min_accuracy: float  # the threshold export applied
    forced: bool = False  # exported past a failed check on the publisher's request (forced_reason says which)


def forced_reason(accuracy: float, min_accuracy: float) -> str:
    """Which check a forced export went past (SPEC §7.1): the threshold, or else the rival conventions."""
    if accuracy < min_accuracy:
        return f"the teacher was below the threshold {min_accuracy:.1%}"
    return "another standard input convention fed the teacher clearly better"


@element("dataset_provenance")
@dataclass
class DatasetProvenance:
    """Describes the publisher's data, never containing it (SPEC §7)."""

    name: str
    sample_count: int
    class_counts: np.ndarray  # int64 [C]
    description: str = ""
    license: str = "unknown"
    teacher_check: TeacherCheck | None = None


@element("channel_stats")
@dataclass
class ChannelStats:
    """Per-class statistics of each channel pooled over its positions (SPEC §8.3)."""

    mean: np.ndarray  # float32 [C, CH]
    std: np.ndarray  # float32 [C, CH]


@element("layer_stats", key="key")
@dataclass
class LayerStats:
    """Statistics of one ONNX tensor over the examples of each class, at one granularity (SPEC §8.1):

    - ``unit``: per unit and class (``mean``, ``std`` [C, U]; optional ``cov_factors`` and ``channel``);
    - ``channel_unit``: per channel and class (``channel``) and per unit over all classes
      (``pooled_mean``, ``pooled_std`` [U]);
    - ``channel``: per channel and class only.
    """

    key: str  # group name under /layers
    tensor_name: str
    order: int
    kind: str
    shape: tuple[int, ...]  # per example, batch removed
    count: np.ndarray  # int64 [C]
    mean: np.ndarray | None = None  # float32 [C, U] (unit granularity)
    std: np.ndarray | None = None  # float32 [C, U]
    temperature: float | None = None
    dropout_keep_prob: float | None = None
    cov_factors: np.ndarray | None = None  # float32 [C, U, R] (unit granularity)
    channel: ChannelStats | None = None
    granularity: str = "unit"
    pooled_mean: np.ndarray | None = None  # float32 [U] (channel_unit granularity)
    pooled_std: np.ndarray | None = None

    @property
    def units(self) -> int:
        return math.prod(self.shape)

    @property
    def per_unit(self) -> bool:
        """Per-unit, per-class statistics are stored (what per-unit targets and draws need)."""
        return self.granularity == "unit"


@element("spectral_stats", key="key")
@dataclass
class SpectralStats:
    """Per-class statistics of graph-Fourier coefficients of activations (SPEC §9)."""

    key: str  # group name under /spectral
    scope: str  # all_layers | layer_pair
    layers: list[str]  # keys of LayerStats, in order
    k: int
    eigenvalues: np.ndarray  # float64 [k]
    basis: np.ndarray  # float32 [N, k]
    coef_mean: np.ndarray  # float32 [C, k]
    coef_std: np.ndarray  # float32 [C, k]
    weight_tensors: list[str] = field(default_factory=list)
    graph: str = SPECTRAL_GRAPH
    graph_version: int = SPECTRAL_GRAPH_VERSION


@element("privacy_accounting")
@dataclass
class PrivacyAccounting:
    """Every noised statistic with its L2 sensitivity and Gaussian noise, to recompute the budget (SPEC §10.1)."""

    statistics: list[str]
    sensitivity: np.ndarray  # float64 [S]
    noise_std: np.ndarray  # float64 [S]
    accountant: str = "gdp"
    adjacency: str = "add_remove"
    exact: list[str] | None = None  # items computed from the data and released without noise


@element("privacy")
@dataclass
class PrivacyBlock:
    """How noise was added to the released statistics (SPEC §10)."""

    mechanism: str  # gaussian | laplace
    epsilon: float
    delta: float
    clip_norm: float
    applies_to: list[str]
    description: str | None = None
    accounting: PrivacyAccounting | None = None


@element("sidecar", renamed={"dfkd_meta_version": "format_version"}, constants={"dfkd_meta_format": FORMAT_NAME})
@dataclass
class Sidecar:
    """A whole sidecar file (SPEC §5)."""

    model: ModelBinding
    dataset: DatasetProvenance
    layers: list[LayerStats]
    spectral: list[SpectralStats] = field(default_factory=list)
    privacy: PrivacyBlock | None = None
    writer_name: str = "dfkd-meta"
    writer_version: str = field(default_factory=_package_version)
    created_utc: str = field(default_factory=utc_now)
    format_version: str | None = None  # None: the oldest format that holds it (needed_format_version)

    def __post_init__(self):
        if self.format_version is None:
            self.format_version = self.needed_format_version()

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    def layer(self, key: str) -> LayerStats:
        for layer in self.layers:
            if layer.key == key:
                return layer
        raise KeyError(f"no layer {key!r}; layers are {[x.key for x in self.layers]}")

    def layers_in_order(self) -> list[LayerStats]:
        return sorted(self.layers, key=lambda x: x.order)

    def needed_format_version(self) -> str:
        """The oldest format that holds this sidecar (SPEC §2): 2.1.0 with a privacy accounting (whose rules are
        2.1's), 2.0.0 once a layer is coarser than per unit, else 1.1.0."""
        if self.privacy is not None and self.privacy.accounting is not None:
            return FORMAT_VERSION
        return GRANULARITY_FORMAT_VERSION if any(not layer.per_unit for layer in self.layers) else LEGACY_FORMAT_VERSION
