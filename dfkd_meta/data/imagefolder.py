"""``imagefolder:DIR``: labelled image files in one folder per class, decoded batch by batch.

Layout, as torchvision's ImageFolder: ``DIR/<class>/<image>`` is the train split; or ``DIR/train/<class>/...``
with ``DIR/test/...`` (and ``DIR/val/...``) beside it. Class order is the sorted folder names of the train
split, recorded as the class names; another split's class folders must be among them. PNG, JPEG, BMP and
WebP files are decoded with Pillow; other files and hidden ones are ignored.

Nothing but the file list is held in memory: ``batches`` decodes the files of one batch at a time, so
memory is set by the batch, not by the data. Pixels are scaled to [0, 1] (8-bit and 16-bit files). The
channel count is the files': one when a sample of them is all grayscale (a ``Feed`` repeats it for a
model taking RGB), else three, and a file of the other kind is converted (luminance, or gray repeated),
counted in ``converted``. Images are not resized unless ``resize`` asks (as for IDX data: padding when
growing by an even margin, else bilinear); without it, every image must have the first one's size. A
file that cannot be decoded is an error naming it.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DfkdError, UsageError
from . import DataSource, resize_images

SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp"})
SPLIT_FOLDERS = ("train", "val", "test")
GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F", "P"})
SAMPLE = 256  # files whose headers decide the channel count and the size


@dataclass
class ImageFiles:
    """One split: the files and their class indices, in a fixed order (class, then file name)."""

    paths: list[Path]
    labels: np.ndarray  # int64 [N]

    def take(self, idx: np.ndarray) -> ImageFiles:
        return ImageFiles([self.paths[i] for i in idx], self.labels[idx])


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES and not p.name.startswith(".")
                  and p.is_file())


def _class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def scan(folder: Path) -> tuple[list[str], dict[str, ImageFiles]]:
    """The class names and each split's files; a folder without images is a one-line error."""
    if not folder.is_dir():
        raise UsageError(f"{folder}: no such folder; {{data}} imagefolder:DIR takes a folder of class folders")
    subfolders = {p.name: p for p in _class_folders(folder)}
    split_roots = ({s: subfolders[s] for s in SPLIT_FOLDERS if s in subfolders} if "train" in subfolders
                   and set(subfolders) <= set(SPLIT_FOLDERS) else {"train": folder})
    classes = [p.name for p in _class_folders(split_roots["train"])]
    if not classes:
        raise DfkdError(f"{split_roots['train']}: no class folders; imagefolder:DIR expects DIR/<class>/<image> "
                        "(or DIR/train/<class>/<image>)")
    index = {name: i for i, name in enumerate(classes)}
    splits = {}
    for split, root in split_roots.items():
        paths, labels = [], []
        for sub in _class_folders(root):
            if sub.name not in index:
                raise DfkdError(f"{sub}: class folder {sub.name!r} is not among the train split's classes "
                                f"({', '.join(classes[:8])}{', ...' if len(classes) > 8 else ''})")
            files = _images_in(sub)
            paths += files
            labels += [index[sub.name]] * len(files)
        if not paths:
            raise DfkdError(f"{root}: no PNG, JPEG, BMP or WebP files in its class folders")
        if split == "train":
            empty = [c for c in classes if index[c] not in set(labels)]
            if empty:
                raise DfkdError(f"{root / empty[0]}: a class folder without images ({len(empty)} in all); "
                                "remove it or add its images")
        splits[split] = ImageFiles(paths, np.asarray(labels, dtype=np.int64))
    return classes, splits


def _open(path: Path):
    from PIL import Image

    try:
        return Image.open(path)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DfkdError(f"{path}: not a readable image ({type(exc).__name__}: {exc}); remove or replace the "
                        "file") from None


def _is_gray(im) -> bool:
    """Whether a Pillow image holds gray values (a palette counts when its colours are gray)."""
    return im.mode in GRAY_MODES and not (im.mode == "P" and im.palette is not None and im.palette.mode != "L")


def probe(files: ImageFiles, seed: int = 0) -> tuple[int, tuple[int, int]]:
    """Channel count (1 if every sampled file is grayscale, else 3) and the first file's size (H, W)."""
    rng = np.random.default_rng(seed)
    sample = [files.paths[0]] + [files.paths[i] for i in rng.permutation(len(files.paths))[:SAMPLE]]
    channels, size = 1, None
    for path in sample:
        with _open(path) as im:
            if size is None:
                size = (im.height, im.width)
            if not _is_gray(im):
                channels = 3
    return channels, size


@dataclass
class ImageFolderSource(DataSource):
    """A ``DataSource`` whose splits are image files, decoded per batch (``raw`` stays empty)."""

    files: dict[str, ImageFiles] = field(default_factory=dict)
    channels: int = 3
    native_size: tuple[int, int] = (0, 0)
    converted: int = 0  # files decoded into the other channel count (counted as they are met)
    workers: int = field(default_factory=lambda: max(1, min(4, os.cpu_count() or 1)))
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    # --- what DataSource reads from `raw`, from the file lists instead
    def has_split(self, split: str) -> bool:
        return split in self.files

    def _files(self, split: str) -> ImageFiles:
        if split not in self.files:
            raise UsageError(f"{self.spec or self.name}: no {split!r} split; it has {sorted(self.files)}")
        return self.files[split]

    @property
    def is_image(self) -> bool:
        return True

    @property
    def input_shape(self) -> tuple[int, ...]:
        h, w = (self.resize, self.resize) if self.resize else self.native_size
        return self.channels, h, w

    def value_range(self) -> tuple[float, float]:
        return 0.0, 1.0

    def size(self, split: str = "train") -> int:
        return len(self._files(split).labels)

    def labels(self, split: str = "train") -> np.ndarray:
        return self._files(split).labels

    def with_validation(self, size: int, seed: int = 0) -> ImageFolderSource:
        files = self._files("train")
        if "val" in self.files:
            raise UsageError(f"{self.spec or self.name}: already has a 'val' split")
        n = len(files.labels)
        if not 0 < size < n:
            raise UsageError(f"{self.spec or self.name}: a validation split of {size} examples needs 0 < size < {n} "
                             "(the train split's size)")
        held = np.zeros(n, bool)
        held[np.random.default_rng(seed).permutation(n)[:size]] = True
        splits = {**self.files, "train": files.take(np.flatnonzero(~held)), "val": files.take(np.flatnonzero(held))}
        return ImageFolderSource(name=self.name, description=f"{self.description}; train split less {size} "
                                 f"validation examples (seed {seed})", license=self.license,
                                 class_names=list(self.class_names), raw={}, resize=self.resize, spec=self.spec,
                                 files=splits, channels=self.channels, native_size=self.native_size,
                                 workers=self.workers)

    def subset(self, idx: np.ndarray, split: str = "train", note: str = "") -> ImageFolderSource:
        return ImageFolderSource(name=self.name, description=f"{self.description}; {len(idx)} examples of {split} "
                                 f"{note}", license=self.license, class_names=list(self.class_names), raw={},
                                 resize=self.resize, spec=self.spec, files={"train": self._files(split).take(idx)},
                                 channels=self.channels, native_size=self.native_size, workers=self.workers)

    # --- decoding
    def _decode(self, path: Path) -> np.ndarray:
        """One file as float32 [C, H, W] in [0, 1], converted to the source's channel count and resized."""
        with _open(path) as im:
            try:
                im.load()
                gray = _is_gray(im)
                if im.mode in ("I", "I;16", "I;16B", "I;16L"):
                    x = np.asarray(im, dtype=np.float32) / 65535.0
                    x = x[None] if self.channels == 1 else np.repeat(x[None], 3, axis=0)
                else:
                    x = np.asarray(im.convert("L" if self.channels == 1 else "RGB"), dtype=np.float32) / 255.0
                    x = x[None] if x.ndim == 2 else x.transpose(2, 0, 1)
            except (OSError, ValueError, SyntaxError) as exc:
                raise DfkdError(f"{path}: cannot be decoded ({type(exc).__name__}: {exc}); remove or replace "
                                "the file") from None
        if gray != (self.channels == 1):
            with self._lock:
                self.converted += 1
        if self.resize:
            x = resize_images(x[None], self.resize)[0]
        elif tuple(x.shape[1:]) != tuple(self.native_size):
            raise DfkdError(f"{path}: {x.shape[2]}x{x.shape[1]} pixels, other images {self.native_size[1]}x"
                            f"{self.native_size[0]}; pass {{resize}} to bring every image to one square size")
        return np.ascontiguousarray(x, dtype=np.float32)

    def _raw_files(self, files: list[Path]) -> np.ndarray:
        if self.workers > 1 and len(files) > 1:
            with ThreadPoolExecutor(self.workers) as pool:  # Pillow decodes with the GIL released
                return np.stack(list(pool.map(self._decode, files)))
        return np.stack([self._decode(p) for p in files])

    def _take(self, split: str, idx: np.ndarray) -> np.ndarray:
        """Decode the files of one batch (what the inherited ``batches`` asks for)."""
        paths = self._files(split).paths
        return self._raw_files([paths[i] for i in idx])

    def _raw_blocks(self, split: str):
        """Decoded (and resized) raw values, 256 files at a time, for the inherited statistics."""
        files = self._files(split)
        for start in range(0, len(files.paths), 256):
            yield self._raw_files(files.paths[start:start + 256])


def load_imagefolder_source(folder: str | os.PathLike) -> ImageFolderSource:
    """``imagefolder:DIR`` (see the module docstring); only headers are read here."""
    folder = Path(folder)
    classes, splits = scan(folder)
    channels, native = probe(splits["train"])
    counts = ", ".join(f"{len(f.labels):,} {s}" for s, f in splits.items())
    return ImageFolderSource(name=folder.name, description=f"image files in class folders of {folder.name}/ "
                             f"({counts}; {len(classes)} classes; {channels} channel{'s' if channels > 1 else ''})",
                             license="unknown", class_names=classes, raw={}, files=splits, channels=channels,
                             native_size=native)
