"""Issue 29: nothing from a release runs, what is checked is what is read, file text never reaches a terminal raw,
and distill refuses options that do not apply."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
from click.testing import CliRunner

from cli.main import main as cli
from dfkd_meta.errors import DfkdError, shown
from dfkd_meta.fileio import PrivateFolder
from dfkd_meta.sidecar import open_sidecar, validate
from dfkd_meta.sidecar.report import Finding

from .conftest import CORPUS

ROOT = Path(__file__).resolve().parents[1]
RELEASE = ROOT / "fixtures" / "releases" / "digits-1.0.0"
PLANT = "import pathlib; pathlib.Path({marker!r}).write_text('imported from the caller folder')\n"


def _console_script() -> str:
    script = Path(sys.executable).parent / "dfkd-meta"
    if not script.exists():
        found = shutil.which("dfkd-meta")
        if found is None:
            pytest.skip("the dfkd-meta console script is not installed")
        return found
    return str(script)


def _plant(folder: Path) -> Path:
    """A release folder as an attacker ships it: numpy.py, h5py.py and a dfkd_meta/ package that leave a mark."""
    marker = folder / "PWNED"
    for name in ("numpy.py", "h5py.py", "onnx.py", "torch.py"):
        (folder / name).write_text(PLANT.format(marker=str(marker)))
    (folder / "dfkd_meta").mkdir()
    (folder / "dfkd_meta" / "__init__.py").write_text(PLANT.format(marker=str(marker)))
    shutil.copyfile(RELEASE / "teacher.onnx", folder / "teacher.onnx")
    shutil.copyfile(RELEASE / "teacher.dfkd.h5", folder / "teacher.dfkd.h5")
    return marker


@pytest.mark.parametrize("command", [
    ["validate", "teacher.dfkd.h5", "--model", "teacher.onnx"],
    ["reconstruct", "--model", "teacher.onnx", "--sidecar", "teacher.dfkd.h5", "--samples", "10", "--steps", "1",
     "-o", "t.h5", "--quiet"],
    ["distill", "--teacher", "teacher.onnx", "--method", "dafl", "--sidecar", "teacher.dfkd.h5", "--iterations", "1",
     "--batch-size", "8", "--student", "hinton-tiny", "-o", "s.onnx", "--quiet"],
    ["export", "--model", "teacher.onnx", "--data", "digits", "-o", "rel", "--spectral-k", "0", "--quiet"],
], ids=["validate", "reconstruct", "distill", "export"])
def test_no_module_in_the_working_directory_is_imported(tmp_path, command):
    marker = _plant(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([_console_script(), *command], cwd=tmp_path, capture_output=True, text=True, env=env,
                          timeout=600)
    assert not marker.exists(), "a module from the caller's folder was imported"
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_file_checked_is_the_file_read_even_if_it_is_replaced_meanwhile(tmp_path, monkeypatch):
    import dfkd_meta.sidecar.validator as validator

    sidecar = tmp_path / "teacher.dfkd.h5"
    shutil.copyfile(RELEASE / "teacher.dfkd.h5", sidecar)
    real = validator.run_isolated

    def swap_after_check(*args, **kw):
        report = real(*args, **kw)
        sidecar.write_bytes(b"\x89HDF\r\n\x1a\n" + b"hostile" * 100)  # replaced between check and read
        return report

    monkeypatch.setattr(validator, "run_isolated", swap_after_check)
    checked = open_sidecar(sidecar)
    assert len(checked.sidecar.layers) == 3  # the content that was checked, not the replacement
    import hashlib

    assert checked.sha256 == hashlib.sha256((RELEASE / "teacher.dfkd.h5").read_bytes()).hexdigest()


def test_a_transfer_file_is_checked_in_the_child_and_read_from_the_checked_copy(tmp_path):
    from dfkd_meta.transfer import check_transfer, read_transfer

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from fuzz_targets import transfer_bases
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    bases = transfer_bases(tmp_path)
    path = tmp_path / "t.h5"
    path.write_bytes(bases["transfer-image.h5"])
    ts = read_transfer(path, 10)
    assert ts.x.shape == (24, 1, 8, 8) and len(ts.sha256) == 64
    with pytest.raises(DfkdError, match="DT209"):
        read_transfer(path, 3)
    with h5py.File(path, "r+") as f:
        f["classes"][0] = 99
    report = check_transfer(path)
    assert [f.rule for f in report.errors] == ["DT206"]
    with pytest.raises(DfkdError, match=r"t\.h5: not a usable transfer set: DT206 /classes"):
        read_transfer(path)
    path.write_bytes(bases["transfer-image.h5"][:5000])  # truncated
    assert report.errors and not check_transfer(path).valid


def test_text_from_a_file_is_escaped_before_it_is_printed(tmp_path):
    assert shown("a\x1b[2Jb\r\u202ec\nd") == "a\\x1b[2Jb\\x0d\\u202ec\\x0ad"
    f = Finding("error", "DM117", "3.2", "/layers/\x1b[31mevil", "name \x1b]0;title\x07 here")
    assert "\x1b" not in f.format() and "\\x1b[31mevil" in f.format()
    bad = tmp_path / "evil.dfkd.h5"
    shutil.copyfile(CORPUS / "valid" / "mlp_full.dfkd.h5", bad)
    with h5py.File(bad, "r+") as h:
        h["layers"].create_group("\x1b[2Jcleared")
    out = CliRunner().invoke(cli, ["validate", str(bad)])
    assert out.exit_code == 1 and "\x1b" not in out.output and "\\x1b[2Jcleared" in out.output


@pytest.mark.parametrize("args, refused", [
    (["--transfer", "T", "--iterations", "5"], "--iterations"),
    (["--transfer", "T", "--force"], "--force"),
    (["--data", "digits", "--sidecar", "S", "--iterations", "1"], "--iterations, --sidecar"),
    (["--method", "dafl", "--epochs", "3", "--alpha", "0.5"], "--alpha, --epochs"),
    (["--method", "dafl", "--force"], "--force"),
    (["--data", "digits", "--set", "steps=3", "--gaussian-mix", "0.1"], "--gaussian-mix, --set"),
    (["--method", "dafl", "--gaussian-mix", "0.1"], "--gaussian-mix"),
])
def test_distill_refuses_options_that_do_not_apply_to_its_mode(tmp_path, args, refused):
    args = [str(tmp_path / a) if a in ("T", "S") else a for a in args]
    for a in args:
        if a.startswith(str(tmp_path)):
            Path(a).write_bytes(b"x")
    out = CliRunner().invoke(cli, ["distill", "--teacher", str(RELEASE / "teacher.onnx"), "--student", "hinton-tiny",
                                   "-o", str(tmp_path / "s.onnx"), *args])
    assert out.exit_code == 2, out.output
    assert out.output.count("\n") == 1 and refused in out.output and "Traceback" not in out.output
    assert not list(tmp_path.glob("s.*"))


def test_private_copies_are_read_only_in_a_private_folder_and_messages_name_the_original(tmp_path):
    src = tmp_path / "file.bin"
    src.write_bytes(b"abc")
    with PrivateFolder() as folder:
        snap = folder.copy(src)
        assert oct(folder.path.stat().st_mode & 0o777) == "0o700" and not os.access(snap.path, os.W_OK) or \
            os.geteuid() == 0
        assert str(DfkdError(f"{snap.path}: broken")) == f"{src}: broken"
    assert not folder.path.exists()


def test_validate_reports_the_hash_of_the_bytes_it_checked():
    import hashlib

    path = CORPUS / "valid" / "mlp_full.dfkd.h5"
    assert validate(path).sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_transfer_file_replaced_between_check_and_read_is_read_as_checked(tmp_path, monkeypatch):
    import dfkd_meta.sidecar.validator as validator
    from dfkd_meta.transfer import read_transfer

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from fuzz_targets import transfer_bases
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    good = transfer_bases(tmp_path)["transfer-vector.h5"]
    path = tmp_path / "t.h5"
    path.write_bytes(good)
    real = validator.run_isolated

    def swap_after_check(*args, **kw):
        report = real(*args, **kw)
        path.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 4096)  # replaced between the check and the read
        return report

    monkeypatch.setattr(validator, "run_isolated", swap_after_check)
    ts = read_transfer(path)
    import hashlib

    assert ts.x.shape == (24, 64) and ts.sha256 == hashlib.sha256(good).hexdigest()


def test_the_child_looks_where_the_caller_found_its_libraries_but_never_in_the_callers_folder(tmp_path, monkeypatch):
    from dfkd_meta.sidecar.validator import child_import_path

    lib = tmp_path / "libs"
    lib.mkdir()
    work = tmp_path / "release"
    (work / "inside").mkdir(parents=True)
    monkeypatch.chdir(work)
    monkeypatch.setattr(sys, "path", ["", str(work), str(work / "inside"), str(lib), *sys.path])
    path = child_import_path()
    assert str(lib.resolve()) in path
    assert not any(p in ("", str(work.resolve()), str((work / "inside").resolve())) for p in path)


def test_an_error_about_a_private_copy_names_the_users_file_after_the_copy_is_gone(tmp_path):
    src = tmp_path / "teacher.onnx"
    src.write_bytes(b"x")
    with pytest.raises(DfkdError) as err:
        with PrivateFolder() as folder:
            snap = folder.copy(src)
            raise DfkdError(f"{snap.path}: broken; run `dfkd-meta validate --model {snap.path}`")
    assert str(err.value) == f"{src}: broken; run `dfkd-meta validate --model {src}`"
