"""Reading untrusted HDF5 values: bounded blocks, and coercion to the schema's kinds."""
from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import h5py
import numpy as np

from .schema import AttrSpec

BLOCK_BYTES = 16 << 20  # values are read in blocks of at most this many bytes


def blocks(ds: h5py.Dataset, prefix: tuple[int, ...] = (), *, budget: int | None = None
           ) -> Iterator[tuple[tuple[int, ...], np.ndarray]]:
    """Blocks of at most ``budget`` bytes (BLOCK_BYTES), one element row at least, with their first index.

    A block is ``ds[prefix + (slice(start, stop),)]``; when even one row of the remaining axes is
    larger than the budget, the next axis is split too, so memory never grows with the file.
    """
    budget = BLOCK_BYTES if budget is None else budget
    if ds.shape is None:
        return
    if ds.ndim == 0:
        yield (), np.asarray(ds[()])
        return
    shape = ds.shape[len(prefix):]
    row_bytes = max(1, math.prod(shape[1:]) * ds.dtype.itemsize)
    if row_bytes > budget and len(shape) > 1:
        for i in range(shape[0]):
            yield from blocks(ds, prefix + (i,), budget=budget)
        return
    step = max(1, budget // row_bytes)
    for start in range(0, shape[0], step):
        yield prefix + (start,), ds[prefix + (slice(start, start + step),)]


def first_index(mask: np.ndarray, origin: tuple[int, ...]) -> list[int]:
    """Index in the dataset of the first True of a block whose first element sits at ``origin``."""
    idx = [int(i) for i in np.unravel_index(int(np.argmax(mask)), mask.shape)]
    if not origin:
        return idx
    return list(origin[:-1]) + [origin[-1] + idx[0]] + idx[1:]


def as_str(raw: Any) -> str:
    if isinstance(raw, np.ndarray) and raw.shape == ():
        raw = raw[()]
    if isinstance(raw, (bytes, np.bytes_)):
        return bytes(raw).decode("utf-8")
    if isinstance(raw, str):
        return raw
    raise TypeError


def coerce(kind: str, raw: Any) -> Any:
    """Attribute value as the schema kind; TypeError/UnicodeDecodeError if it is not that kind."""
    if kind == "str":
        return as_str(raw)
    if kind in ("int", "float"):
        arr = np.asarray(raw)
        if arr.shape != () or arr.dtype.kind not in ("iu" if kind == "int" else "iuf"):
            raise TypeError
        return int(arr) if kind == "int" else float(arr)
    arr = np.asarray(raw)
    if arr.ndim != 1:
        raise TypeError
    if kind == "str_list":
        return [as_str(x) for x in arr]
    if arr.size and arr.dtype.kind not in ("iu" if kind == "int_list" else "iuf"):
        raise TypeError
    return [int(x) for x in arr] if kind == "int_list" else [float(x) for x in arr]


def describe(raw: Any) -> str:
    arr = np.asarray(raw)
    if arr.dtype.kind in "OSU":
        return "a string" if arr.shape == () else f"an array of strings with shape {arr.shape}"
    return f"{arr.dtype} with shape {arr.shape}"


KIND_TEXT = {"str": "a string", "int": "an integer", "float": "a number",
             "str_list": "a 1-D list of strings", "int_list": "a 1-D list of integers",
             "float_list": "a 1-D list of numbers"}


def constraint_problems(spec: AttrSpec, value: Any) -> list[str]:
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


def dtype_matches(want: str, dt: np.dtype) -> bool:
    if want == "str":
        return h5py.check_string_dtype(dt) is not None
    if want == "int64":
        return dt.kind in "iu" and h5py.check_enum_dtype(dt) is None
    return dt.kind == "f" and dt.itemsize == {"float32": 4, "float64": 8}[want]


def dtype_text(dt: np.dtype) -> str:
    s = h5py.check_string_dtype(dt)
    return "string" if s is not None else str(dt.newbyteorder("="))


def allowed_dtype(dt: np.dtype) -> bool:
    """SPEC §3.2: integers, floats and strings only."""
    if h5py.check_string_dtype(dt) is not None:
        return True
    if dt.subdtype is not None or dt.names is not None:
        return False
    if dt.kind in "iu":
        return h5py.check_enum_dtype(dt) is None
    return dt.kind == "f" and dt.itemsize <= 8
