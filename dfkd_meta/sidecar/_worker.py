"""Child-process entry of validate(): reads the untrusted file, prints the report as JSON.

Run as ``python -m dfkd_meta.sidecar._worker SIDECAR [--model MODEL]``. The parent sets
HDF5_PLUGIN_PRELOAD=:: so libhdf5 loads no filter plugin; plugin paths are cleared again here.
"""
from __future__ import annotations

import json
import sys


def main(argv: list[str]) -> int:
    model = None
    if len(argv) == 3 and argv[1] == "--model":
        model = argv[2]
    elif len(argv) != 1:
        print("usage: python -m dfkd_meta.sidecar._worker SIDECAR [--model MODEL]", file=sys.stderr)
        return 2
    from .validator import validate_in_process

    report = validate_in_process(argv[0], model)
    sys.stdout.write(json.dumps(report.to_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
