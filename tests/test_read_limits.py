"""Bounds on reading an untrusted sidecar (SPEC §3.4): CPU time (DM114), memory (DM115), wall clock
(DM116), and names that are not text (DM117, once an internal failure)."""
from __future__ import annotations

import sys
from pathlib import Path

import h5py
import pytest
from click.testing import CliRunner

import dfkd_meta.sidecar.validator as validate_mod
from cli.main import main as cli
from dfkd_meta.sidecar.limits import ReadBounds, ReadLimits, current_limits, using_limits
from dfkd_meta.sidecar.state import ValidationState
from dfkd_meta.sidecar.validator import validate, validate_in_process

from .conftest import CORPUS

REPRO = Path(__file__).resolve().parents[1] / "fixtures" / "repro"
VALID = CORPUS / "valid/mlp_full.dfkd.h5"


def test_limits_defaults_scale_memory_with_the_file_and_refuse_nonsense():
    lim = ReadLimits()
    assert lim.memory_bytes(0) == 256 << 20
    assert lim.memory_bytes(1 << 30) == (256 << 20) + (1 << 29)
    assert ReadLimits(memory_mib=10).memory_bytes(1 << 30) == 10 << 20
    for bad in ({"cpu_seconds": 0}, {"cpu_seconds": float("nan")}, {"wall_seconds": -1}, {"memory_mib": 0},
                {"memory_mib": 1.5}):
        with pytest.raises(ValueError, match="ReadLimits"):
            ReadLimits(**bad)


def test_using_limits_sets_the_bounds_of_every_validation_inside(monkeypatch):
    seen = []
    real = validate_mod.worker_command

    def spy(kind, path, cpu, memory, per_byte, extra):
        seen.append((kind, cpu, memory, per_byte))
        return real(kind, path, cpu, memory, per_byte, extra)

    monkeypatch.setattr(validate_mod, "worker_command", spy)
    with using_limits(ReadLimits(cpu_seconds=7, memory_mib=300)):
        assert current_limits().cpu_seconds == 7
        assert validate(VALID).valid
    assert current_limits() == ReadLimits()
    assert seen == [("sidecar", 7.0, 300 << 20, 0.0)]  # a bound the user gives is fixed: it does not grow
    seen.clear()
    assert validate(VALID).valid
    size = VALID.stat().st_size
    assert seen == [("sidecar", pytest.approx(10 + 30 * size / 1e9), (256 << 20) + size // 2, 30 / 1e9)]


def test_the_default_cpu_bound_grows_with_what_the_file_holds_or_declares():
    lim = ReadLimits()
    assert lim.cpu_seconds_for(0) == 10
    assert lim.cpu_seconds_for(10**9) == pytest.approx(40)
    assert lim.cpu_seconds_for(10**6, declared_bytes=4 * 2**30) == pytest.approx(10 + 30 * 4 * 2**30 / 1e9)
    assert ReadLimits(cpu_seconds=3).cpu_seconds_for(10**9, 10**10) == 3


def test_a_small_file_that_makes_libhdf5_spin_is_refused_within_30_seconds():
    import time

    t0 = time.monotonic()
    report = validate(REPRO / "hang_root_attribute_bit_flip.dfkd.h5")
    assert [f.rule for f in report.findings] == ["DM114"]
    assert time.monotonic() - t0 < 30


def test_reading_past_its_cpu_bound_is_dm114(monkeypatch):
    # a child that applies the bound as the worker does, then loops like libhdf5 on the hang file
    spin = [sys.executable, "-c", "from dfkd_meta.sidecar.limits import ReadBounds\n"
                                  "ReadBounds(1, None).apply()\nwhile True: pass"]
    monkeypatch.setattr(validate_mod, "worker_command", lambda *a: spin)
    report = validate(VALID, limits=ReadLimits(cpu_seconds=1, wall_seconds=60))
    assert [f.rule for f in report.findings] == ["DM114"] and not report.valid
    assert "more than 1 s of CPU time" in report.findings[0].message


def test_failed_allocation_under_the_memory_bound_is_dm115(monkeypatch):
    import dfkd_meta.sidecar.scan as scan_mod

    def starved(state):
        state.where = "/layers/fc1/mean"
        raise OSError("Can't synchronously read data (memory allocation failed for chunk)")

    monkeypatch.setattr(scan_mod, "scan", starved)
    bounds = ReadBounds(None, 512 << 20)
    monkeypatch.setattr(ReadBounds, "memory_active", property(lambda self: True))
    report = validate_in_process(VALID, bounds=bounds)
    assert [(f.rule, f.path) for f in report.findings] == [("DM115", "/layers/fc1/mean")]
    assert "512 MiB" in report.findings[0].message
    # without a memory bound in force the same failure is an unreadable file, not a bound
    report = validate_in_process(VALID)
    assert [f.rule for f in report.findings] == ["DM102"]


def test_bounds_are_lifted_after_the_reading(monkeypatch):
    resource = pytest.importorskip("resource")
    state = ValidationState(schema=None, path=VALID)
    state.bounds = ReadBounds(3600, 1 << 40)
    before = resource.getrlimit(resource.RLIMIT_CPU), resource.getrlimit(resource.RLIMIT_AS)
    with validate_mod.bounded_reading(state):
        assert resource.getrlimit(resource.RLIMIT_CPU)[0] != resource.RLIM_INFINITY
    assert (resource.getrlimit(resource.RLIMIT_CPU), resource.getrlimit(resource.RLIMIT_AS)) == before


def test_names_that_are_not_text_are_dm117_not_an_internal_failure(tmp_path):
    path = tmp_path / "names.dfkd.h5"
    with h5py.File(path, "w") as f:
        f.attrs[b"bad\xff"] = 1
        f.create_group(b"g\xfe")
    rules = {(f.rule, f.path) for f in validate(path).findings}
    assert ("DM117", "/@bad\\xff") in rules and ("DM117", "/g\\xfe") in rules
    assert "DM199" not in {r for r, _ in rules}


def test_validate_cli_takes_the_bounds():
    res = CliRunner().invoke(cli, ["validate", str(VALID), "--read-cpu-limit", "30", "--read-memory-limit", "256",
                                   "--timeout", "120"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["validate", str(VALID), "--read-cpu-limit", "0"])
    assert res.exit_code == 2 and "--read-cpu-limit" in res.output


@pytest.mark.parametrize("name, rule, cpu", [("hang_root_attribute_bit_flip", "DM114", 5.0),
                                             ("memory_2gb_two_byte_flip", "DM115", 120.0),
                                             ("name_not_text_dm199", "DM117", 120.0)])
def test_regression_files_get_their_rule(name, rule, cpu):
    report = validate(REPRO / f"{name}.dfkd.h5", limits=ReadLimits(cpu_seconds=cpu, wall_seconds=120))
    rules = report.rules
    assert rule in rules and "DM199" not in rules and "DM103" not in rules and not report.valid


@pytest.mark.parametrize("name", ["heap_size_one_byte_flip", "heap_size_two_byte_flip"])
def test_corrupt_heap_sizes_stop_at_the_default_memory_bound(name):
    # found by benchmarks/fuzz.py: under the old 1 GiB bound these 21-80 KB files took 791-919 MiB
    report = validate(REPRO / f"{name}.dfkd.h5")
    dm115 = [f for f in report.findings if f.rule == "DM115"]
    assert dm115 and "256 MiB" in dm115[0].message and not report.valid and "DM199" not in report.rules


@pytest.mark.parametrize("name, rule", [("std_overflows", "DM619"), ("coef_mean_overflows", "DM719"),
                                        ("empty_class_with_statistics", "DM618")])
def test_consumers_refuse_what_format_1_only_warns_about(name, rule):
    from dfkd_meta.sidecar import read_sidecar
    from dfkd_meta.sidecar.io import SidecarInvalidError

    path = CORPUS / f"valid/{name}.dfkd.h5"
    report = validate(path)
    assert report.valid and rule in report.rules  # a warning in 1.x (SPEC §8.1)
    with pytest.raises(SidecarInvalidError, match=f"{name}.dfkd.h5: cannot read a sidecar whose values consumers "
                                                  f"cannot use: {rule}"):
        read_sidecar(path)
    assert read_sidecar(path, for_use=False).layers  # show still summarises it
    res = CliRunner().invoke(cli, ["show", str(path)])
    assert res.exit_code == 0, res.output


def test_a_string_type_with_an_unknown_character_set_is_dm110_not_an_internal_failure(tmp_path):
    # what the first campaign saw as DM199 "Unknown string encoding": a flipped character-set field
    path = tmp_path / "cset.dfkd.h5"
    with h5py.File(path, "w") as f:
        f.attrs["dfkd_type"] = "sidecar"
    data = bytearray(path.read_bytes())
    # a variable-length string datatype message: class 9 version 1, type 1 (string), cset 1 (UTF-8)
    spots = [i for i in range(len(data) - 3) if data[i:i + 3] == b"\x19\x01\x01"]
    assert spots, "no UTF-8 variable-length string type found in the file"
    for i in spots:
        data[i + 2] = 0x05  # character sets 2-15 are reserved
    path.write_bytes(bytes(data))
    report = validate(path)
    assert "DM110" in report.rules and "DM199" not in report.rules and not report.valid


def test_a_transfer_file_that_makes_libhdf5_spin_is_refused_within_60_seconds():
    import time

    from dfkd_meta.errors import DfkdError
    from dfkd_meta.transfer import read_transfer

    t0 = time.monotonic()
    with pytest.raises(DfkdError, match=r"transfer_cpu_spin_two_byte_flip\.h5: not a usable transfer set: DM114"):
        read_transfer(REPRO / "transfer_cpu_spin_two_byte_flip.h5")
    assert time.monotonic() - t0 < 60
