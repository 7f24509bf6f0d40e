"""A torch DataLoader (any re-iterable of (x, y) batches) as a data source: re-batched, streamed, and equal to
the same examples in memory, export included."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dfkd_meta.data import RAW, load_data
from dfkd_meta.data.stream import from_batches
from dfkd_meta.errors import DfkdError, UsageError

from .conftest import digits_teacher


def _loader(x: np.ndarray, y: np.ndarray, batch: int) -> torch.utils.data.DataLoader:
    ds = torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    return torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=False)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 60), theirs=st.integers(1, 16), ours=st.integers(1, 16), limit=st.none() | st.integers(1, 70))
def test_batches_are_rebatched_in_order(n, theirs, ours, limit):
    x = np.arange(n * 4, dtype=np.float32).reshape(n, 4) / (n * 4)
    y = np.arange(n, dtype=np.int64) % 3
    src = from_batches(_loader(x, y, theirs), num_classes=3)
    got = list(src.batches("train", ours, feed=RAW, limit=limit))
    want = n if limit is None else min(n, limit)
    assert [len(b) for b, _ in got] == [min(ours, want - i) for i in range(0, want, ours)]
    if got:
        np.testing.assert_array_equal(np.concatenate([b for b, _ in got]), x[:want])
        np.testing.assert_array_equal(np.concatenate([t for _, t in got]), y[:want])
    assert src.size() == n and src.input_shape == (4,) and not src.is_image


def test_uint8_images_are_scaled_and_statistics_streamed():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (50, 3, 4, 4), dtype=np.uint8)
    y = rng.integers(0, 5, 50).astype(np.int64)
    src = from_batches(_loader(x, y, 8), class_names=list("abcde"))
    assert src.is_image and src.input_shape == (3, 4, 4) and src.value_range() == (0.0, 1.0)
    mean, std = src.channel_stats()
    xf = x.astype(np.float64) / 255
    np.testing.assert_allclose(mean, xf.mean(axis=(0, 2, 3)), rtol=1e-6)  # uint8 scaled in float32
    np.testing.assert_allclose(std, xf.std(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_array_equal(src.labels(), y)


def test_one_pass_iterators_and_missing_classes_are_refused():
    x, y = np.zeros((4, 2), np.float32), np.zeros(4, np.int64)
    with pytest.raises(UsageError, match="a one-pass iterator"):
        from_batches(((x, y) for _ in range(2)), num_classes=2)
    with pytest.raises(UsageError, match="pass class_names"):
        from_batches([(x, y)])
    src = from_batches(lambda: iter([(x, y), (x, y)]), num_classes=2)  # a function giving a fresh iterator
    assert src.size() == 8


@pytest.mark.parametrize("batches, message", [
    ([(np.zeros((2, 3), np.float32), np.array([0, 9]))], r"batch 0 has class 9; labels are class indices 0\.\.1"),
    ([(np.zeros((2, 3), np.float32), np.zeros(2, np.int64)), (np.zeros((2, 4), np.float32), np.zeros(2, np.int64))],
     r"batch 1 has examples of shape \[4\], the first \[3\]"),
    ([(np.full((1, 2), np.nan, np.float32), np.zeros(1, np.int64))], "NaN or infinite"),
    ([(np.zeros((2, 3), np.float32), np.zeros(3, np.int64))], r"need float \(or uint8\) x"),
    ([np.zeros(3)], r"item 0 is not an \(x, y\) pair"),
])
def test_bad_batches_are_one_error_each(batches, message):
    src = from_batches(batches, num_classes=2)
    with pytest.raises(DfkdError, match=message):
        list(src.batches("train", 4, feed=RAW))


def test_only_a_train_split(tmp_path):
    src = from_batches([(np.zeros((2, 3), np.float32), np.zeros(2, np.int64))], num_classes=2)
    assert not src.has_split("test")
    with pytest.raises(UsageError, match="no 'test' split"):
        src.size("test")
    with pytest.raises(UsageError, match="cannot be split"):
        src.with_validation(1)


def test_a_release_from_a_dataloader_equals_the_release_from_the_same_arrays(tmp_path):
    from dfkd_meta.sidecar.io import read_sidecar
    from dfkd_meta.stats.export import export_release

    x, y = load_data("digits").arrays("train", feed=RAW)
    np.savez(tmp_path / "same.npz", x=x, y=y)
    teacher = digits_teacher()
    sources = {"loader": from_batches(_loader(x, y, 100), num_classes=10), "npz": load_data(f"npz:{tmp_path}/same.npz")}
    out = {k: export_release(teacher, src, tmp_path / f"release-{k}", progress=False, cov_rank=0, spectral_k=0)
           for k, src in sources.items()}
    a, b = (read_sidecar(out[k].sidecar_path, model=out[k].model_path) for k in ("loader", "npz"))
    for la, lb in zip(a.layers, b.layers, strict=True):
        np.testing.assert_allclose(la.mean, lb.mean, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(la.std, lb.std, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(la.count, lb.count)
