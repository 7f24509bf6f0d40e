"""What a private sidecar releases, and what one example can change in it (SPEC §10.1): the one table the writer
noises by and the validator checks against."""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence


def layer_bound(clip_norm: float, shape: Sequence[int]) -> float:
    """The L2 bound of one example's clipped values in a layer: ``clip_norm`` per unit, root mean square."""
    return clip_norm * math.sqrt(math.prod(shape))


def released_statistics(layers: Iterable[tuple[str, Sequence[int], str]], spectral: Iterable[tuple[str, Sequence[str]]],
                        applies_to: Iterable[str], clip_norm: float) -> dict[str, float]:
    """Name -> L2 sensitivity of every statistic a private sidecar releases.

    ``layers``: (key, per-example shape, granularity); ``spectral``: (key, the keys of its layers). One example
    added or removed moves a sum of its values by its clipped vector (norm at most B), a sum of their squares by
    at most B² (||v∘v|| <= ||v||²), a per-channel sum over P positions by at most B·√P, and the class counts by 1.
    """
    applies = set(applies_to)
    out: dict[str, float] = {}
    if "dataset" in applies:
        out["class_counts"] = 1.0
    bounds = {}
    for key, shape, granularity in layers:
        b = bounds[key] = layer_bound(clip_norm, shape)
        if "layers" not in applies:
            continue
        if granularity == "unit":
            out[f"layers/{key}/sums"], out[f"layers/{key}/squares"] = b, b * b
            continue
        positions = math.prod(shape[1:])
        out[f"layers/{key}/channel_sums"], out[f"layers/{key}/channel_squares"] = b * math.sqrt(positions), b * b
        if granularity == "channel_unit":
            out[f"layers/{key}/pooled_sums"], out[f"layers/{key}/pooled_squares"] = b, b * b
    if "spectral" in applies:
        for key, refs in spectral:
            b = math.sqrt(sum(bounds[r] ** 2 for r in refs))
            out[f"spectral/{key}/sums"], out[f"spectral/{key}/squares"] = b, b * b
    return out
