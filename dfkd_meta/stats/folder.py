"""Publishing a release folder: built beside its destination, made visible by renaming, never half-written."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ..errors import UsageError


def stage_folder(out_dir: Path) -> Path:
    """A fresh folder beside ``out_dir`` (same file system, so publishing is a rename); stale ones of
    killed exports of the same folder are removed first."""
    parent = out_dir.parent if str(out_dir.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        for old in parent.glob(f".{out_dir.name}.export-*"):
            pid = old.name.rsplit("-", 2)[-2]
            if pid.isdigit() and not alive(int(pid)):
                shutil.rmtree(old, ignore_errors=True)
        return Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.export-{os.getpid()}-", dir=parent))
    except OSError as exc:
        raise UsageError(f"{out_dir}: cannot write beside it in {parent} ({exc.strerror}); choose a writable "
                         "location for {output}") from None


def alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (one we may not signal counts)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # no such process (a pid beyond the platform's range neither)
        return False
    except OSError:
        return True
    return True


def publish(stage: Path, out_dir: Path, last: str) -> None:
    """Make the staged release visible: one rename onto a new or empty folder, else file by file with
    ``last`` (the sidecar) moved in last, so a release folder never holds a sidecar without its model."""
    files = [f for f in stage.rglob("*") if f.is_file()]
    for f in files:  # data must be on disk before a rename makes it visible
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if not out_dir.exists() or not any(out_dir.iterdir()):
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(stage, out_dir)
        return
    for f in sorted(files, key=lambda p: p.relative_to(stage).as_posix() == last):
        target = out_dir / f.relative_to(stage)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(f, target)
