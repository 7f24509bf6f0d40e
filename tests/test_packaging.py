"""The installed package must contain every subpackage, not only what an editable install happens to find."""
from __future__ import annotations

from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_lists_every_subpackage():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "dfkd_meta").rglob("__init__.py")}
    missing = found - listed
    assert not missing, f"pyproject.toml [tool.setuptools] packages lacks {sorted(missing)}: a wheel would miss them"
    assert {"dfkd_meta.cli", "dfkd_meta.spec"} <= listed



def test_package_data_covers_every_shipped_demo_file():
    import fnmatch

    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["dfkd_meta"]
    files = [p.relative_to(ROOT / "dfkd_meta").as_posix() for p in (ROOT / "dfkd_meta" / "demo_assets").rglob("*")
             if p.is_file()]
    assert len(files) >= 5
    missing = [f for f in files if not any(fnmatch.fnmatchcase(f, pat) for pat in patterns)]
    assert not missing, f"pyproject.toml package-data misses {missing}: a wheel would ship the demo without them"
