"""Command-line front end (installed as dfkd_meta.cli)."""
