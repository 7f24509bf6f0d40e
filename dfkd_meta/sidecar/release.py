"""A release folder: one ONNX model and its sidecar (``<stem>.onnx`` beside ``<stem>.dfkd.h5``)."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import UsageError

SIDECAR_SUFFIX = ".dfkd.h5"


def locate_release(path: str | os.PathLike, model: str | os.PathLike | None = None) -> tuple[Path, Path | None]:
    """(sidecar, model) for a sidecar file or a release folder; the folder's model unless ``model`` is given.

    In a folder, the sidecar is its one ``*.dfkd.h5`` file and the model is ``<stem>.onnx`` beside
    it (export's naming), else the folder's one ``.onnx`` file.
    """
    p = Path(path)
    if not p.is_dir():
        return p, Path(model) if model is not None else None
    sidecars = sorted(p.glob(f"*{SIDECAR_SUFFIX}"))
    if len(sidecars) != 1:
        found = ", ".join(s.name for s in sidecars) or "none"
        raise UsageError(f"{p}: a release folder holds exactly one *{SIDECAR_SUFFIX} sidecar (found {found}); "
                         "pass the sidecar file itself")
    sidecar = sidecars[0]
    if model is not None:
        return sidecar, Path(model)
    stem = sidecar.name[:-len(SIDECAR_SUFFIX)]
    if (p / f"{stem}.onnx").is_file():
        return sidecar, p / f"{stem}.onnx"
    models = sorted(p.glob("*.onnx"))
    if len(models) != 1:
        raise UsageError(f"{p}: no {stem}.onnx beside {sidecar.name} and {len(models)} other .onnx files; "
                         "pass the model with {model}")
    return sidecar, models[0]
