"""Any re-iterable of (x, y) batches as a data source, a torch ``DataLoader`` included (Python only).

    from dfkd_meta.data.stream import from_batches
    data = from_batches(loader, class_names=train_set.classes)        # each iter(loader) is one pass
    export_release(model, data, "release/", input_norm="imagenet")

``x`` must hold raw values (images in [0, 1], as ``ToTensor`` gives them, or features as they are), not
values normalised for the model: the input convention is the teacher's and is applied by a ``Feed``
(``input_norm``); a loader that normalises would be normalised twice, which export's teacher check
reports. Every pass calls ``iter(batches)`` again, so a plain generator (one pass only) is refused.
Examples are re-batched to the batch size each caller asks for; nothing but one batch is held.
Without a random index, a "random sample" of ``limit`` examples is the first ``limit`` of a pass.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from ..errors import DfkdError, UsageError
from . import DataSource, resize_images


def _numpy(v, what: str) -> np.ndarray:
    if hasattr(v, "detach"):  # a torch tensor
        v = v.detach().cpu().numpy()
    try:
        return np.asarray(v)
    except (TypeError, ValueError) as exc:
        raise DfkdError(f"batches: {what} is not an array ({type(v).__name__}: {exc})") from None


@dataclass
class BatchStreamSource(DataSource):
    """A ``DataSource`` whose train split is a re-iterable of (x, y) batches (``raw`` stays empty)."""

    stream: Iterable | Callable[[], Iterator] | None = None
    _shape: tuple[int, ...] | None = field(default=None, init=False, repr=False, compare=False)
    _size: int | None = field(default=None, init=False, repr=False, compare=False)
    _labels: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)

    def _pass(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """One pass over the user's batches, as checked float32 / int64 arrays."""
        it = self.stream() if callable(self.stream) and not hasattr(self.stream, "__iter__") else iter(self.stream)
        for i, item in enumerate(it):
            if not isinstance(item, (tuple, list)) or len(item) < 2:
                raise DfkdError(f"batches: item {i} is not an (x, y) pair")
            x, y = _numpy(item[0], f"x of batch {i}"), _numpy(item[1], f"y of batch {i}")
            if x.dtype == np.uint8:
                x = x.astype(np.float32) / 255.0
            if x.dtype.kind != "f" or y.dtype.kind not in "iu" or y.ndim != 1 or len(x) != len(y) or x.ndim < 2:
                raise DfkdError(f"batches: batch {i} has x {x.dtype} {list(x.shape)} and y {y.dtype} {list(y.shape)}; "
                                "need float (or uint8) x [B, ...] and integer class indices y [B]")
            if self._shape is not None and tuple(x.shape[1:]) != self._shape:
                raise DfkdError(f"batches: batch {i} has examples of shape {list(x.shape[1:])}, the first "
                                f"{list(self._shape)}; every example needs one shape")
            self._shape = tuple(x.shape[1:])
            if not np.isfinite(x).all():
                raise DfkdError(f"batches: batch {i} holds NaN or infinite values")
            if len(y) and (y.min() < 0 or y.max() >= self.num_classes):
                raise DfkdError(f"batches: batch {i} has class {int(y.min() if y.min() < 0 else y.max())}; labels "
                                f"are class indices 0..{self.num_classes - 1}")
            yield x.astype(np.float32, copy=False), y.astype(np.int64, copy=False)

    def _first_shape(self) -> tuple[int, ...]:
        if self._shape is None:
            next(self._pass(), None)
            if self._shape is None:
                raise DfkdError("batches: the first pass gave no examples")
        return self._shape

    def _count(self) -> None:
        labels = [y for _, y in self._pass()]
        self._labels = np.concatenate(labels) if labels else np.zeros(0, np.int64)
        self._size = len(self._labels)

    # --- what DataSource reads from `raw`
    def has_split(self, split: str) -> bool:
        return split == "train"

    def _check_split(self, split: str) -> None:
        if split != "train":
            raise UsageError(f"{self.name}: no {split!r} split; batches from Python give the train split only")

    @property
    def is_image(self) -> bool:
        return len(self._first_shape()) == 3

    @property
    def input_shape(self) -> tuple[int, ...]:
        shape = self._first_shape()
        return (shape[0], self.resize, self.resize) if self.resize and len(shape) == 3 else shape

    def value_range(self) -> tuple[float, float]:
        lo, hi = np.inf, -np.inf
        for x, _ in self._pass():
            lo, hi = min(lo, float(x.min())), max(hi, float(x.max()))
        if 0.0 <= lo and hi <= 1.0:
            return 0.0, 1.0
        return (lo, hi) if lo < hi else (lo, lo + 1.0)

    def size(self, split: str = "train") -> int:
        self._check_split(split)
        if self._size is None:
            self._count()
        return self._size

    def labels(self, split: str = "train") -> np.ndarray:
        self._check_split(split)
        if self._labels is None:
            self._count()
        return self._labels

    def with_validation(self, size: int, seed: int = 0):
        raise UsageError(f"{self.name}: batches from Python cannot be split; hold out the validation examples in "
                         "your own loader")

    def _raw_blocks(self, split: str):
        """Raw values one batch at a time (resized when asked), for the inherited statistics."""
        self._check_split(split)
        for x, _ in self._pass():
            yield resize_images(x, self.resize) if self.resize and x.ndim == 4 else x

    def batches(self, split="train", batch_size=256, *, feed, shuffle=False, seed=0, limit=None, shard=(0, 1)):
        """(model inputs through ``feed``, labels) re-batched to ``batch_size``; ``shuffle`` keeps the stream's own
        order (a loader shuffles itself); ``limit`` stops after that many examples. ``shard`` (rank, world size):
        the re-batched batches whose index is ``rank`` modulo the world size. Every process still iterates the whole
        stream (a Python iterable cannot be split from outside): give each process its own loader's shard instead
        where reading is the cost."""
        if shard != (0, 1):
            rank, world = shard
            for i, batch in enumerate(self.batches(split, batch_size, feed=feed, limit=limit)):
                if i % world == rank:
                    yield batch
            return
        self._check_split(split)
        xs, ys, held, given = [], [], 0, 0
        for x, y in self._pass():
            if limit is not None:
                x, y = x[:limit - given], y[:limit - given]
            given += len(y)
            xs.append(x)
            ys.append(y)
            held += len(y)
            while held >= batch_size:
                bx, by = np.concatenate(xs), np.concatenate(ys)
                yield self._feed(feed, bx[:batch_size]), by[:batch_size]
                xs, ys, held = [bx[batch_size:]], [by[batch_size:]], held - batch_size
            if limit is not None and given >= limit:
                break
        if held:
            yield self._feed(feed, np.concatenate(xs)), np.concatenate(ys)

    def _feed(self, feed, x: np.ndarray) -> np.ndarray:
        return feed(resize_images(x, self.resize) if self.resize and x.ndim == 4 else x)


def from_batches(batches: Iterable | Callable[[], Iterator], *, class_names: list[str] | None = None,
                 num_classes: int | None = None, name: str = "batches", description: str | None = None,
                 license: str = "unknown", resize: int | None = None) -> BatchStreamSource:
    """A data source over ``batches`` (see the module docstring); the classes must be given, labels being streamed."""
    if isinstance(batches, Iterator):
        raise UsageError("from_batches: a one-pass iterator (a generator?); pass something each iter() restarts (a "
                         "DataLoader, a list, or a function returning a fresh iterator): export reads the data more "
                         "than once")
    if class_names is None and num_classes is None:
        raise UsageError("from_batches: pass class_names (or num_classes): labels are streamed, so the class count "
                         "cannot be read up front")
    names = [str(c) for c in class_names] if class_names is not None else [str(i) for i in range(int(num_classes))]
    if num_classes is not None and len(names) != num_classes:
        raise UsageError(f"from_batches: {len(names)} class_names for num_classes={num_classes}")
    if len(names) < 2:
        raise UsageError("from_batches: a classifier needs at least 2 classes")
    return BatchStreamSource(name=name, description=description or f"batches from Python ({type(batches).__name__})",
                             license=license, class_names=names, raw={}, resize=resize, stream=batches)
