"""What a new user meets first: help texts, torch-free metadata commands, progress in logs, Ctrl-C."""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest

from cli.main import main as cli_main
from dfkd_meta.progress import LineProgress, Silent, progress

from .conftest import ROOT, digits_release

RELEASE_100 = ROOT / "fixtures" / "releases" / "digits-1.0.0"
ENTRY = "import sys; sys.argv[0] = 'dfkd-meta'; from dfkd_meta.cli import run; run()"
NO_TORCH = """
import sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is not importable in this test")
sys.meta_path.insert(0, NoTorch())
sys.argv[0] = "dfkd-meta"
from dfkd_meta.cli import run
run()
"""


# ------------------------------------------------------------------------------------------------ help

def test_every_option_of_every_command_is_described_and_every_command_has_examples():
    missing, no_examples = [], []
    for name, command in cli_main.commands.items():
        missing += [f"{name} {max(p.opts, key=len)}" for p in command.params
                    if isinstance(p, click.Option) and not (p.help or "").strip()]
        help_text = command.help or ""
        examples = help_text.split("Examples:")[-1] if "Examples:" in help_text else ""
        if examples.count("dfkd-meta ") < 2:
            no_examples.append(name)
    assert not missing, f"options without a description: {missing}"
    assert not no_examples, f"commands whose --help does not end with two examples: {no_examples}"


def test_every_command_that_prints_results_has_json():
    assert [n for n, c in cli_main.commands.items() if "as_json" not in {p.name for p in c.params}] == []


def test_help_says_that_module_factory_runs_code():
    from click.testing import CliRunner

    for command in ("train", "distill"):
        out = CliRunner().invoke(cli_main, [command, "--help"]).output
        assert "module:factory (imports and runs that module's code)" in " ".join(out.split())


# ------------------------------------------------------------------------------------------ torch-free

@pytest.mark.parametrize("args", [["inspect", str(RELEASE_100 / "teacher.onnx"), "--json"],
                                  ["show", str(RELEASE_100 / "teacher.dfkd.h5")],
                                  ["validate", str(RELEASE_100 / "teacher.dfkd.h5")],
                                  ["validate", str(RELEASE_100)]])
def test_metadata_commands_run_where_torch_cannot_be_imported(args):
    r = subprocess.run([sys.executable, "-c", NO_TORCH, *args], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "torch" not in r.stderr


def test_inspect_knows_the_supported_ops_without_torch():
    from dfkd_meta.onnx.op_names import supported_ops
    from dfkd_meta.onnx.ops import OPS

    assert supported_ops() == set(OPS)  # every registration is a literal op("Name") call


# -------------------------------------------------------------------------------------------- progress

def test_without_a_terminal_progress_is_a_line_every_interval():
    now = [0.0]
    out = io.StringIO()
    bar = LineProgress(range(10), desc="work", unit="step", stream=out, every=2.0, clock=lambda: now[0])
    for _ in bar:
        now[0] += 1.0
    bar.set_postfix(loss="0.5")
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "work: 2/10 step (20%), 1 step/s, 2 s elapsed, ~8 s left"
    assert len(lines) == 6 and lines[-1].startswith("work: 10/10 step (100%)") and lines[-1].endswith("loss=0.5")


def test_progress_chooses_a_bar_for_terminals_lines_otherwise_and_nothing_when_off():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert isinstance(progress(range(3), stream=io.StringIO()), LineProgress)
    assert not isinstance(progress(range(3), stream=Tty()), (LineProgress, Silent))
    off = progress(range(3), enabled=False)
    assert isinstance(off, Silent) and list(off) == [0, 1, 2]


def test_train_reports_progress_in_a_log_before_its_first_epoch_ends(tmp_path):
    env = {**os.environ, "DFKD_META_PROGRESS_EVERY": "0"}
    r = subprocess.run([sys.executable, "-c", ENTRY, "train", "--model", "hinton-tiny", "--epochs", "1",
                        "--batch-size", "64", "-o", str(tmp_path / "t.onnx")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [x for x in r.stderr.splitlines() if x.startswith("train epoch 1/1: ")]
    assert len(lines) >= 10 and "batch" in lines[0] and "\r" not in r.stderr


# --------------------------------------------------------------------------------------------- Ctrl-C

def _interrupt(args: list[str], ready, tmp_path: Path, env=None) -> tuple[int, str, float]:
    """Start the CLI, wait for ``ready(stderr_so_far)``, send SIGINT; (exit status, stderr, seconds to exit)."""
    err_path = tmp_path / "stderr.txt"
    with open(err_path, "w") as err:
        p = subprocess.Popen([sys.executable, "-c", ENTRY, *args], stdout=subprocess.DEVNULL, stderr=err,
                             env={**os.environ, **(env or {})})
        deadline = time.monotonic() + 300
        while not ready(err_path.read_text()) and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert p.poll() is None, f"finished before it could be interrupted: {err_path.read_text()[-1000:]}"
        sent = time.monotonic()
        p.send_signal(signal.SIGINT)
        code = p.wait(timeout=60)
    return code, err_path.read_text(), time.monotonic() - sent


@pytest.mark.skipif(os.name != "posix", reason="SIGINT to a child process")
def test_ctrl_c_during_start_up_exits_130_without_a_traceback(tmp_path):
    out = tmp_path / "release"
    start = time.monotonic()  # 0.5 s: past the interpreter's own start-up, inside the imports of torch and onnx
    code, err, _ = _interrupt(["export", "--model", str(RELEASE_100 / "teacher.onnx"), "-o", str(out)],
                              lambda _: time.monotonic() - start > 0.5, tmp_path)
    assert code == 130 and "Traceback" not in err and err.strip().endswith("interrupted")
    assert not out.exists() and not list(tmp_path.glob(".release.export-*"))


@pytest.mark.skipif(os.name != "posix", reason="SIGINT to a child process")
def test_ctrl_c_stops_reconstruct_promptly_and_leaves_only_its_resume_state(tmp_path):
    release = digits_release(tmp_path / "r")
    out = tmp_path / "transfer.h5"
    partial = out.with_name(out.name + ".partial")
    args = ["reconstruct", "--model", str(release.model_path), "--sidecar", str(release.sidecar_path),
            "--samples", "4000", "--batch-size", "100", "--steps", "300", "-o", str(out)]
    # wait until a few batches are done, so the resume state is worth keeping
    code, err, seconds = _interrupt(args, lambda text: "(3%)" in text or "(4%)" in text, tmp_path,
                                    env={"DFKD_META_PROGRESS_EVERY": "0"})
    assert code == 130 and "Traceback" not in err and err.strip().endswith("interrupted")
    assert seconds < 20  # about 1 s on an idle machine; generous for a loaded one
    assert not out.exists() and partial.is_file() and partial.stat().st_size > 100 * 64 * 4  # a finished batch
