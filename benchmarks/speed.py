"""Speed against the machine's own limit (not a test; run by hand).

    python benchmarks/speed.py [--out benchmarks/results/speed.json] [--quick]

1. The machine's fp32 matmul rate (torch.mm, square matrices, best of several runs).
2. Reconstruction throughput for hinton1200 and lenet5 teachers at several batch sizes:
   sample-steps/s, and achieved FLOP/s from the counted FLOP model (one step = forward +
   input-gradient backward = 2x the forward FLOPs, weights frozen), as a fraction of (1).
3. Export throughput (statistics pass: ONNX Runtime with taps, per-class moments) against plain
   ONNX Runtime inference over the same batches of the same data source, and ORT with the same
   taps but no statistics (the ceiling for the statistics code).
4. Validation time and peak memory of large sidecars (>= 100 MB and twice that).

Random-weight teachers and synthetic inputs are used: speed does not depend on training, and the
script needs no data set. Ratios, not absolute times, are what the README quotes.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dfkd_meta.data import RAW, DataSource
from dfkd_meta.models import build_model
from dfkd_meta.onnx.inspect import forward_flops, load_model_proto, model_facts
from dfkd_meta.onnx.runtime import OrtModel
from dfkd_meta.onnx.torch_export import export_onnx
from dfkd_meta.reconstruct.synthesize import ReconstructConfig, reconstruct
from dfkd_meta.sidecar import validate
from dfkd_meta.stats.export import export_release

HERE = Path(__file__).resolve().parent


def matmul_rate(n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def synthetic_source(shape: tuple[int, ...], n: int, seed: int = 0) -> DataSource:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    y = (np.arange(n) % 10).astype(np.int64)
    src = DataSource(name="synthetic", description="uniform random images", license="CC0-1.0",
                     class_names=[str(i) for i in range(10)], raw={"train": (x, y)}, spec="synthetic")
    return src


def _ort_pass(model: OrtModel, data: DataSource, batch_size: int = 500) -> float:
    t0 = time.perf_counter()
    for x, _ in data.batches("train", batch_size, feed=RAW):  # the identity convention, as the export uses
        model.run(x)
    return time.perf_counter() - t0


def bench_teacher(arch: str, shape: tuple[int, ...], batches: list[int], steps: int, export_n: int,
                  folder: Path, rate: float, repeats: int) -> dict:
    torch.manual_seed(0)
    model = build_model(arch, shape, 10).eval()
    path = export_onnx(model, shape, folder / f"{arch}.onnx")
    proto = load_model_proto(path)
    flops = forward_flops(model_facts(path, proto), proto)
    data = synthetic_source(shape, export_n)
    # 3. export vs plain ORT inference over the same batches of the same data source (input
    # preparation included on both sides, fresh sessions, best of `repeats`). ORT with the export's
    # taps alone is the ceiling for any statistics code: tapping a pre-activation stops ORT fusing
    # the op with its activation.
    export_s, ort_s, taps_s = float("inf"), float("inf"), float("inf")
    for _ in range(repeats):
        release = export_release(path, data, folder / f"{arch}-release", spectral_k=0, batch_size=500,
                                 force=True, overwrite=True, progress=False)  # random weights: no accuracy check
        export_s = min(export_s, release.summary["pass_seconds"])
        taps = [layer["tensor"] for layer in release.summary["layers"]]
        ort_s = min(ort_s, _ort_pass(OrtModel(path), data))
        taps_s = min(taps_s, _ort_pass(OrtModel(path, taps=taps), data))
    rows = []
    for b in batches:  # 2. reconstruction throughput
        reconstruct(release.model_path, release.sidecar_path, folder / "warm.h5",
                    ReconstructConfig(objective="all_layers", samples=b, steps=3, batch_size=b), device="cpu",
                    progress=False)
        seconds = min(reconstruct(release.model_path, release.sidecar_path, folder / f"{arch}-{b}.h5",
                                  ReconstructConfig(objective="all_layers", samples=b, steps=steps, batch_size=b),
                                  device="cpu", progress=False).summary["seconds"] for _ in range(repeats))
        sps = b * steps / seconds
        rows.append({"batch_size": b, "steps": steps, "sample_steps_per_s": round(sps, 1),
                     "gflops_per_s": round(sps * 2 * flops / 1e9, 2),
                     "fraction_of_matmul_rate": round(sps * 2 * flops / rate, 4)})
    return {"teacher": arch, "input_shape": list(shape), "forward_mflops": round(flops / 1e6, 4),
            "reconstruction": rows,
            "export": {"examples": export_n, "repeats": repeats, "export_pass_s": export_s,
                       "ort_inference_s": round(ort_s, 4), "ort_with_taps_s": round(taps_s, 4),
                       "export_examples_per_s": round(export_n / export_s, 1),
                       "ort_examples_per_s": round(export_n / ort_s, 1),
                       "export_over_ort_throughput": round(ort_s / export_s, 3),
                       "taps_only_over_ort_throughput": round(ort_s / taps_s, 3)}}


def bench_validation(folder: Path, sizes_mb: list[int]) -> list[dict]:
    from dfkd_meta.sidecar import DatasetProvenance, InputDomain, LayerStats, ModelBinding, Sidecar, write_sidecar

    rows = []
    for mb in sizes_mb:
        units, rank, c = 20_000, max(1, mb * 2 ** 20 // (10 * 20_000 * 4)), 10
        rng = np.random.default_rng(0)
        std = rng.uniform(0.5, 1.0, (c, units)).astype(np.float32)
        cov = (rng.standard_normal((c, units, rank)) * (0.2 / np.sqrt(rank))).astype(np.float32)
        layer = LayerStats(key="big", tensor_name="h", order=0, kind="pre_activation", shape=(units,),
                           mean=rng.standard_normal((c, units)).astype(np.float32), std=std,
                           count=np.full(c, 10, np.int64), cov_factors=cov)
        sc = Sidecar(model=ModelBinding("m.onnx", "0" * 64, 8, {"": 17}, "x", (-1, 64), "float32", "logits", c,
                                        InputDomain("NC", 0.0, 1.0)),
                     dataset=DatasetProvenance("synthetic", 100, np.full(c, 10, np.int64)), layers=[layer])
        path = write_sidecar(sc, folder / f"big{mb}.dfkd.h5")
        t0 = time.perf_counter()
        report = validate(path)  # what the CLI does: a child process with plugins disabled
        seconds = time.perf_counter() - t0
        # Peak memory of a process that does nothing but validate this file (imports included).
        # VmHWM, unlike ru_maxrss, is reset by exec: it is this process's own peak, not its parent's.
        hwm = "int(next(x for x in open('/proc/self/status') if x.startswith('VmHWM')).split()[1])"
        probe = ("import sys; from dfkd_meta.sidecar.validator import validate_in_process; "
                 f"validate_in_process(sys.argv[1]); print({hwm})")
        baseline = f"import dfkd_meta.sidecar.validator; print({hwm})"
        peak = int(subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True,
                                  check=True).stdout.split()[-1])
        idle = int(subprocess.run([sys.executable, "-c", baseline], capture_output=True, text=True,
                                  check=True).stdout.split()[-1])
        rows.append({"file_mb": round(path.stat().st_size / 2 ** 20, 1), "valid": report.valid,
                     "seconds": round(seconds, 3), "peak_rss_mb": round(peak / 1024, 1),
                     "rss_above_imports_mb": round((peak - idle) / 1024, 1)})
        path.unlink()
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE / "results" / "speed.json")
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    rate = matmul_rate(1024 if args.quick else 2048)
    print(f"fp32 matmul rate: {rate / 1e9:.1f} GFLOP/s ({torch.get_num_threads()} threads)")
    steps = 5 if args.quick else 20
    batches = [64, 256] if args.quick else [64, 256, 1024]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        n, repeats = (2000, 1) if args.quick else (20000, 3)
        teachers = [bench_teacher("hinton1200", (1, 28, 28), batches, steps, n, folder, rate, repeats),
                    bench_teacher("lenet5", (1, 32, 32), batches, steps, n, folder, rate, repeats)]
        validation = bench_validation(folder, [20] if args.quick else [100, 200])
    result = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "torch": torch.__version__, "threads": torch.get_num_threads()},
              "matmul_gflops_per_s": round(rate / 1e9, 2), "teachers": teachers, "validation": validation,
              "targets": {"mlp_reconstruction_fraction": 0.80, "lenet_reconstruction_fraction": 0.25,
                          "export_over_ort": 0.8, "validation_seconds": 2.0}}
    print("\n| teacher | batch | sample-steps/s | GFLOP/s | fraction of matmul rate |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for t in teachers:
        for r in t["reconstruction"]:
            print(f"| {t['teacher']} | {r['batch_size']} | {r['sample_steps_per_s']:.0f} | {r['gflops_per_s']:.1f} | "
                  f"{r['fraction_of_matmul_rate']:.1%} |")
    print("\n| teacher | export ex/s | ORT inference ex/s | export / ORT | ORT with taps only / ORT |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for t in teachers:
        e = t["export"]
        print(f"| {t['teacher']} | {e['export_examples_per_s']:.0f} | {e['ort_examples_per_s']:.0f} | "
              f"{e['export_over_ort_throughput']:.2f} | {e['taps_only_over_ort_throughput']:.2f} |")
    print("\n| sidecar MB | validation s | peak RSS MB | RSS above imports MB |")
    print("| ---: | ---: | ---: | ---: |")
    for v in validation:
        print(f"| {v['file_mb']} | {v['seconds']:.2f} | {v['peak_rss_mb']:.0f} | {v['rss_above_imports_mb']:.0f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
