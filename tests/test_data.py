"""Data sources: the --data syntax, IDX parsing that never trusts its input, npz without pickle."""
from __future__ import annotations

import gzip

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dfkd_meta.data import load_data, parse_idx
from dfkd_meta.errors import DfkdError, UsageError

from .conftest import shared_dataset


def test_digits_split_is_fixed_and_normalised():
    a, b = load_data("digits"), load_data("digits")
    assert a.input_shape == (1, 8, 8) and a.num_classes == 10
    assert a.size("train") == 1437 and a.size("test") == 360
    xa, ya = a.arrays("train")
    xb, yb = b.arrays("train")
    assert np.array_equal(ya, yb) and np.array_equal(xa, xb)
    assert abs(xa.mean()) < 1e-5 and abs(xa.std() - 1) < 1e-4  # normalised by the train split's own moments
    lo, hi = a.input_domain.normalized_range()
    assert xa.min() >= lo[0] - 1e-6 and xa.max() <= hi[0] + 1e-6


def test_resize_pads_by_even_margins_and_interpolates_otherwise():
    d = load_data("digits", resize=12)
    x, _ = next(d.batches("test", 4))
    assert x.shape == (4, 1, 12, 12)
    background = (0 - d.mean) / d.std
    assert np.allclose(x[:, :, :2, :], background) and np.allclose(x[:, :, :, -2:], background)
    assert load_data("digits", resize=7).input_shape == (1, 7, 7)


def test_batches_cover_the_split_once_and_shuffle_by_seed():
    d = load_data("digits")
    ys = np.concatenate([y for _, y in d.batches("train", 100, shuffle=True, seed=3)])
    assert sorted(ys.tolist()) == sorted(d.labels("train").tolist())
    again = np.concatenate([y for _, y in d.batches("train", 100, shuffle=True, seed=3)])
    assert np.array_equal(ys, again)


@pytest.mark.parametrize("spec", ["", "mnist", "npz", "cifar:x", "digits:x"])
def test_bad_data_specs_are_usage_errors(spec):
    with pytest.raises(UsageError, match="expected digits, mnist:DIR or npz:FILE"):
        load_data(spec)


def _idx(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def test_idx_round_trip_and_size_check():
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(parse_idx(_idx(arr)), arr)
    with pytest.raises(DfkdError, match="truncated or corrupt"):
        parse_idx(_idx(arr)[:-1])
    with pytest.raises(DfkdError, match="bad magic"):
        parse_idx(b"\x01\x02" + _idx(arr)[2:])


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_idx_parser_only_raises_clear_errors(data):
    try:
        parse_idx(data)
    except DfkdError:
        pass


def _mnist_folder(tmp_path, n=50, gz=True):
    rng = np.random.default_rng(0)
    for split, count in (("train", n), ("t10k", n // 2)):
        images = rng.integers(0, 256, (count, 6, 6), dtype=np.uint8)
        labels = rng.integers(0, 3, count, dtype=np.uint8)
        for stem, arr in ((f"{split}-images-idx3-ubyte", images), (f"{split}-labels-idx1-ubyte", labels)):
            data = _idx(arr)
            if gz:
                (tmp_path / f"{stem}.gz").write_bytes(gzip.compress(data))
            else:
                (tmp_path / stem).write_bytes(data)
    return tmp_path


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_layout_folder_gzipped_or_raw(tmp_path, gz):
    d = load_data(f"mnist:{_mnist_folder(tmp_path, gz=gz)}")
    assert d.input_shape == (1, 6, 6) and d.num_classes == 3 and d.size("train") == 50 and d.size("test") == 25


def test_mnist_folder_missing_file_is_named(tmp_path):
    folder = _mnist_folder(tmp_path)
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(UsageError, match="missing t10k-labels-idx1-ubyte"):
        load_data(f"mnist:{folder}")


def test_npz_source_and_pickle_refusal(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (20, 5, 5), dtype=np.uint8)
    y = np.arange(20) % 4
    np.savez(tmp_path / "d.npz", x=x, y=y, x_test=x[:6], y_test=y[:6])
    d = load_data(f"npz:{tmp_path / 'd.npz'}")
    assert d.input_shape == (1, 5, 5) and d.num_classes == 4 and d.size("test") == 6
    np.savez(tmp_path / "evil.npz", x=np.array([object()], dtype=object), y=np.zeros(1, np.int64))
    with pytest.raises(DfkdError, match="without pickled objects"):
        load_data(f"npz:{tmp_path / 'evil.npz'}")
    np.savez(tmp_path / "bad.npz", x=np.ones((3, 4, 4), np.float32) * 2, y=np.zeros(3, np.int64))
    with pytest.raises(DfkdError, match="outside \\[0, 1\\]"):
        load_data(f"npz:{tmp_path / 'bad.npz'}")


def test_real_mnist_and_fashion_mnist():
    for name, first_class in (("mnist", "0"), ("fashion-mnist", "T-shirt/top")):
        d = load_data(f"mnist:{shared_dataset(name)}", resize=32)
        assert d.size("train") == 60000 and d.size("test") == 10000 and d.input_shape == (1, 32, 32)
        assert d.class_names[0] == first_class
        assert np.bincount(d.labels("test"), minlength=10).min() > 800
    assert abs(load_data(f"mnist:{shared_dataset('mnist')}").mean - 0.1307) < 1e-3
