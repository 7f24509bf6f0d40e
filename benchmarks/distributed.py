"""One process against two under torchrun, on this machine (not a test; run by hand, resumable).

    python benchmarks/distributed.py            # every row not yet in results/distributed.json
    python benchmarks/distributed.py --table

Three long commands on MNIST with the claim's LeNet-5 release (made once under runs/claim): ``export`` of the
training files (60,000 images at 32x32), ``reconstruct`` (2,048 samples, 50 steps, batches of 256) and an online
method (DFAD with the sidecar, 150 iterations of 256, lenet5-half student). Each in three configurations:
one process with the machine's threads, one process with one thread, and two processes of one thread each under
``torchrun --standalone`` (gloo), the form the README gives. Every row runs the CLI in a fresh process with
``--json`` and records the command's own seconds, its throughput and the bytes its main process handed to
collectives (DDP's gradient all-reduce is reported beside them from the student's size). Results:
results/distributed.json; docs/benchmarks.md renders them and a model of how the bytes scale.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import claim  # noqa: E402
from protocol import SHARED, run_rows  # noqa: E402

RESULTS = HERE / "results" / "distributed.json"
WORK = HERE.parent / "runs" / "distributed"
CONFIGS = {  # name: (processes, threads per process; None = the machine's default)
    "1 process": (1, None),
    "1 process, 1 thread": (1, 1),
    "2 processes, 1 thread each": (2, 1),
}


def _command(task: str, model: Path, sidecar: Path, out: Path) -> list[str]:
    if task == "export":
        return ["export", "--model", str(model), "--data", f"mnist:{SHARED / 'mnist'}", "--resize", "32", "-o",
                str(out), "--overwrite", "--json", "-q"]
    if task == "reconstruct":
        return ["reconstruct", "--model", str(model), "--sidecar", str(sidecar), "--samples", "2048", "--batch-size",
                "256", "--steps", "50", "-o", str(out), "--json", "-q", "--device", "cpu"]
    return ["distill", "--teacher", str(model), "--method", "dfad", "--sidecar", str(sidecar), "--student",
            "lenet5-half", "--iterations", "150", "--batch-size", "256", "-o", str(out), "--json", "-q",
            "--device", "cpu"]


def run_row(task: str, config: str, log) -> dict:
    _, model, sidecar = claim.release("mnist-lenet5", False, log)
    processes, threads = CONFIGS[config]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    with tempfile.TemporaryDirectory(dir=WORK) as scratch:
        out = Path(scratch) / {"export": "release", "reconstruct": "transfer.h5", "online": "student.onnx"}[task]
        launcher = [sys.executable, "-m", "dfkd_meta.cli"] if processes == 1 else \
            [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}", "-m",
             "dfkd_meta.cli"]
        t0 = time.perf_counter()
        done = subprocess.run([*launcher, *_command(task, model, sidecar, out)], cwd=scratch, env=env,
                              capture_output=True, text=True)
        wall = time.perf_counter() - t0
    if done.returncode:
        raise SystemExit(f"{task} / {config}: exit {done.returncode}\n{done.stderr[-3000:]}")
    s = json.loads(done.stdout[done.stdout.index("{"):])
    row = {"task": task, "config": config, "processes": processes, "threads": threads, "wall_seconds": round(wall, 2)}
    if task == "export":
        row.update(seconds=s["seconds"], pass_seconds=s["pass_seconds"], work=s["samples"], unit="examples",
                   throughput=round(s["samples"] / s["pass_seconds"], 1), communicated_bytes=s["communicated_bytes"],
                   sidecar_bytes=s["sidecar_bytes"])
    elif task == "reconstruct":
        row.update(seconds=s["seconds"], work=s["samples"], unit="samples",
                   throughput=round(s["samples"] / s["seconds"], 2), communicated_bytes=s["communicated_bytes"],
                   teacher_agreement=s["teacher_agreement"])
    else:
        row.update(seconds=s["distill_seconds"], work=s["iterations"], unit="iterations",
                   throughput=round(s["iterations"] / s["distill_seconds"], 3),
                   collective_bytes_per_iteration=s["collective_bytes_per_iteration"],
                   ddp_gradient_bytes_per_iteration=s["ddp_gradient_bytes_per_iteration"],
                   teacher_forward_examples=s["teacher_forward_examples"])
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=["export", "reconstruct", "online"])
    ap.add_argument("--rerun", action="store_true")
    ap.add_argument("--table", action="store_true")
    args = ap.parse_args()
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"rows": {}}
    if args.table:
        from tables import distributed_table
        print(distributed_table({"distributed": results}))
        return
    WORK.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(msg, flush=True)

    jobs = [(f"{task}|{config}", lambda task=task, config=config: run_row(task, config, log))
            for task in args.tasks for config in CONFIGS]
    run_rows(RESULTS, results, jobs, rerun=args.rerun, log=log,
             done=lambda key, row: f"{row['seconds']} s, {row['throughput']} {row['unit']}/s")


if __name__ == "__main__":
    main()
