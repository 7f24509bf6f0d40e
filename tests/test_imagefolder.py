"""`imagefolder:DIR`: class folders of image files, decoded batch by batch, equal to the same pixels in memory."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from dfkd_meta.data import RAW, Feed, load_data
from dfkd_meta.data.imagefolder import ImageFolderSource
from dfkd_meta.errors import DfkdError, UsageError

from .conftest import digits_teacher


def _write(folder: Path, images: np.ndarray, labels: np.ndarray, classes: list[str], fmt: str = "png") -> None:
    """uint8 images [N, C, H, W] (C 1 or 3) as files folder/<class>/<i>.<fmt>."""
    for i, (x, y) in enumerate(zip(images, labels)):
        sub = folder / classes[int(y)]
        sub.mkdir(parents=True, exist_ok=True)
        pixels = x[0] if x.shape[0] == 1 else x.transpose(1, 2, 0)
        Image.fromarray(pixels).save(sub / f"{i:05d}.{fmt}")


def _images(n: int, c: int, h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, c, h, w), dtype=np.uint8), rng.permutation(np.arange(n) % 3).astype(np.int64)


def _in_file_order(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The order imagefolder lists files in: class folder, then file name (the index)."""
    order = np.lexsort((np.arange(len(y)), y))
    return x[order], y[order]


def test_pixels_and_labels_are_the_files_in_class_then_name_order(tmp_path):
    x, y = _images(30, 3, 6, 5)
    _write(tmp_path, x, y, ["cat", "bird", "dog"])
    src = load_data(f"imagefolder:{tmp_path}")
    assert isinstance(src, ImageFolderSource)
    assert src.class_names == ["bird", "cat", "dog"]  # sorted folder names, as torchvision's ImageFolder
    assert src.input_shape == (3, 6, 5) and src.channels == 3 and src.size("train") == 30
    got_x, got_y = src.arrays("train", feed=RAW)
    names = ["cat", "bird", "dog"]
    remap = np.array([src.class_names.index(n) for n in names])
    want_x, want_y = _in_file_order(x, remap[y])
    np.testing.assert_array_equal(got_y, want_y)
    np.testing.assert_allclose(got_x, want_x.astype(np.float32) / 255.0, rtol=0, atol=1e-7)


def test_batches_decode_only_their_own_files(tmp_path, monkeypatch):
    x, y = _images(20, 1, 4, 4)
    _write(tmp_path, x, y, ["a", "b", "c"])
    src = load_data(f"imagefolder:{tmp_path}")
    decoded = []
    original = ImageFolderSource._decode
    monkeypatch.setattr(ImageFolderSource, "_decode", lambda self, p: decoded.append(p) or original(self, p))
    it = src.batches("train", 8, feed=RAW)
    first, _ = next(it)
    assert first.shape == (8, 1, 4, 4) and len(decoded) == 8
    rest = [b for b, _ in it]
    assert [len(b) for b in rest] == [8, 4] and len(decoded) == 20


def test_a_train_test_layout_gives_two_splits_with_the_train_classes(tmp_path):
    x, y = _images(12, 1, 4, 4)
    _write(tmp_path / "train", x, y, ["a", "b", "c"])
    _write(tmp_path / "test", x[:6], y[:6] % 2, ["a", "b", "c"])
    src = load_data(f"imagefolder:{tmp_path}")
    assert src.has_split("test") and src.size("test") == 6 and src.class_names == ["a", "b", "c"]
    assert set(src.labels("test")) <= {0, 1}


def test_grayscale_files_stay_one_channel_and_feed_an_rgb_model(tmp_path):
    x, y = _images(9, 1, 5, 5)
    _write(tmp_path, x, y, ["a", "b", "c"])
    src = load_data(f"imagefolder:{tmp_path}")
    assert src.channels == 1
    rgb, _ = next(src.batches("train", 9, feed=Feed(model_shape=(3, 5, 5))))
    assert rgb.shape == (9, 3, 5, 5) and np.array_equal(rgb[:, 0], rgb[:, 2])


def test_rgb_files_feed_a_one_channel_model_their_luminance(tmp_path):
    x, y = _images(6, 3, 4, 4)
    _write(tmp_path, x, y, ["a", "b", "c"])
    src = load_data(f"imagefolder:{tmp_path}")
    gray, _ = next(src.batches("train", 6, feed=Feed(model_shape=(1, 4, 4))))
    want_x, _ = _in_file_order(x, y)
    pil = np.stack([np.asarray(Image.fromarray(im.transpose(1, 2, 0)).convert("L")) for im in want_x])
    assert gray.shape == (6, 1, 4, 4)
    np.testing.assert_allclose(gray[:, 0], pil / 255.0, atol=1.01 / 255)  # Pillow rounds to uint8


def test_sixteen_bit_files_are_scaled_to_one(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for i, value in enumerate([0, 65535, 32768]):
        Image.fromarray(np.full((3, 3), value, np.uint16)).save(tmp_path / ("a" if i else "b") / f"{i}.png")
    src = load_data(f"imagefolder:{tmp_path}")
    x, _ = src.arrays("train", feed=RAW)
    assert src.channels == 1 and sorted(np.unique(x).round(4).tolist()) == [0.0, 0.5, 1.0]


def test_images_of_another_size_need_resize(tmp_path):
    x, y = _images(6, 1, 8, 8)
    _write(tmp_path, x, y, ["a", "b", "c"])
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(tmp_path / "c" / "zz-odd.png")
    src = load_data(f"imagefolder:{tmp_path}")
    with pytest.raises(DfkdError, match=r"zz-odd.png: 12x10 pixels, other images 8x8; pass resize to bring every image"):
        src.arrays("train", feed=RAW)
    resized = load_data(f"imagefolder:{tmp_path}", resize=8)
    assert resized.arrays("train", feed=RAW)[0].shape == (7, 1, 8, 8)


def test_a_corrupt_file_is_one_error_naming_it(tmp_path):
    x, y = _images(6, 1, 4, 4)
    _write(tmp_path, x, y, ["a", "b", "c"])
    (tmp_path / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    with pytest.raises(DfkdError, match=r"broken.png: not a readable image .*; remove or replace the file"):
        load_data(f"imagefolder:{tmp_path}").arrays("train", feed=RAW)


@pytest.mark.parametrize("make, message", [
    (lambda d: None, "no class folders"),
    (lambda d: (d / "a").mkdir() or (d / "a" / "notes.txt").write_text("x"), "no PNG, JPEG, BMP or WebP files"),
])
def test_a_folder_without_images_is_refused(tmp_path, make, message):
    make(tmp_path)
    with pytest.raises(DfkdError, match=message):
        load_data(f"imagefolder:{tmp_path}")


def test_an_empty_class_folder_and_an_unknown_test_class_are_refused(tmp_path):
    x, y = _images(6, 1, 4, 4)
    _write(tmp_path / "train", x, y, ["a", "b", "c"])
    (tmp_path / "train" / "d").mkdir()
    with pytest.raises(DfkdError, match=r"train/d: a class folder without images"):
        load_data(f"imagefolder:{tmp_path}")
    (tmp_path / "train" / "d").rmdir()
    _write(tmp_path / "test", x[:2], y[:2], ["e", "f", "g"])
    with pytest.raises(DfkdError, match=r"class folder '[efg]' is not among the train split's classes"):
        load_data(f"imagefolder:{tmp_path}")
    with pytest.raises(UsageError, match=r"no such folder"):
        load_data(f"imagefolder:{tmp_path / 'missing'}")


def test_a_validation_split_is_carved_from_the_files(tmp_path):
    x, y = _images(30, 1, 4, 4)
    _write(tmp_path, x, y, ["a", "b", "c"])
    src = load_data(f"imagefolder:{tmp_path}").with_validation(7, seed=3)
    train, val = src.files["train"].paths, src.files["val"].paths
    assert len(val) == 7 and len(train) == 23 and not set(train) & set(val)
    assert src.arrays("val", feed=RAW)[0].shape == (7, 1, 4, 4)


def test_a_subset_holds_the_chosen_examples_as_the_in_memory_subset_does(tmp_path):
    x, y = _images(12, 1, 4, 4)
    _write(tmp_path, x, y, ["a", "b", "c"])
    files = load_data(f"imagefolder:{tmp_path}")
    idx = np.array([5, 0, 9])
    sub = files.subset(idx, note="(test)")
    got_x, got_y = sub.arrays("train", feed=RAW)
    np.testing.assert_allclose(got_x, files.arrays("train", feed=RAW)[0][idx], atol=1e-6)
    np.testing.assert_array_equal(got_y, files.labels("train")[idx])
    assert sub.size("train") == 3 and not sub.has_split("test") and sub.class_names == files.class_names


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(3, 40), c=st.sampled_from([1, 3]), batch=st.integers(1, 17))
def test_channel_statistics_equal_the_in_memory_computation(tmp_path_factory, n, c, batch):
    folder = tmp_path_factory.mktemp("imgs")
    x, y = _images(n, c, 3, 4, seed=n)
    _write(folder, x, y, ["a", "b", "c"])
    src = load_data(f"imagefolder:{folder}")
    mean, std = src.channel_stats("train")
    xf = x.astype(np.float64) / 255.0
    np.testing.assert_allclose(mean, xf.mean(axis=(0, 2, 3)), rtol=1e-6)  # pixels decode to float32
    want_std = xf.std(axis=(0, 2, 3))
    np.testing.assert_allclose(std, np.where(want_std > 1e-6, want_std, 1.0), rtol=1e-6, atol=1e-9)
    assert sum(len(b) for b, _ in src.batches("train", batch, feed=RAW)) == n


def test_a_release_from_an_image_folder_equals_the_release_from_the_same_pixels_in_memory(tmp_path):
    """Export streams the files; its statistics equal those of an npz holding the same uint8 pixels."""
    from dfkd_meta.sidecar.io import read_sidecar
    from dfkd_meta.stats.export import export_release

    digits = load_data("digits")
    x, y = digits.arrays("train", feed=RAW)
    pixels = np.round(x * 255).astype(np.uint8)
    classes = [f"{i}" for i in range(10)]
    _write(tmp_path / "folder", pixels, y, classes)
    np.savez(tmp_path / "same.npz", x=_in_file_order(pixels, y)[0], y=_in_file_order(pixels, y)[1])
    teacher = digits_teacher()
    out = {}
    for kind, spec in (("folder", f"imagefolder:{tmp_path / 'folder'}"), ("npz", f"npz:{tmp_path / 'same.npz'}")):
        out[kind] = export_release(teacher, load_data(spec), tmp_path / f"release-{kind}", progress=False,
                                   cov_rank=0, spectral_k=0)
    a, b = (read_sidecar(out[k].sidecar_path, model=out[k].model_path) for k in ("folder", "npz"))
    assert [layer.key for layer in a.layers] == [layer.key for layer in b.layers]
    for la, lb in zip(a.layers, b.layers):
        np.testing.assert_allclose(la.mean, lb.mean, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(la.std, lb.std, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(la.count, lb.count)
