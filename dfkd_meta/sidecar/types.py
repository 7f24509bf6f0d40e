"""Typed, in-memory form of a sidecar (SPEC.md §5-§10). No HDF5 here: see io.py."""
from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass, field

import numpy as np

FORMAT_NAME = "dfkd-meta"
FORMAT_VERSION = "1.1.0"
LAYER_KINDS = ("pre_activation", "post_activation", "logits")
SPECTRAL_GRAPH = "abs_weight_normalized_laplacian"
SPECTRAL_GRAPH_VERSION = 1


def utc_now() -> str:
    """Current UTC time in the format SPEC §5 requires."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class ConventionRecord:
    """Where the input normalisation came from, and the image behind a flat input (SPEC §6.1.1, format 1.1)."""

    name: str  # none | data | imagenet | custom
    source: str  # option | model_metadata | legacy_train | default
    image_shape: tuple[int, ...] | None = None  # (C, H, W) of images fed flattened (layout NC)


@dataclass
class InputDomain:
    """What a valid model input looks like (SPEC §6.1): x = (r - norm_mean) / norm_std, r in range."""

    layout: str  # NC, NCHW, NHWC or NCL
    value_min: float
    value_max: float
    norm_mean: tuple[float, ...] = (0.0,)
    norm_std: tuple[float, ...] = (1.0,)
    convention: ConventionRecord | None = None

    def normalized_range(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (low, high) bounds of the model input after normalisation."""
        mean, std = np.asarray(self.norm_mean, np.float64), np.asarray(self.norm_std, np.float64)
        return (self.value_min - mean) / std, (self.value_max - mean) / std


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


@dataclass
class TeacherCheck:
    """The teacher measured on the data the statistics come from, under the recorded convention (SPEC §7.1)."""

    split: str
    samples: int
    accuracy: float
    mean_confidence: float  # mean over examples of the largest softmax probability (temperature 1)
    min_accuracy: float  # the threshold export applied
    forced: bool = False  # exported below the threshold on the publisher's request


@dataclass
class DatasetProvenance:
    """Describes the publisher's data, never containing it (SPEC §7)."""

    name: str
    sample_count: int
    class_counts: np.ndarray  # int64 [C]
    description: str = ""
    license: str = "unknown"
    teacher_check: TeacherCheck | None = None


@dataclass
class ChannelStats:
    """Per-class statistics of each channel pooled over its positions (SPEC §8.3)."""

    mean: np.ndarray  # float32 [C, CH]
    std: np.ndarray  # float32 [C, CH]


@dataclass
class LayerStats:
    """Per-class, per-unit statistics of one ONNX tensor (SPEC §8)."""

    key: str  # group name under /layers
    tensor_name: str
    order: int
    kind: str
    shape: tuple[int, ...]  # per example, batch removed
    mean: np.ndarray  # float32 [C, U]
    std: np.ndarray  # float32 [C, U]
    count: np.ndarray  # int64 [C]
    temperature: float | None = None
    dropout_keep_prob: float | None = None
    cov_factors: np.ndarray | None = None  # float32 [C, U, R]
    channel: ChannelStats | None = None

    @property
    def units(self) -> int:
        return math.prod(self.shape)


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


@dataclass
class PrivacyBlock:
    """How noise was added to the released statistics (SPEC §10)."""

    mechanism: str  # gaussian | laplace
    epsilon: float
    delta: float
    clip_norm: float
    applies_to: list[str]
    description: str | None = None


@dataclass
class Sidecar:
    """A whole sidecar file (SPEC §5)."""

    model: ModelBinding
    dataset: DatasetProvenance
    layers: list[LayerStats]
    spectral: list[SpectralStats] = field(default_factory=list)
    privacy: PrivacyBlock | None = None
    writer_name: str = "dfkd-meta"
    writer_version: str = ""
    created_utc: str = field(default_factory=utc_now)
    format_version: str = FORMAT_VERSION

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
