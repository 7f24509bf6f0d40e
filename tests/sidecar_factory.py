"""Build in-memory sidecars for tests (hypothesis strategies and a plain example)."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
from hypothesis import strategies as st

from dfkd_meta.sidecar import (
    ChannelStats,
    DatasetProvenance,
    InputDomain,
    LayerStats,
    ModelBinding,
    PrivacyBlock,
    Sidecar,
    SpectralStats,
)


def binding(num_classes: int, class_names=None, shape=(64,)) -> ModelBinding:
    return ModelBinding(file_name="model.onnx", sha256="ab" * 32, ir_version=8, opset_imports={"": 17},
                        input_name="x", input_shape=(-1, *shape), input_dtype="float32", logits_name="logits",
                        num_classes=num_classes, input_domain=InputDomain("NC", 0.0, 1.0, (0.5,), (0.25,)),
                        external_data={"model.onnx.data": "cd" * 32}, class_names=class_names)


def layer(rng: np.random.Generator, key: str, order: int, shape: tuple[int, ...], c: int, kind="pre_activation",
          cov_rank=0, channel=False, keep=None) -> LayerStats:
    u = math.prod(shape)
    std = rng.uniform(0.1, 2.0, (c, u)).astype(np.float32)
    cov = None
    if cov_rank:
        f = rng.normal(0, 1, (c, u, cov_rank))
        cov = (f * (0.5 * std / np.sqrt((f ** 2).sum(-1)))[..., None]).astype(np.float32)
    ch = ChannelStats(rng.normal(0, 1, (c, shape[0])).astype(np.float32),
                      rng.uniform(0, 1, (c, shape[0])).astype(np.float32)) if channel else None
    return LayerStats(key=key, tensor_name=f"/{key}/out", order=order, kind=kind, shape=shape,
                      mean=rng.normal(0, 3, (c, u)).astype(np.float32), std=std,
                      count=np.full(c, 5, np.int64), temperature=8.0 if kind == "logits" else None,
                      dropout_keep_prob=keep, cov_factors=cov, channel=ch)


def coarsen(rng: np.random.Generator, x: LayerStats, granularity: str) -> LayerStats:
    """``x`` stored at ``granularity`` (SPEC §8.1): channel statistics, plus pooled unit statistics for channel_unit."""
    if granularity == "unit":
        return x
    c, ch = len(x.count), x.shape[0]
    channel = ChannelStats(rng.normal(0, 1, (c, ch)).astype(np.float32), rng.uniform(0, 1, (c, ch)).astype(np.float32))
    pooled = granularity == "channel_unit"
    return dataclasses.replace(x, mean=None, std=None, cov_factors=None, channel=channel, granularity=granularity,
                               pooled_mean=rng.normal(0, 1, x.units).astype(np.float32) if pooled else None,
                               pooled_std=rng.uniform(0, 1, x.units).astype(np.float32) if pooled else None)


def spectral(rng: np.random.Generator, key: str, scope: str, layers: list[LayerStats], k: int, c: int) -> SpectralStats:
    n = sum(x.units for x in layers)
    q, _ = np.linalg.qr(rng.normal(0, 1, (n, k)))
    return SpectralStats(key=key, scope=scope, layers=[x.key for x in layers], k=k,
                         eigenvalues=np.sort(rng.uniform(0, 2, k)), basis=q.astype(np.float32),
                         coef_mean=rng.normal(0, 1, (c, k)).astype(np.float32),
                         coef_std=rng.uniform(0, 1, (c, k)).astype(np.float32),
                         weight_tensors=["W"] if len(layers) > 1 else [])


def full_example(seed: int = 0, c: int = 4) -> Sidecar:
    """Every optional element present."""
    rng = np.random.default_rng(seed)
    layers = [layer(rng, "conv", 0, (3, 4, 4), c, channel=True),
              layer(rng, "fc", 1, (12,), c, cov_rank=2, keep=0.5),
              layer(rng, "logits", 2, (c,), c, kind="logits")]
    return Sidecar(
        model=binding(c, class_names=[f"class é{i}" for i in range(c)]),
        dataset=DatasetProvenance("toy", 5 * c, np.full(c, 5, np.int64), "a toy data set", "CC0-1.0"),
        layers=layers,
        spectral=[spectral(rng, "all_layers", "all_layers", layers, 5, c),
                  spectral(rng, "pair_fc_logits", "layer_pair", layers[1:], 3, c)],
        privacy=PrivacyBlock("gaussian", 2.0, 1e-6, 1.5, ["layers", "spectral"], "RDP accountant"),
        created_utc="2026-11-21T12:00:00Z", writer_version="test")


TEXT = st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",))  # SPEC §1: UTF-8, no U+0000


@st.composite
def sidecars(draw) -> Sidecar:
    c = draw(st.integers(2, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n_layers = draw(st.integers(1, 3))
    layers = []
    for i in range(n_layers):
        last = i == n_layers - 1 and draw(st.booleans())
        shape = (c,) if last else tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=3)))
        layers.append(layer(rng, f"l{i}", i * 3, shape, c, kind="logits" if last else
                            draw(st.sampled_from(["pre_activation", "post_activation"])),
                            cov_rank=draw(st.integers(0, 2)), channel=len(shape) > 1 and draw(st.booleans()),
                            keep=draw(st.none() | st.floats(0.05, 1.0))))
        if len(shape) > 1:  # format 2.0: a map may be stored per channel
            layers[-1] = coarsen(rng, layers[-1], draw(st.sampled_from(["unit", "channel_unit", "channel"])))
    names = draw(st.none() | st.lists(st.text(TEXT, min_size=0, max_size=12), min_size=c, max_size=c))
    spec = []
    if draw(st.booleans()):
        n = sum(x.units for x in layers)
        spec.append(spectral(rng, "all_layers", "all_layers", layers, draw(st.integers(1, n)), c))
    privacy = draw(st.none() | st.builds(
        PrivacyBlock, mechanism=st.just("gaussian"), epsilon=st.floats(0.01, 100), delta=st.floats(0, 0.5),
        clip_norm=st.floats(0.01, 10), applies_to=st.just(["layers"]), description=st.none() | st.text(TEXT, max_size=20)))
    counts = np.full(c, 5, np.int64)
    return Sidecar(model=binding(c, names), dataset=DatasetProvenance(draw(st.text(TEXT, min_size=1, max_size=10)),
                                                                      int(counts.sum()), counts),
                   layers=layers, spectral=spec, privacy=privacy, created_utc="2026-11-21T12:00:00Z",
                   writer_version="test")


def assert_equal(a, b, where="sidecar") -> None:
    """Exact, field-by-field equality, arrays compared bit for bit (dtype included)."""
    if dataclasses.is_dataclass(a):
        assert type(a) is type(b), where
        for f in dataclasses.fields(a):
            assert_equal(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    elif isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), where
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_equal(x, y, f"{where}[{i}]")
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            assert_equal(a[k], b[k], f"{where}[{k!r}]")
    else:
        assert type(a) is type(b) and a == b, (where, a, b)
