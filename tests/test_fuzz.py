"""Fuzzing: mutated sidecars (bytes and structure) only ever produce findings.

No exception escapes, no internal failure (DM199) is reported and nothing hangs. Byte-level
mutations go through the isolated path the CLI uses, since they may crash libhdf5 itself.
"""
from __future__ import annotations

import os
import shutil

import h5py
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dfkd_meta.sidecar.validator import Report, validate, validate_in_process

from .conftest import CORPUS

BASES = ["valid/mlp_full.dfkd.h5", "valid/cnn_channel.dfkd.h5"]

def fuzz(n: int) -> settings:
    """n examples; DFKD_FUZZ_SCALE=K runs K times more (a long fuzzing campaign, outside CI)."""
    return settings(max_examples=n * int(os.environ.get("DFKD_FUZZ_SCALE", "1")), deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _only_findings(report: Report) -> None:
    assert isinstance(report, Report)
    assert "DM199" not in report.rules, [f.format() for f in report.findings if f.rule == "DM199"]
    for f in report.findings:
        assert f.rule.startswith("DM") and f.severity in ("error", "warning", "info")


byte_edit = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 20), st.integers(1, 255)),
    st.tuples(st.just("overwrite"), st.integers(0, 1 << 20), st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("truncate"), st.integers(0, 1 << 20), st.just(b"")),
    st.tuples(st.just("insert"), st.integers(0, 1 << 20), st.binary(min_size=1, max_size=16)),
)


@fuzz(30)
@given(base=st.sampled_from(BASES), edits=st.lists(byte_edit, min_size=1, max_size=6))
def test_byte_mutations_only_give_findings(tmp_path, base, edits):
    data = bytearray((CORPUS / base).read_bytes())
    for op, pos, arg in edits:
        pos %= max(1, len(data))
        if op == "flip" and not data:
            continue
        if op == "flip":
            data[pos] ^= arg
        elif op == "overwrite":
            data[pos:pos + len(arg)] = arg
        elif op == "truncate":
            del data[pos:]
        else:
            data[pos:pos] = arg
    path = tmp_path / "fuzz.dfkd.h5"
    path.write_bytes(bytes(data))
    _only_findings(validate(path, timeout=60))


def _all_items(f: h5py.File) -> tuple[list[str], list[tuple[str, str]]]:
    objs: list[str] = []
    f.visit(objs.append)
    attrs = [("/", a) for a in f.attrs] + [(o, a) for o in objs for a in f[o].attrs]
    return objs, attrs


values = st.one_of(
    st.integers(-2**62, 2**62), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20).filter(
        lambda s: "\x00" not in s), st.binary(max_size=20).filter(lambda b: b"\x00" not in b),
    st.lists(st.integers(-5, 100), max_size=5).map(lambda v: np.array(v, dtype=np.int64)),
    st.lists(st.floats(width=32), max_size=5).map(lambda v: np.array(v, dtype=np.float32)),
    st.sampled_from(["1.0.0", "2.0.0", "layer_stats", "logits", "NCHW", "all_layers", "x" * 70]),
)
arrays = st.tuples(st.sampled_from(["f4", "f8", "i8", "i2", "u1"]),
                   st.lists(st.integers(0, 12), min_size=0, max_size=3)).map(
    lambda t: np.random.default_rng(len(t[1])).normal(0, 2, t[1]).astype(t[0]))
struct_edit = st.tuples(st.sampled_from(["del_obj", "del_attr", "set_attr", "replace_data", "add_group",
                                         "add_dataset", "move"]), st.integers(0, 10_000), values, arrays)


@fuzz(150)
@given(base=st.sampled_from(BASES), edits=st.lists(struct_edit, min_size=1, max_size=5))
def test_structural_mutations_only_give_findings(tmp_path, base, edits):
    path = tmp_path / "s.dfkd.h5"
    shutil.copy(CORPUS / base, path)
    with h5py.File(path, "r+") as f:
        for step, (op, i, value, array) in enumerate(edits):
            objs, attrs = _all_items(f)
            groups = ["/"] + [o for o in objs if isinstance(f[o], h5py.Group)]
            dsets = [o for o in objs if isinstance(f[o], h5py.Dataset)]
            if op == "del_obj" and objs:
                del f[objs[i % len(objs)]]
            elif op == "del_attr" and attrs:
                o, a = attrs[i % len(attrs)]
                del f[o].attrs[a]
            elif op == "set_attr" and attrs:
                o, a = attrs[i % len(attrs)]
                f[o].attrs[a] = value
            elif op == "replace_data" and dsets:
                d = dsets[i % len(dsets)]
                del f[d]
                f[d] = array
            elif op == "add_group":
                f[groups[i % len(groups)]].create_group(f"g{step}")
            elif op == "add_dataset":
                f[groups[i % len(groups)]][f"d{step}"] = array
            elif op == "move" and objs:
                src = objs[i % len(objs)]
                dst = groups[(i // 7) % len(groups)].rstrip("/") + f"/m{step}"
                if not dst.startswith(src + "/"):
                    f.move(src, dst)
    _only_findings(validate_in_process(path))
