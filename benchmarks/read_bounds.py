"""What reading a valid sidecar costs, by size: the measurements behind the default read bounds (SPEC §3.4).

    python benchmarks/read_bounds.py                 # 16 MB to 1 GB, plain and gzip-compressed
    python benchmarks/read_bounds.py --sizes-mb 16 64

For each size a valid sidecar (one hidden layer of per-class statistics, 10 classes) is written,
uncompressed with random values and gzip-compressed with low-entropy values (so the file is far smaller
than what it declares), then validated by ``validate()`` as a user would, in its child process. Recorded:
the CPU time of the child (start-up, scan, reading and every rule; ``RUSAGE_CHILDREN``), its wall time,
the file's bytes and the bytes it declares. The default CPU bound (``limits.cpu_seconds_for``) must sit
well above every row: the results file records the margin.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from dfkd_meta.sidecar import DatasetProvenance, InputDomain, LayerStats, ModelBinding, Sidecar, write_sidecar
from dfkd_meta.sidecar.limits import BASE_CPU_SECONDS, ReadLimits
from dfkd_meta.sidecar.validator import validate

ROOT = Path(__file__).resolve().parents[1]


def _sidecar(units: int, classes: int, compressible: bool) -> Sidecar:
    rng = np.random.default_rng(0)
    if compressible:  # a short pattern repeated: gzip stores it in a small fraction of its size
        mean = np.tile(np.linspace(-1, 1, 64, dtype=np.float32), (classes, units // 64 + 1))[:, :units]
        std = np.full((classes, units), 0.5, np.float32)
    else:
        mean = rng.normal(0, 1, (classes, units)).astype(np.float32)
        std = rng.uniform(0.1, 2, (classes, units)).astype(np.float32)
    hidden = LayerStats(key="fc", tensor_name="/fc/out", order=0, kind="pre_activation", shape=(units,), mean=mean,
                        std=std, count=np.full(classes, 5, np.int64))
    logits = LayerStats(key="logits", tensor_name="logits", order=1, kind="logits", shape=(classes,),
                        mean=rng.normal(0, 1, (classes, classes)).astype(np.float32),
                        std=np.ones((classes, classes), np.float32), count=np.full(classes, 5, np.int64),
                        temperature=8.0)
    binding = ModelBinding(file_name="model.onnx", sha256="ab" * 32, ir_version=8, opset_imports={"": 17},
                           input_name="x", input_shape=(-1, 64), input_dtype="float32", logits_name="logits",
                           num_classes=classes, input_domain=InputDomain("NC", 0.0, 1.0, (0.5,), (0.25,)))
    return Sidecar(model=binding, dataset=DatasetProvenance("synthetic", 5 * classes, np.full(classes, 5, np.int64),
                                                            "measurement", "CC0-1.0"), layers=[hidden, logits])


def measure(size_mb: float, compressible: bool, folder: Path, classes: int = 10) -> dict:
    units = max(64, int(size_mb * 1e6 / (8 * classes)))  # mean + std, float32
    path = folder / f"{size_mb:g}mb-{'gzip' if compressible else 'plain'}.dfkd.h5"
    write_sidecar(_sidecar(units, classes, compressible), path, compression="gzip" if compressible else None)
    declared = 8 * classes * units
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    report = validate(path, limits=ReadLimits(cpu_seconds=3600, wall_seconds=3600))
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    row = {"declared_mb": round(declared / 1e6, 1), "file_mb": round(path.stat().st_size / 1e6, 2),
           "compressed": compressible, "valid": report.valid, "child_cpu_s": round(cpu, 2), "wall_s": round(wall, 2),
           "default_cpu_bound_s": round(ReadLimits().cpu_seconds_for(path.stat().st_size, declared), 1)}
    row["margin"] = round(row["default_cpu_bound_s"] / max(cpu, 1e-3), 1)
    path.unlink()
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes-mb", type=float, nargs="+", default=[16, 64, 256, 1024])
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "read_bounds.json")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dfkd-read-bounds-") as tmp:
        rows = [measure(mb, compressible, Path(tmp)) for mb in args.sizes_mb for compressible in (False, True)]
    lim = ReadLimits()
    out = {"date": dt.date.today().isoformat(), "bound": {"base_cpu_seconds": BASE_CPU_SECONDS,
                                                           "cpu_seconds_per_gb": lim.cpu_seconds_per_gb},
           "rows": rows, "all_valid": all(r["valid"] for r in rows), "smallest_margin": min(r["margin"] for r in rows)}
    args.results.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))
    return 0 if out["all_valid"] else 1


if __name__ == "__main__":
    sys.exit(main())
