"""Child-process entry of the isolated readers: reads one untrusted file, prints the report as JSON.

Started by ``validator.run_isolated`` as ``python -I -c BOOT PACKAGE_DIR KIND FILE [options]``: isolated
mode (no current folder, script folder, PYTHONPATH or user site on the import path), the package loaded
from PACKAGE_DIR itself, and the working directory a private folder. KIND is ``sidecar`` (SPEC, with
``--model``) or ``transfer`` (TRANSFER.md, with ``--classes``). The parent sets HDF5_PLUGIN_PRELOAD=:: so
libhdf5 loads no filter plugin; plugin paths are cleared again here. The CPU and memory bounds apply to
the reading of FILE only (see ``limits``).
"""
from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="dfkd_meta.sidecar._worker")
    ap.add_argument("kind", choices=["sidecar", "transfer"])
    ap.add_argument("file")
    ap.add_argument("--model")
    ap.add_argument("--classes", type=int)
    ap.add_argument("--cpu", type=float, help="CPU seconds the reading may take")
    ap.add_argument("--cpu-per-byte", type=float, default=0.0, help="more CPU seconds per byte the file declares")
    ap.add_argument("--memory", type=int, help="bytes the reading may add to this process")
    args = ap.parse_args(argv)
    import os

    import numpy as np

    from .limits import ReadBounds

    np.ones((2, 2)) @ np.ones((2, 2))  # BLAS allocates its buffers now, not under the memory bound
    bounds = None
    if args.cpu is not None or args.memory is not None:
        bounds = ReadBounds(args.cpu, args.memory, args.cpu_per_byte, os.path.getsize(args.file))
    if args.kind == "sidecar":
        from .validator import validate_in_process

        report = validate_in_process(args.file, args.model, bounds=bounds)
    else:
        from ..transfer import check_transfer_in_process

        report = check_transfer_in_process(args.file, args.classes, bounds=bounds)
    sys.stdout.write(json.dumps(report.to_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
