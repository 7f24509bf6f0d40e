"""Releases at real size (not a test; run by hand, resumable): export time, throughput, memory, size, granularity.

    python benchmarks/scale.py                       # every row missing from results/scale.json
    python benchmarks/scale.py --rows resnet18-c10   # some rows (--rerun to measure again)

Each row is a residual network with random weights (seed 0) and random images with random labels, streamed from
Python (``from_batches``: nothing but a batch is ever held), exported with default settings and ``force`` (the
teacher is at chance). Every measurement runs in its own child process so that its peak resident memory
(``ru_maxrss``) is its own:
- ``export``: export_release end to end; its time, the share spent planning the spectral graph, the statistics
  pass's examples/s, the sidecar's bytes and the granularity the size budget chose for each layer;
- ``ort``: plain ONNX Runtime inference of the same batches (a session returning only the logits, the same
  thread count): the throughput export is compared with;
- ``validate``: the release's validation (isolated child, against the model): time and the child's peak memory;
- ``online`` (the resnet18-c100 row): every online method for a minute on the release, with and without its
  per-channel sidecar, a resnet8 student on the 3-channel inputs: seconds per student update.
The ``*-x10`` rows repeat a row with ten times the examples: export's memory must not grow with the data.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "scale.json"

# name: (architecture, input shape, classes, examples)
ROWS = {
    "resnet18-c10": ("resnet18", (3, 32, 32), 10, 2000),
    "resnet18-c10-x10": ("resnet18", (3, 32, 32), 10, 20000),
    "resnet18-c100": ("resnet18", (3, 32, 32), 100, 2000),
    "resnet50-c1000": ("resnet50", (3, 224, 224), 1000, 500),
}
SEED = 0


class RandomImages:
    """Re-iterable batches of uniform random images and labels (the same ones on every pass)."""

    def __init__(self, shape, classes: int, examples: int, batch: int = 100):
        self.shape, self.classes, self.examples, self.batch = tuple(shape), classes, examples, batch

    def __iter__(self):
        import numpy as np

        rng = np.random.default_rng(SEED)
        for start in range(0, self.examples, self.batch):
            n = min(self.batch, self.examples - start)
            yield rng.random((n, *self.shape), dtype=np.float32), rng.integers(0, self.classes, n)


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child_model(row: str, folder: Path) -> dict:
    import torch

    from dfkd_meta.models import build_model
    from dfkd_meta.onnx.torch_export import export_onnx

    arch, shape, classes, _ = ROWS[row]
    torch.manual_seed(SEED)
    model = build_model(arch, shape, classes).eval()
    path = export_onnx(model, shape, folder / f"{arch}.onnx")
    return {"model": str(path), "model_bytes": path.stat().st_size,
            "parameters": sum(p.numel() for p in model.parameters())}


def child_export(row: str, folder: Path) -> dict:
    from dfkd_meta.data.stream import from_batches
    from dfkd_meta.stats.export import export_release

    arch, shape, classes, examples = ROWS[row]
    data = from_batches(RandomImages(shape, classes, examples), num_classes=classes, name=f"random-{row}")
    t0 = time.perf_counter()
    result = export_release(folder / f"{arch}.onnx", data, folder / "release", force=True, progress=False)
    s = result.summary
    granularity: dict[str, int] = {}
    for g in s["granularity"].values():
        granularity[g] = granularity.get(g, 0) + 1
    return {"export_seconds": round(time.perf_counter() - t0, 2), "planning_seconds": s["spectral_planning_seconds"],
            "before_pass_seconds": s["graph_seconds"],
            "pass_seconds": s["pass_seconds"], "export_examples_per_second": s["samples_per_second"],
            "batch_size": s["batch_size"], "sidecar_bytes": s["sidecar_bytes"], "size_budget_bytes": s["size_budget_bytes"],
            "layers": len(s["layers"]), "granularity": granularity, "spectral_blocks": len(s["spectral_blocks"]),
            "spectral_omitted": len(s["spectral_omitted"]), "export_peak_mb": round(_peak_mb(), 1)}


def child_ort(row: str, folder: Path, batch: int) -> dict:
    import numpy as np

    from dfkd_meta.onnx.runtime import OrtModel

    arch, shape, classes, examples = ROWS[row]
    runner = OrtModel(folder / f"{arch}.onnx", spin=False)
    seen, t0 = 0, time.perf_counter()
    held = []
    for x, _ in RandomImages(shape, classes, examples, batch):  # the export's batches, its thread settings
        held.append(runner.run(x)[runner.output_names[0]].argmax(1))
        seen += len(x)
    seconds = time.perf_counter() - t0
    return {"ort_examples_per_second": round(seen / seconds, 1), "ort_peak_mb": round(_peak_mb(), 1),
            "ort_checksum": int(np.concatenate(held).sum())}


def child_validate(row: str, folder: Path) -> dict:
    from dfkd_meta.sidecar import validate

    arch = ROWS[row][0]
    rel = folder / "release"
    t0 = time.perf_counter()
    report = validate(rel / f"{arch}.dfkd.h5", rel / f"{arch}.onnx")
    return {"validate_seconds": round(time.perf_counter() - t0, 2), "valid": report.valid,
            "validate_child_peak_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)}


def run_child(step: str, row: str, folder: Path, *extra: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", step, "--rows", row, "--folder", str(folder),
           *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{row} {step}: child failed: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(row: str, online: bool = False) -> dict:
    folder = Path(tempfile.mkdtemp(prefix=f"dfkd-scale-{row}-"))
    try:
        out = {"architecture": ROWS[row][0], "input_shape": list(ROWS[row][1]), "classes": ROWS[row][2],
               "examples": ROWS[row][3]}
        out.update(run_child("model", row, folder))
        out.update(run_child("export", row, folder))
        out.update(run_child("ort", row, folder, "--batch", str(out["batch_size"])))
        out.update(run_child("validate", row, folder))
        if online and row == CONSUMER_ROW:  # the consumer side on this release: every method, with and without it
            from dfkd_meta.synthesis import METHODS

            out["online"] = {f"{m} {'sidecar' if side else 'none'}": run_child("online", row, folder, "--method", m,
                                                                                *(["--sidecar"] if side else []))
                             for m in sorted(METHODS) for side in (False, True)}
            out["online_setting"] = {"student": CONSUMER_STUDENT, "minutes": CONSUMER_MINUTES,
                                     "batch_size": CONSUMER_BATCH, "device": "cpu"}
        out["throughput_vs_ort"] = round(out["export_examples_per_second"] / out["ort_examples_per_second"], 3)
        out["planning_share"] = round(out["planning_seconds"] / out["export_seconds"], 3)
        out["sidecar_vs_model"] = round(out["sidecar_bytes"] / out["model_bytes"], 3)
        return out
    finally:
        shutil.rmtree(folder, ignore_errors=True)


REAL_MINUTES = 3
CONSUMER_ROW, CONSUMER_STUDENT, CONSUMER_MINUTES, CONSUMER_BATCH = "resnet18-c100", "resnet8", 1.0, 64


def child_online(row: str, folder: Path, method: str, with_sidecar: bool) -> dict:
    """One online method on the row's release (its per-channel sidecar, or none) for CONSUMER_MINUTES: seconds per
    student update and teacher examples per second on 3-channel inputs, a residual student."""
    import torch

    from dfkd_meta.config import OnlineConfig
    from dfkd_meta.distill import distill_online
    from dfkd_meta.models import build_model

    arch, shape, classes, _ = ROWS[row]
    torch.manual_seed(SEED)
    student = build_model(CONSUMER_STUDENT, shape, classes)
    cfg = OnlineConfig(method=method, iterations=10_000_000, minutes=CONSUMER_MINUTES, batch_size=CONSUMER_BATCH)
    rel = folder / "release"
    r = distill_online(rel / f"{arch}.onnx", student, cfg, sidecar=rel / f"{arch}.dfkd.h5" if with_sidecar else None,
                       device="cpu", progress=False).report
    return {"iterations": r["iterations"], "seconds": r["distill_seconds"],
            "seconds_per_iteration": round(r["distill_seconds"] / max(r["iterations"], 1), 3),
            "teacher_examples_per_second": round(r["teacher_forward_examples"] / r["distill_seconds"], 1),
            "moment_layers": len(r["context"]["moment_layers"]), "peak_mb": round(_peak_mb(), 1)}


def write_png_folder(data, folder: Path) -> Path:
    """The carved data set's train and test splits as PNG files, one folder per class (``imagefolder:`` layout)."""
    import numpy as np
    from PIL import Image

    done = folder / "complete"
    if done.is_file():
        return folder
    for split in ("train", "test"):
        x, y = data.raw[split]
        for c in range(data.num_classes):
            (folder / split / f"{c:02d}").mkdir(parents=True, exist_ok=True)
        for i, (image, label) in enumerate(zip(x, y)):
            # the IDX bytes as they are (multiplying uint8 by 255 would wrap them); floats in [0, 1] scaled back
            pixels = image[0] if image.dtype == np.uint8 else np.rint(np.clip(image[0], 0, 1) * 255).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(folder / split / f"{int(label):02d}" / f"{i:05d}.png")
    done.write_text("")
    return folder


def real_row(log=print) -> dict:
    """The Fashion-MNIST residual teacher trained outside dfkd-meta (benchmarks/foreign.py), its training images
    written as PNG files and exported from ``imagefolder:``; the statistics against the in-memory export of the same
    examples, the teacher check, and dfad with and without the sidecar under the same clock (test split, once)."""
    import claim
    import numpy as np
    import torch

    from dfkd_meta.config import OnlineConfig
    from dfkd_meta.data import load_data
    from dfkd_meta.distill import distill_online
    from dfkd_meta.models import build_model
    from dfkd_meta.sidecar import read_sidecar

    data, model, memory_sidecar = claim.release("fashion-resnet8", False, log)
    work = claim.WORK.parent / "scale"
    folder = write_png_folder(data, work / "fashion-png")
    images = load_data(f"imagefolder:{folder}")
    from dfkd_meta.stats.export import export_release

    t0 = time.perf_counter()
    result = export_release(model, images, work / "fashion-png-release", cov_rank=claim.COV_RANK, progress=False,
                            overwrite=True)
    export_seconds = time.perf_counter() - t0
    a, b = read_sidecar(memory_sidecar), read_sidecar(result.sidecar_path)
    worst = max(float(np.max(np.abs(x.mean - y.mean) / np.maximum(np.abs(x.std), 1e-3)))
                for x, y in zip(a.layers_in_order(), b.layers_in_order()) if x.per_unit and y.per_unit)
    out = {"teacher": "fashion-resnet8 (benchmarks/foreign.py, dynamo, BatchNorm folded)",
           "png_files": sum(1 for _ in folder.rglob("*.png")), "export_seconds": round(export_seconds, 1),
           "teacher_check": result.summary["teacher_check"], "granularity": result.summary["granularity"],
           "stats_vs_in_memory_max_diff_in_stds": worst, "online_minutes": REAL_MINUTES, "rows": {}}
    for variant in ("none", "sidecar"):
        torch.manual_seed(0)
        student = build_model("lenet5-half", images.input_shape, images.num_classes)
        cfg = OnlineConfig(method="dfad", iterations=10_000_000, minutes=REAL_MINUTES, seed=0)
        r = distill_online(result.model_path, student, cfg, sidecar=result.sidecar_path if variant == "sidecar" else None,
                           device="cpu", eval_data=images, eval_split="test", progress=False).report
        out["rows"][variant] = {"accuracy": r["student_accuracy"], "iterations": r["iterations"],
                                "minutes": round(r["distill_seconds"] / 60, 3),
                                "teacher_forward_examples": r["teacher_forward_examples"], "stalled": r["stalled"]}
        log(f"  real row, dfad {variant}: {r['student_accuracy']:.4f}")
    return out


BUDGET_MB = 2.0  # a sidecar squeezed to a twelfth of the Fashion ResNet-8's full-granularity 23.9 MB


def budget_cost_row(log=print) -> dict:
    """What the size budget costs a student: the Fashion ResNet-8 (benchmarks/foreign.py) exported again with its
    sidecar squeezed to BUDGET_MB (coarser granularity), then dfad with it under the claim's 3-minute seed-0 row's
    clock and settings; the full-granularity row is claim.json's."""
    import claim
    import torch

    from dfkd_meta.config import OnlineConfig
    from dfkd_meta.distill import distill_online
    from dfkd_meta.models import build_model
    from dfkd_meta.stats.export import export_release

    data, model, full_sidecar = claim.release("fashion-resnet8", False, log)
    result = export_release(model, data, claim.WORK.parent / "scale" / "fashion-budget", cov_rank=claim.COV_RANK,
                            max_size=BUDGET_MB, progress=False, overwrite=True)
    torch.manual_seed(0)
    student = build_model(claim.TEACHERS["fashion-resnet8"][2], data.input_shape, data.num_classes)
    cfg = OnlineConfig(method="dfad", iterations=10_000_000, minutes=3.0, seed=0, checkpoint_every=100)
    r = distill_online(result.model_path, student, cfg, sidecar=result.sidecar_path, device="cpu", eval_data=data,
                       eval_split="test", progress=False).report
    counts: dict[str, int] = {}
    for g in result.summary["granularity"].values():
        counts[g] = counts.get(g, 0) + 1
    log(f"  budget row: {r['student_accuracy']:.4f} with a {result.sidecar_path.stat().st_size / 2**20:.1f} MB sidecar")
    return {"teacher": "fashion-resnet8", "max_size_mb": BUDGET_MB, "sidecar_bytes": result.sidecar_path.stat().st_size,
            "full_sidecar_bytes": full_sidecar.stat().st_size, "granularity": counts, "accuracy": r["student_accuracy"],
            "iterations": r["iterations"], "minutes": round(r["distill_seconds"] / 60, 3),
            "full_row": "test|fashion-resnet8|dfad|sidecar|3|0|defaults"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", nargs="+", choices=sorted(ROWS), default=list(ROWS))
    ap.add_argument("--rerun", action="store_true")
    ap.add_argument("--online", action="store_true", help=f"on the {CONSUMER_ROW} row, also every online method for "
                    f"{CONSUMER_MINUTES:g} minute with and without the sidecar")
    ap.add_argument("--budget-cost", action="store_true",
                    help=f"the Fashion ResNet-8 release with its sidecar squeezed to {BUDGET_MB:g} MB, dfad 3 minutes "
                         "against the claim's full-granularity row")
    ap.add_argument("--real", action="store_true", help="the real-data row: a Fashion-MNIST residual teacher, its "
                    "images as a PNG folder, dfad with and without the sidecar (3 minutes each)")
    ap.add_argument("--child", choices=["model", "export", "ort", "validate", "online"], help=argparse.SUPPRESS)
    ap.add_argument("--method", help=argparse.SUPPRESS)
    ap.add_argument("--sidecar", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        fn = {"model": child_model, "export": child_export, "validate": child_validate,
              "ort": lambda r, f: child_ort(r, f, args.batch),
              "online": lambda r, f: child_online(r, f, args.method, args.sidecar)}[args.child]
        print(json.dumps(fn(args.rows[0], args.folder)))
        return 0
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"rows": {}}
    import torch

    results["machine"] = {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "platform": platform.platform(), "processor": platform.processor() or platform.machine()}
    single = {"budget_cost": budget_cost_row, "real": real_row}  # one result each, not a row per model
    for name, run in single.items():
        if getattr(args, name):
            sys.path.insert(0, str(HERE))
            results[name] = {**run(), "date": dt.date.today().isoformat()}
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            RESULTS.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
            return 0
    for row in args.rows:
        if row in results["rows"] and not args.rerun:
            continue
        print(f"{row}: measuring", flush=True)
        results["rows"][row] = {**measure(row, args.online), "date": dt.date.today().isoformat()}
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
        print(json.dumps(results["rows"][row], indent=1), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
