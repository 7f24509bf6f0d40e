"""``python -m dfkd_meta.cli`` (and ``torchrun -m dfkd_meta.cli``): the same entry point as the ``dfkd-meta`` script."""
from . import run

run()
