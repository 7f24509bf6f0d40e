"""Data sources: the --data syntax, IDX parsing that never trusts its input, npz without pickle."""
from __future__ import annotations

import gzip

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dfkd_meta.convention import parse
from dfkd_meta.data import RAW, Feed, load_data, parse_idx
from dfkd_meta.errors import DfkdError, UsageError

from .conftest import shared_dataset


def test_digits_split_is_fixed_and_raw_unless_a_feed_normalises_it():
    a, b = load_data("digits"), load_data("digits")
    assert a.input_shape == (1, 8, 8) and a.num_classes == 10 and a.layout == "NCHW"
    assert a.size("train") == 1437 and a.size("test") == 360
    xa, ya = a.arrays("train", feed=RAW)
    xb, yb = b.arrays("train", feed=RAW)
    assert np.array_equal(ya, yb) and np.array_equal(xa, xb)
    assert xa.min() == 0.0 and xa.max() == 1.0 and a.value_range() == (0.0, 1.0)  # raw: nothing applied
    conv = parse("data", a.channel_stats)
    xn, _ = a.arrays("train", feed=Feed(conv))
    assert abs(xn.mean()) < 1e-5 and abs(xn.std() - 1) < 1e-4  # the data option standardises the train split
    np.testing.assert_allclose(xn, (xa - conv.norm_mean[0]) / conv.norm_std[0], atol=1e-5)


def test_feed_flattens_for_a_flat_model_and_applies_per_channel_conventions():
    d = load_data("digits")
    x, _ = next(d.batches("test", 5, feed=Feed(parse("0.5/0.25"), (64,))))
    raw, _ = next(d.batches("test", 5, feed=RAW))
    assert x.shape == (5, 64)
    np.testing.assert_allclose(x, ((raw - 0.5) / 0.25).reshape(5, 64), atol=1e-6)
    rgb = np.random.default_rng(0).random((4, 3, 2, 2)).astype(np.float32)
    out = parse("imagenet").apply(rgb)
    for c, (m, s) in enumerate(zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))):
        np.testing.assert_allclose(out[:, c], (rgb[:, c] - m) / s, rtol=1e-5, atol=1e-5)
    with pytest.raises(UsageError, match="3 channels, the data 1"):
        parse("imagenet").apply(raw)


def test_resize_pads_by_even_margins_and_interpolates_otherwise():
    d = load_data("digits", resize=12)
    x, _ = next(d.batches("test", 4, feed=RAW))
    assert x.shape == (4, 1, 12, 12)
    assert np.allclose(x[:, :, :2, :], 0.0) and np.allclose(x[:, :, :, -2:], 0.0)  # raw black padding
    assert load_data("digits", resize=7).input_shape == (1, 7, 7)


def test_batches_cover_the_split_once_and_shuffle_by_seed():
    d = load_data("digits")
    ys = np.concatenate([y for _, y in d.batches("train", 100, feed=RAW, shuffle=True, seed=3)])
    assert sorted(ys.tolist()) == sorted(d.labels("train").tolist())
    again = np.concatenate([y for _, y in d.batches("train", 100, feed=RAW, shuffle=True, seed=3)])
    assert np.array_equal(ys, again)


@pytest.mark.parametrize("spec", ["", "mnist", "npz", "cifar:x", "digits:x"])
def test_bad_data_specs_are_usage_errors(spec):
    with pytest.raises(UsageError, match="expected digits, fashion-demo, mnist:DIR, npz:FILE or imagefolder:DIR"):
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
    np.savez(tmp_path / "bad.npz", x=np.full((3, 4, 4), np.nan, np.float32), y=np.zeros(3, np.int64))
    with pytest.raises(DfkdError, match="NaN or infinite"):
        load_data(f"npz:{tmp_path / 'bad.npz'}")


def test_npz_feature_vectors_keep_their_values_and_range(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(3.0, 10.0, (40, 7)).astype(np.float32)
    np.savez(tmp_path / "tab.npz", x=x, y=np.arange(40) % 3)
    d = load_data(f"npz:{tmp_path / 'tab.npz'}")
    assert d.input_shape == (7,) and d.layout == "NC" and not d.is_image and d.num_classes == 3
    got, _ = d.arrays("train", feed=RAW)
    assert np.array_equal(got, x)
    assert d.value_range() == (float(x.min()), float(x.max()))  # the observed range, as documented
    mean, std = d.channel_stats()
    np.testing.assert_allclose(mean, x.astype(np.float64).mean(0), rtol=1e-6)
    np.testing.assert_allclose(std, x.astype(np.float64).std(0), rtol=1e-5)
    with pytest.raises(UsageError, match="feature vectors, not images"):
        load_data(f"npz:{tmp_path / 'tab.npz'}", resize=8)


@pytest.mark.slow
def test_real_mnist_and_fashion_mnist():
    for name, first_class in (("mnist", "0"), ("fashion-mnist", "T-shirt/top")):
        d = load_data(f"mnist:{shared_dataset(name)}", resize=32)
        assert d.size("train") == 60000 and d.size("test") == 10000 and d.input_shape == (1, 32, 32)
        assert d.class_names[0] == first_class
        assert np.bincount(d.labels("test"), minlength=10).min() > 800
    assert abs(load_data(f"mnist:{shared_dataset('mnist')}").scalar_stats()[0] - 0.1307) < 1e-3
