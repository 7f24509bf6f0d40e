"""A teacher's input convention: how raw values become the inputs the teacher was trained on.

A model input is ``x = (r - norm_mean[c]) / norm_std[c]`` per channel ``c`` (axis 1 of the raw
array: image channels, or the features of a flat vector), for raw values ``r`` in
``[value_min, value_max]`` (SPEC §6.1). The convention belongs to the teacher, never to the data
it is applied to: nothing here looks at data except the ``data`` option, which a publisher asks for
by name and which is then recorded with its numbers.

Sources, in order (``resolve``): an explicit option, the teacher's own ONNX metadata (written by
``dfkd-meta train`` and ``distill``), the metadata of a teacher written by an earlier ``train``
(which normalised by the training data's scalar mean and std), and otherwise the identity.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace

import numpy as np

from .errors import UsageError

METADATA_KEY = "dfkd_meta.input_convention"  # ONNX metadata_props entry, JSON (see to_metadata)
LEGACY_TRAIN_KEY = "dfkd_meta.dropout_keep_prob"  # only earlier `dfkd-meta train` teachers carry this alone
NAMES = ("none", "data", "imagenet", "custom")
SOURCES = ("option", "model_metadata", "legacy_train", "default", "recorded")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CHOICES_HELP = ("none (raw values, the default for an ONNX file without dfkd-meta metadata), data (per-channel "
                "mean and std of the data's train split, recorded), imagenet (raw RGB in [0, 1]), or MEAN/STD "
                "with one number or a comma list per channel, e.g. 0.1307/0.3081")


@dataclass(frozen=True)
class InputConvention:
    """Per-channel normalisation of raw values, with where it came from.

    ``value_min``/``value_max`` are the raw range the teacher was trained on, when the convention
    knows it (imagenet, a teacher's metadata); None leaves it to the data.
    """

    name: str = "none"
    norm_mean: tuple[float, ...] = (0.0,)
    norm_std: tuple[float, ...] = (1.0,)
    value_min: float | None = None
    value_max: float | None = None
    source: str = "default"
    extra: dict = field(default_factory=dict, compare=False)  # metadata keys this version does not use

    def __post_init__(self):
        if len(self.norm_mean) != len(self.norm_std) and 1 not in (len(self.norm_mean), len(self.norm_std)):
            raise UsageError(f"input convention: {len(self.norm_mean)} means but {len(self.norm_std)} stds; "
                             "give one of each per channel, or a single one for all")
        n = max(len(self.norm_mean), len(self.norm_std))
        object.__setattr__(self, "norm_mean", tuple(float(v) for v in np.broadcast_to(self.norm_mean, (n,))))
        object.__setattr__(self, "norm_std", tuple(float(v) for v in np.broadcast_to(self.norm_std, (n,))))
        bad = [s for s in self.norm_std if not (math.isfinite(s) and s > 0)]
        if bad or not all(math.isfinite(m) for m in self.norm_mean):
            raise UsageError(f"input convention: means must be finite and stds finite and > 0 (got mean "
                             f"{list(self.norm_mean)}, std {list(self.norm_std)})")

    @property
    def is_identity(self) -> bool:
        return all(m == 0.0 for m in self.norm_mean) and all(s == 1.0 for s in self.norm_std)

    def channels(self) -> int:
        return max(len(self.norm_mean), len(self.norm_std))

    def describe(self) -> str:
        if self.is_identity:
            what = "raw values"
        else:
            fmt = lambda v: ", ".join(f"{x:.4g}" for x in v)  # noqa: E731
            what = f"(r - [{fmt(self.norm_mean)}]) / [{fmt(self.norm_std)}]"
        origin = {"option": "given", "model_metadata": "from the model's metadata",
                  "legacy_train": "an earlier dfkd-meta train's, from its metadata",
                  "default": "the default for a model without dfkd-meta metadata",
                  "recorded": "as a sidecar or transfer set records it"}[self.source]
        return f"{self.name}: {what} ({origin})"

    def _per_channel(self, values: tuple[float, ...], raw_shape: tuple[int, ...]) -> np.ndarray:
        """``values`` shaped to broadcast over a batch of raw examples of ``raw_shape`` (channels on axis 0)."""
        arr = np.asarray(values, np.float64)
        if arr.size == 1:
            return arr.reshape(())
        channels = raw_shape[0] if raw_shape else 1
        if arr.size == channels:
            return arr.reshape((channels,) + (1,) * (len(raw_shape) - 1))
        if arr.size == math.prod(raw_shape):  # one entry per value (a flattened image's recorded domain)
            return arr.reshape(raw_shape)
        raise UsageError(f"input convention {self.name!r} has {arr.size} channels, the data {channels} "
                         f"(examples of shape {list(raw_shape)}); give one number per channel or a single one")

    def apply(self, raw: np.ndarray, out_dtype=np.float32) -> np.ndarray:
        """Model inputs from a batch of raw examples ``raw`` [B, C, ...] (one fused scale and shift)."""
        x = np.asarray(raw, dtype=out_dtype).copy() if raw.dtype != out_dtype else raw.copy()
        if self.is_identity:
            return x
        mean, std = self._per_channel(self.norm_mean, raw.shape[1:]), self._per_channel(self.norm_std, raw.shape[1:])
        x *= (1.0 / std).astype(out_dtype)
        x -= (mean / std).astype(out_dtype)
        return x

    def invert(self, x: np.ndarray) -> np.ndarray:
        """Raw values from model inputs (the inverse of ``apply``)."""
        mean, std = self._per_channel(self.norm_mean, x.shape[1:]), self._per_channel(self.norm_std, x.shape[1:])
        return (x * std + mean).astype(x.dtype)

    def flattened(self, image_shape: tuple[int, ...]) -> InputConvention:
        """The same convention for the C-order flattening of images of ``image_shape`` (one entry per feature)."""
        if self.channels() == 1 or self.channels() == math.prod(image_shape):
            return self  # one number for all, or already one per feature (flattened before)
        positions = math.prod(image_shape[1:])
        expand = lambda v: tuple(float(a) for a in np.repeat(np.broadcast_to(v, (image_shape[0],)), positions))  # noqa: E731
        return replace(self, norm_mean=expand(self.norm_mean), norm_std=expand(self.norm_std))

    # ONNX metadata -------------------------------------------------------------------------------
    def to_metadata(self, image_shape: tuple[int, ...] | None = None) -> str:
        d = {"version": 1, "name": self.name, "norm_mean": list(self.norm_mean), "norm_std": list(self.norm_std)}
        if self.value_min is not None and self.value_max is not None:
            d["value_min"], d["value_max"] = self.value_min, self.value_max
        if image_shape is not None:
            d["image_shape"] = list(image_shape)
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_metadata(cls, text: str, where: str = "model") -> InputConvention:
        try:
            d = json.loads(text)
            conv = cls(name=str(d.get("name", "custom")) if d.get("name") in NAMES else "custom",
                       norm_mean=tuple(float(v) for v in d["norm_mean"]),
                       norm_std=tuple(float(v) for v in d["norm_std"]),
                       value_min=float(d["value_min"]) if "value_min" in d else None,
                       value_max=float(d["value_max"]) if "value_max" in d else None,
                       source="model_metadata",
                       extra={k: v for k, v in d.items() if k in ("image_shape",)})
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UsageError(f"{where}: metadata {METADATA_KEY!r} is not a valid input convention ({exc}); "
                             "pass the convention explicitly with {input_norm}") from None
        if (conv.value_min is None) != (conv.value_max is None) or (
                conv.value_min is not None and not conv.value_min < conv.value_max):
            raise UsageError(f"{where}: metadata {METADATA_KEY!r} has an invalid value range; "
                             "pass the convention explicitly with {input_norm}")
        return conv


IDENTITY = InputConvention()


def parse(spec: str, channel_stats=None) -> InputConvention:
    """``none``, ``data``, ``imagenet`` or ``MEAN/STD`` (numbers or comma lists) as a convention.

    ``channel_stats`` is a callable giving the data's per-channel (mean, std) of raw values; it is
    only called for ``data``.
    """
    spec = spec.strip()
    if spec == "none":
        return InputConvention("none", source="option")
    if spec == "imagenet":
        return InputConvention("imagenet", IMAGENET_MEAN, IMAGENET_STD, 0.0, 1.0, source="option")
    if spec == "data":
        if channel_stats is None:
            raise UsageError("{input_norm} data needs the data to compute the mean and std from")
        mean, std = channel_stats()
        return InputConvention("data", tuple(float(m) for m in mean), tuple(float(s) for s in std), source="option")
    mean_text, sep, std_text = spec.partition("/")
    try:
        if not sep:
            raise ValueError
        mean = tuple(float(v) for v in mean_text.split(","))
        std = tuple(float(v) for v in std_text.split(","))
    except ValueError:
        raise UsageError(f"{{input_norm}} {spec!r}: expected {CHOICES_HELP}") from None
    return InputConvention("custom", mean, std, source="option")


def from_model(metadata: dict[str, str], where: str = "model") -> InputConvention | None:
    """The convention a teacher's ONNX metadata records, if any (a legacy one is flagged for the data)."""
    if METADATA_KEY in metadata:
        return InputConvention.from_metadata(metadata[METADATA_KEY], where)
    if LEGACY_TRAIN_KEY in metadata:
        return InputConvention("data", source="legacy_train")  # numbers come from the data: see resolve
    return None


def resolve(option: str | InputConvention | None, metadata: dict[str, str], *, where: str = "model",
            data_stats=None, scalar_data_stats=None) -> InputConvention:
    """The convention to feed a teacher with: the option, else its metadata, else the identity.

    A teacher of an earlier ``dfkd-meta train`` (metadata with only the dropout record) was trained
    on raw values normalised by the training data's scalar mean and std: ``scalar_data_stats``
    computes those. ``data_stats`` serves the ``data`` option.
    """
    if isinstance(option, InputConvention):
        return option
    if option is not None:
        return parse(option, data_stats)
    found = from_model(metadata, where)
    if found is None:
        return IDENTITY
    if found.source == "legacy_train":
        if scalar_data_stats is None:
            raise UsageError(f"{where}: an earlier dfkd-meta train wrote this teacher, which normalised by its "
                             "training data's mean and std; pass them with {input_norm} MEAN/STD")
        mean, std = scalar_data_stats()
        return InputConvention("data", (float(mean),), (float(std),), source="legacy_train")
    return found


def from_domain(domain: dict) -> InputConvention:
    """The convention a recorded input domain (a sidecar's, a transfer file's) describes."""
    name = domain.get("convention") if domain.get("convention") in NAMES else "custom"
    return InputConvention(name, tuple(float(v) for v in domain["norm_mean"]),
                           tuple(float(v) for v in domain["norm_std"]),
                           float(domain["value_min"]) if "value_min" in domain else None,
                           float(domain["value_max"]) if "value_max" in domain else None, source="recorded")


__all__ = ["InputConvention", "IDENTITY", "parse", "resolve", "from_model", "from_domain", "METADATA_KEY", "NAMES",
           "SOURCES", "CHOICES_HELP"]
