"""Child-process entry of validate(): reads the untrusted file, prints the report as JSON.

Run as ``python -m dfkd_meta.sidecar._worker SIDECAR [--cpu SECONDS] [--memory BYTES] [--model MODEL]``.
The parent sets HDF5_PLUGIN_PRELOAD=:: so libhdf5 loads no filter plugin; plugin paths are cleared
again here. The CPU and memory bounds apply to the reading of SIDECAR only (see ``limits``).
"""
from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m dfkd_meta.sidecar._worker")
    ap.add_argument("sidecar")
    ap.add_argument("--model")
    ap.add_argument("--cpu", type=float, help="CPU seconds the reading may take")
    ap.add_argument("--memory", type=int, help="bytes the reading may add to this process")
    args = ap.parse_args(argv)
    import numpy as np

    from .limits import ReadBounds
    from .validator import validate_in_process

    np.ones((2, 2)) @ np.ones((2, 2))  # BLAS allocates its buffers now, not under the memory bound
    bounds = ReadBounds(args.cpu, args.memory) if args.cpu is not None or args.memory is not None else None
    report = validate_in_process(args.sidecar, args.model, bounds=bounds)
    sys.stdout.write(json.dumps(report.to_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
