"""A release folder (SPEC §13): one ONNX model, its sidecar (``<stem>.onnx`` beside ``<stem>.dfkd.h5``)
and a model card."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import UsageError
from .report import Report, finding

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


def validate_release(folder: str | os.PathLike, model: str | os.PathLike | None = None) -> Report:
    """Validate a whole release folder (SPEC §11.3, §13): the sidecar against its model (external data
    included), the model card as untrusted text checked against the release, the derived models the card
    lists against their files, and stray entries."""
    from ..fileio import PrivateFolder, require_file
    from .card import CARD_NAME, check_card, check_derived
    from .io import load_validated
    from .validator import validate_copy

    folder = Path(folder)
    sidecar, model_path = locate_release(folder, model)
    with PrivateFolder() as private:
        report, snap = validate_copy(private, require_file(sidecar, "sidecar"),
                                     require_file(model_path, "model") if model_path is not None else None)
        sc = load_validated(snap.path) if report.valid else None
    report.findings += check_card(folder, sc, sidecar, sidecar_sha256=snap.sha256)
    if sc is not None:
        derived_findings, derived = check_derived(folder, sc, snap.sha256)
        report.findings += derived_findings
        known = {sidecar.name, CARD_NAME, sc.model.file_name} | {p.split("/")[0] for p in sc.model.external_data}
        known |= derived
        stray = sorted(p.name for p in folder.iterdir() if p.name not in known)
        if stray:
            shown = ", ".join(stray[:10]) + (f" and {len(stray) - 10} more" if len(stray) > 10 else "")
            report.findings.append(finding("DM954", "/", f"not part of the release: {shown}"))
    report.sort()
    return report
