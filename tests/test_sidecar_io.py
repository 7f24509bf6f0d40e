"""Writer and reader: exact round trips, atomic writes, refusal of invalid content."""
from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from dfkd_meta.sidecar import SidecarInvalidError, read_sidecar, write_sidecar
from dfkd_meta.sidecar import io as sidecar_io

from .conftest import CORPUS
from .sidecar_factory import assert_equal, full_example, sidecars


def _normalise(s):
    """What the writer fills in: the writer version, and float32/int64 arrays."""
    s.layers.sort(key=lambda x: x.key)
    return s


def test_full_round_trip_is_exact(tmp_path):
    sc = full_example()
    path = write_sidecar(sc, tmp_path / "m.dfkd.h5")
    back = read_sidecar(path)  # isolated validation first, then the read
    assert_equal(_normalise(back), _normalise(full_example()))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sc=sidecars())
def test_generated_round_trips_are_exact(tmp_path, sc):
    path = tmp_path / "g.dfkd.h5"
    write_sidecar(sc, path)
    back = read_sidecar(path, isolate=False)
    assert_equal(_normalise(back), _normalise(sc))


def test_same_content_gives_the_same_bytes(tmp_path):
    a = write_sidecar(full_example(), tmp_path / "a.dfkd.h5").read_bytes()
    b = write_sidecar(full_example(), tmp_path / "b.dfkd.h5").read_bytes()
    assert a == b


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


def test_invalid_content_is_never_written(tmp_path):
    sc = full_example()
    sc.layers[0].std[0, 0] = -1.0
    target = tmp_path / "bad.dfkd.h5"
    with pytest.raises(SidecarInvalidError, match=r"bad\.dfkd\.h5: cannot write .*DM612 /layers/conv/std"):
        write_sidecar(sc, target)
    assert not target.exists() and _leftovers(tmp_path) == []


def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    target = write_sidecar(full_example(), tmp_path / "m.dfkd.h5")
    before = target.read_bytes()

    def crash(sidecar, f, compression=None):
        f.create_group("half_written")
        raise RuntimeError("simulated crash mid-write")
    monkeypatch.setattr(sidecar_io, "write_h5", crash)
    with pytest.raises(RuntimeError, match="simulated"):
        write_sidecar(full_example(seed=1), target)
    assert target.read_bytes() == before and _leftovers(tmp_path) == []


def test_compressed_write_validates_and_round_trips(tmp_path):
    sc = full_example()
    sc.layers[1].mean = np.zeros((4, 12), np.float32)
    path = write_sidecar(sc, tmp_path / "z.dfkd.h5", compression="gzip")
    assert_equal(_normalise(read_sidecar(path, isolate=False)), _normalise(sc))


def test_reader_refuses_invalid_files_with_one_line():
    with pytest.raises(SidecarInvalidError) as err:
        read_sidecar(CORPUS / "invalid/nan_mean.dfkd.h5")
    msg = str(err.value)
    assert "\n" not in msg and "nan_mean.dfkd.h5" in msg and "DM611" in msg and "dfkd-meta validate" in msg
    assert err.value.exit_code == 1 and err.value.report.rules == {"DM611"}


def test_reader_checks_the_binding_when_given_the_model():
    with pytest.raises(SidecarInvalidError, match="DM420"):
        read_sidecar(CORPUS / "valid/cnn_channel.dfkd.h5", CORPUS / "models/mlp.onnx")
    sc = read_sidecar(CORPUS / "valid/mlp_ext.dfkd.h5", CORPUS / "models/mlp_ext.onnx")
    assert list(sc.model.external_data) == ["mlp_ext.onnx.data"]


def test_reader_skips_ignorable_items():
    sc = read_sidecar(CORPUS / "valid/newer_minor_and_ignorables.dfkd.h5", isolate=False)
    assert [x.key for x in sc.layers] == ["fc1", "logits"] and sc.format_version == "1.4.0"


def test_write_creates_missing_folders_and_refuses_unwritable_ones(tmp_path):
    from dfkd_meta.errors import UsageError
    path = write_sidecar(full_example(), tmp_path / "new" / "dir" / "m.dfkd.h5")
    assert path.is_file()
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="cannot create folder"):
        write_sidecar(full_example(), tmp_path / "file" / "m.dfkd.h5")
    assert os.path.isfile(tmp_path / "file")


def test_strings_with_nul_are_refused_before_writing(tmp_path):
    from dfkd_meta.errors import DfkdError
    sc = full_example()
    sc.model.class_names[1] = "bad\x00name"
    with pytest.raises(DfkdError, match=r"sidecar\.model\.class_names\[1\].*U\+0000"):
        write_sidecar(sc, tmp_path / "n.dfkd.h5")
    assert list(tmp_path.iterdir()) == []


def test_strings_that_are_not_unicode_text_are_refused(tmp_path):
    from dfkd_meta.errors import DfkdError
    sc = full_example()
    sc.dataset.name = "bad\ud800"
    with pytest.raises(DfkdError, match=r"sidecar\.dataset\.name.*lone surrogate"):
        write_sidecar(sc, tmp_path / "s.dfkd.h5")
    assert list(tmp_path.iterdir()) == []
