"""Labelled data sources named by one ``--data`` syntax; nothing is ever downloaded.

- ``digits``      scikit-learn's bundled 8x8 digits (the embedded default), split 80/20.
- ``mnist:DIR``   a folder of MNIST-layout IDX files (gzipped or raw): MNIST, Fashion-MNIST, ...
- ``npz:FILE``    arrays ``x`` and ``y`` (``x_test``/``y_test`` optional), loaded without pickle:
                  images [N, H, W] or [N, C, H, W], or flat feature vectors [N, D].
- ``imagefolder:DIR`` image files in one folder per class (``data/imagefolder.py``), decoded batch by batch,
                  never held in memory whole.
- ``fashion-demo`` the 2,000 held-out Fashion-MNIST test images shipped with the demo release
                  (padded to 32x32 like its teacher's inputs; a test split only, for evaluation).

A source holds *raw* values: uint8 images scaled to [0, 1], float arrays as they are. It never
normalises on its own: a ``Feed`` (a teacher's input convention, then the teacher's input shape)
turns raw examples into model inputs, and every caller of ``batches`` says which feed it wants.
``resize`` pads images (when growing by an even margin, as classic LeNet does with 28 -> 32) or
interpolates them to a square size.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..assets import FASHION_CLASSES, FASHION_SLICE
from ..convention import IDENTITY, InputConvention
from ..errors import DfkdError, UsageError

SPLITS = ("train", "test")
LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601-2 luma, Pillow's RGB -> L


@dataclass(frozen=True)
class Feed:
    """Raw examples -> a model's inputs: the input convention per channel, then the model's input shape.

    ``model_shape`` None keeps the data's shape; a model taking flat vectors gets images flattened
    in C order; one-channel images fed to a model taking C channels of the same size get their channel
    repeated C times, and RGB images fed to a one-channel model their luminance (as image libraries
    convert between grayscale and RGB). Other mismatches are a one-line error.
    """

    convention: InputConvention = IDENTITY
    model_shape: tuple[int, ...] | None = None

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        shape = tuple(self.model_shape) if self.model_shape is not None else None
        if shape is not None and raw.ndim == 4 and len(shape) == 3 and tuple(raw.shape[2:]) == shape[1:]:
            if raw.shape[1] == 1 < shape[0]:
                raw = np.repeat(raw, shape[0], axis=1)
            elif raw.shape[1] == 3 and shape[0] == 1:  # RGB to luminance, as image libraries convert it (ITU-R 601)
                raw = np.tensordot(LUMA, raw, axes=([0], [1]))[:, None].astype(raw.dtype, copy=False)
        x = self.convention.apply(raw)
        if shape is None or tuple(x.shape[1:]) == shape:
            return x
        if math.prod(x.shape[1:]) != math.prod(shape):
            raise UsageError(f"examples of shape {list(x.shape[1:])} cannot feed a model taking {list(shape)}; "
                             "pass data of the model's input size ({resize} pads or resizes images)")
        return x.reshape(len(x), *shape)


RAW = Feed()  # raw values, the data's own shape


@dataclass
class DataSource:
    """A labelled data set held in memory as raw values; ``batches`` feeds them through a ``Feed``."""

    name: str
    description: str
    license: str
    class_names: list[str]
    raw: dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (x uint8 or float [N, C, H, W] or [N, D], y int64 [N])
    resize: int | None = None
    spec: str = ""
    # per-split channel moments: a convention's numbers and the export's rival check both ask for them
    _channel_stats: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _examples(self) -> np.ndarray:
        """The examples that define shape and range: the train split's, or the only split a test-only source has."""
        return (self.raw["train"] if "train" in self.raw else next(iter(self.raw.values())))[0]

    @property
    def is_image(self) -> bool:
        return self._examples().ndim == 4

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Per-example shape of the raw examples after resizing: (C, H, W) or (D,)."""
        x = self._examples()
        if not self.is_image:
            return tuple(x.shape[1:])
        c, h, w = x.shape[1:]
        return (c, self.resize, self.resize) if self.resize else (c, h, w)

    @property
    def layout(self) -> str:
        return "NCHW" if self.is_image else "NC"

    def value_range(self) -> tuple[float, float]:
        """Raw value range: [0, 1] for uint8 images or floats inside it, else the train split's min and max."""
        x = self._examples()
        if x.dtype == np.uint8:
            return 0.0, 1.0
        lo, hi = float(x.min()), float(x.max())
        if 0.0 <= lo and hi <= 1.0:
            return 0.0, 1.0
        return (lo, hi) if lo < hi else (lo, lo + 1.0)

    def channel_stats(self, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (axis 1) mean and std of the raw values, float64, streamed once per split; a constant
        channel gets std 1."""
        if split not in self._channel_stats:
            self._channel_stats[split] = self._compute_channel_stats(split)
        mean, std = self._channel_stats[split]
        return mean.copy(), std.copy()

    def _compute_channel_stats(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        return channel_moments(self._raw_blocks(split))

    def scalar_stats(self, split: str = "train") -> tuple[float, float]:
        """Mean and std of all raw values of the split together (what earlier `dfkd-meta train` normalised by)."""
        return scalar_moments(self._raw_blocks(split))

    def _raw_blocks(self, split: str) -> Iterator[np.ndarray]:
        """The split's raw values in float64 blocks, as stored (not resized), for the statistics above."""
        x = self._split(split)[0]
        scale = 255.0 if x.dtype == np.uint8 else 1.0
        for start in range(0, len(x), 8192):
            yield x[start:start + 8192].astype(np.float64) / scale

    def size(self, split: str = "train") -> int:
        return len(self._split(split)[1])

    def labels(self, split: str = "train") -> np.ndarray:
        return self._split(split)[1]

    def has_split(self, split: str) -> bool:
        return split in self.raw

    def with_validation(self, size: int, seed: int = 0) -> DataSource:
        """A copy whose train split is cut in two: ``val``, ``size`` examples drawn at random (``seed``; the same
        on every machine), and ``train``, the rest in their original order. Teachers and sidecars made from
        ``train`` never see ``val``, so settings chosen on it leave ``test`` unread until a result is reported."""
        x, y = self._split("train")
        if "val" in self.raw:
            raise UsageError(f"{self.spec or self.name}: already has a 'val' split")
        if not 0 < size < len(y):
            raise UsageError(f"{self.spec or self.name}: a validation split of {size} examples needs 0 < size < "
                             f"{len(y)} (the train split's size)")
        held = np.zeros(len(y), bool)
        held[np.random.default_rng(seed).permutation(len(y))[:size]] = True
        raw = {**self.raw, "train": (x[~held], y[~held]), "val": (x[held], y[held])}
        return DataSource(name=self.name, description=f"{self.description}; train split less {size} validation "
                          f"examples (seed {seed})", license=self.license, class_names=list(self.class_names),
                          raw=raw, resize=self.resize, spec=self.spec)

    def subset(self, idx: np.ndarray, split: str = "train", note: str = "") -> DataSource:
        """A source whose only split, ``train``, is the examples ``idx`` of ``split`` (in that order)."""
        x, y = self._split(split)
        return DataSource(name=self.name, description=f"{self.description}; {len(idx)} examples of {split} {note}",
                          license=self.license, class_names=list(self.class_names), raw={"train": (x[idx], y[idx])},
                          resize=self.resize, spec=self.spec)

    def _split(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        if split not in self.raw:
            raise UsageError(f"{self.spec or self.name}: no {split!r} split; it has {sorted(self.raw)}")
        return self.raw[split]

    def _raw_batch(self, x: np.ndarray) -> np.ndarray:
        scale = 255.0 if x.dtype == np.uint8 else 1.0
        x = x.astype(np.float32)
        if scale != 1.0:
            x *= np.float32(1.0 / scale)
        if self.resize:
            x = resize_images(x, self.resize)  # pads with raw 0 (a black pixel)
        return x

    def batches(self, split: str = "train", batch_size: int = 256, *, feed: Feed, shuffle: bool = False,
                seed: int = 0, limit: int | None = None, shard: tuple[int, int] = (0, 1)
                ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(model inputs float32 [B, ...] through ``feed``, labels int64 [B]) batches; only one batch's raw values
        are made at a time (``_take``). ``shard`` (rank, world size): only the batches whose index is ``rank``
        modulo the world size, so each process of a run reads (and decodes) its own share and nothing else."""
        y = self.labels(split)
        order = np.random.default_rng(seed).permutation(len(y)) if shuffle else np.arange(len(y))
        if limit is not None:
            order = order[:limit]
        rank, world = shard
        for start in range(rank * batch_size, len(order), world * batch_size):
            idx = order[start:start + batch_size]
            yield feed(self._take(split, idx)), y[idx]

    def take(self, split: str, idx: np.ndarray, *, feed: Feed) -> np.ndarray:
        """Model inputs (through ``feed``) of the split's examples ``idx``, in that order."""
        return feed(self._take(split, idx))

    def _take(self, split: str, idx: np.ndarray) -> np.ndarray:
        """The raw float32 batch of the split's examples ``idx`` (resized when asked)."""
        return self._raw_batch(self._split(split)[0][idx])

    def arrays(self, split: str = "train", *, feed: Feed, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The whole split at once (small data sets and tests)."""
        xs, ys = zip(*self.batches(split, 4096, feed=feed, limit=limit))
        return np.concatenate(xs), np.concatenate(ys)


def channel_moments(blocks: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (axis 1) mean and std, float64, of raw blocks [B, C, ...] streamed once; a constant channel (a
    border pixel, a constant feature) gets std 1 rather than dividing by ~0."""
    total = sq = None
    n = 0
    for block in blocks:
        block = np.asarray(block, np.float64)
        axes = (0,) + tuple(range(2, block.ndim))
        s1, s2 = block.sum(axis=axes), np.square(block).sum(axis=axes)
        total, sq = (s1, s2) if total is None else (total + s1, sq + s2)
        n += block.size // block.shape[1]
    if total is None:
        raise DfkdError("no examples to take statistics of")
    mean = total / n
    std = np.sqrt(np.maximum(sq / n - mean * mean, 0.0))
    return mean, np.where(std > 1e-6 * max(1.0, float(np.abs(mean).max())), std, 1.0)


def scalar_moments(blocks: Iterable[np.ndarray]) -> tuple[float, float]:
    """Mean and std of every raw value of the blocks together."""
    total, sq, n = 0.0, 0.0, 0
    for block in blocks:
        block = np.asarray(block, np.float64)
        total, sq, n = total + block.sum(), sq + np.square(block).sum(), n + block.size
    if n == 0:
        raise DfkdError("no examples to take statistics of")
    mean = total / n
    return float(mean), float(max(np.sqrt(max(sq / n - mean * mean, 0.0)), 1e-6))


def fits(data_shape: tuple[int, ...], model_shape: tuple[int, ...] | None) -> bool:
    """Whether inputs of ``data_shape`` can feed a model taking ``model_shape`` (itself, or flattened)."""
    if model_shape is None:
        return False
    return tuple(model_shape) == tuple(data_shape) or (
        len(model_shape) == 1 and model_shape[0] == int(np.prod(data_shape)))


def resize_images(x: np.ndarray, size: int) -> np.ndarray:
    """Images [N, C, H, W] to [N, C, size, size]: zero padding when growing by an even margin (28 -> 32, as
    classic LeNet does), else bilinear interpolation."""
    h, w = x.shape[-2:]
    if size >= h and size >= w and (size - h) % 2 == 0 and (size - w) % 2 == 0:
        ph, pw = (size - h) // 2, (size - w) // 2
        return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    import torch  # interpolation only when padding cannot do it

    t = torch.nn.functional.interpolate(torch.from_numpy(np.ascontiguousarray(x)), size=(size, size),
                                        mode="bilinear", align_corners=False)
    return t.numpy()


# --- digits --------------------------------------------------------------------------------------

def load_digits_source() -> DataSource:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]
    y = d.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))  # fixed split, same on every machine
    cut = int(0.8 * len(y))
    train, test = order[:cut], order[cut:]
    return DataSource(name="digits", description="scikit-learn's bundled UCI optical handwritten digits, 8x8, "
                      "values 0..16 scaled to [0, 1]; fixed 80/20 split (seed 0)", license="CC-BY-4.0",
                      class_names=[str(i) for i in range(10)], raw={"train": (x[train], y[train]),
                                                                    "test": (x[test], y[test])})


# --- MNIST-layout IDX ----------------------------------------------------------------------------

_IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_MAX_IDX_BYTES = 1 << 31


def _open_idx(folder: Path, stem: str) -> tuple[Path, bytes]:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            raw = candidate.read_bytes()
            if candidate.suffix == ".gz":
                try:
                    with gzip.GzipFile(fileobj=io.BytesIO(raw)) as g:
                        data = g.read(_MAX_IDX_BYTES + 1)
                except (OSError, EOFError) as exc:
                    raise DfkdError(f"{candidate}: not a readable gzip file ({exc}); re-download it") from None
                if len(data) > _MAX_IDX_BYTES:
                    raise DfkdError(f"{candidate}: decompresses to more than 2 GiB; not an MNIST-layout file")
                return candidate, data
            return candidate, raw
    raise UsageError(f"{folder}: missing {stem}(.gz); an MNIST-layout folder holds "
                     "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
                     "t10k-labels-idx1-ubyte, gzipped or not")


def parse_idx(data: bytes, path: Path | str = "<idx>") -> np.ndarray:
    """An IDX file's array (uint8 only, as MNIST uses), checking its header against its size."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DfkdError(f"{path}: not an IDX file (bad magic); expected MNIST-layout data")
    if data[2] != 0x08:
        raise DfkdError(f"{path}: IDX element type 0x{data[2]:02x}; only unsigned bytes (0x08) are supported")
    ndim = data[3]
    if ndim < 1 or len(data) < 4 + 4 * ndim:
        raise DfkdError(f"{path}: truncated IDX header")
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    expected = 4 + 4 * ndim + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        raise DfkdError(f"{path}: IDX header declares {dims} ({expected} bytes) but the file has {len(data)}; "
                        "the file is truncated or corrupt")
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _check_sums(folder: Path) -> None:
    sums = folder / "SHA256SUMS"
    if not sums.is_file():
        return
    for line in sums.read_text().splitlines():
        parts = line.split()
        if len(parts) != 2 or not (folder / parts[1]).is_file():
            continue
        if hashlib.sha256((folder / parts[1]).read_bytes()).hexdigest() != parts[0]:
            raise DfkdError(f"{folder / parts[1]}: SHA-256 differs from {sums}; the file is corrupt, re-download it")


def load_mnist_source(folder: str | os.PathLike) -> DataSource:
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"{folder}: no such folder; {{data}} mnist:DIR takes a folder of MNIST-layout IDX files")
    _check_sums(folder)
    raw = {}
    for split, (img_stem, lbl_stem) in _IDX_FILES.items():
        ipath, idata = _open_idx(folder, img_stem)
        lpath, ldata = _open_idx(folder, lbl_stem)
        images, labels = parse_idx(idata, ipath), parse_idx(ldata, lpath)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DfkdError(f"{ipath}: {images.shape} images for {labels.shape} labels; expected [N, H, W] and [N]")
        raw[split] = (images[:, None], labels.astype(np.int64))
    classes = int(max(raw["train"][1].max(), raw["test"][1].max())) + 1
    fashion = "fashion" in folder.name.lower()
    names = list(FASHION_CLASSES) if fashion and classes == 10 else [str(i) for i in range(classes)]
    return DataSource(name=folder.name, description=f"MNIST-layout IDX data from {folder.name}/ "
                      f"({len(raw['train'][1])} train, {len(raw['test'][1])} test)",
                      license="MIT" if fashion else "CC-BY-SA-3.0", class_names=names, raw=raw)


# --- npz -----------------------------------------------------------------------------------------

def load_npz_source(path: str | os.PathLike) -> DataSource:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such file; {{data}} npz:FILE takes an .npz with arrays x and y")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (ValueError, OSError) as exc:
        raise DfkdError(f"{path}: not a readable .npz without pickled objects ({exc})") from None
    if "x" not in arrays or "y" not in arrays:
        raise DfkdError(f"{path}: needs arrays 'x' and 'y' (found {sorted(arrays)})")
    raw = {"train": _npz_pair(path, arrays["x"], arrays["y"])}
    if "x_test" in arrays and "y_test" in arrays:
        raw["test"] = _npz_pair(path, arrays["x_test"], arrays["y_test"])
    classes = int(max(int(y.max()) for _, y in raw.values())) + 1
    return DataSource(name=path.stem, description=f"arrays from {path.name}", license="unknown",
                      class_names=[str(i) for i in range(classes)], raw=raw)


def _npz_pair(path: Path, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if x.dtype != np.uint8 and x.dtype.kind != "f":
        raise DfkdError(f"{path}: x has dtype {x.dtype}; use uint8 images or float values")
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim not in (2, 4) or y.ndim != 1 or len(x) != len(y) or y.dtype.kind not in "iu" or len(y) == 0:
        raise DfkdError(f"{path}: x {x.shape} / y {y.shape} {y.dtype}; need x as images [N, (C,) H, W] or "
                        "feature vectors [N, D], and integer labels y [N], N >= 1")
    if y.min() < 0:
        raise DfkdError(f"{path}: negative class labels; labels are class indices 0..C-1")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise DfkdError(f"{path}: x holds NaN or infinite values; clean the data first")
    return x, y.astype(np.int64)


# --- the embedded Fashion-MNIST test slice --------------------------------------------------------

def load_fashion_slice() -> DataSource:
    with np.load(FASHION_SLICE, allow_pickle=False) as f:
        x, y = f["x_test"], f["y_test"]
    return DataSource(name="fashion-demo", description="2,000 Fashion-MNIST test images (200 per class, padded "
                      "28 -> 32), shipped with the demo release for evaluation only", license="MIT",
                      class_names=list(FASHION_CLASSES), raw={"test": (x[:, None], y.astype(np.int64))})


# --- the --data syntax ---------------------------------------------------------------------------

def load_data(spec: str, resize: int | None = None) -> DataSource:
    """Parse ``digits``, ``fashion-demo``, ``mnist:DIR``, ``npz:FILE`` or ``imagefolder:DIR`` and load it (raw values;
    see ``Feed``; image folders are decoded batch by batch)."""
    kind, _, arg = spec.partition(":")
    if kind == "digits" and not arg:
        src = load_digits_source()
    elif kind == "fashion-demo" and not arg:
        src = load_fashion_slice()
    elif kind == "mnist" and arg:
        src = load_mnist_source(arg)
    elif kind == "npz" and arg:
        src = load_npz_source(arg)
    elif kind == "imagefolder" and arg:
        from .imagefolder import load_imagefolder_source

        src = load_imagefolder_source(arg)
    else:
        raise UsageError(f"{{data}} {spec!r}: expected digits, fashion-demo, mnist:DIR, npz:FILE or imagefolder:DIR")
    if resize is not None:
        if resize < 1:
            raise UsageError(f"{{resize}} {resize}: must be a positive size")
        if not src.is_image:
            raise UsageError(f"{{resize}} {resize}: {spec} holds feature vectors, not images; drop {{resize}}")
    if "test" in src.raw and "train" in src.raw and src.raw["test"][0].shape[1:] != src.raw["train"][0].shape[1:]:
        raise DfkdError(f"{spec}: test examples have shape {list(src.raw['test'][0].shape[1:])}, train examples "
                        f"{list(src.raw['train'][0].shape[1:])}; both splits need one shape")
    src.resize, src.spec = resize, spec
    return src
