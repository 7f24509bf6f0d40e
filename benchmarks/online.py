"""Online synthesis against its metadata-free self, at equal wall-clock budgets (not a test; run by hand).

    python benchmarks/online.py --data mnist:../shared/data/mnist --pair lenet --grid --minutes 5
    python benchmarks/online.py --data mnist:../shared/data/mnist --pair lenet --methods dfad --minutes 30 \\
        --seeds 0 1 2 --sidecar both
    python benchmarks/online.py --pair lenet --methods dfad --sidecar yes --minutes 40 --resumable  # the 4x row
    python benchmarks/online.py --pair mlp-plain --methods dfad --minutes 10 --sidecar both --kd  # the MLP rows
    python benchmarks/online.py --table            # print every row of the results file

Every row trains one student and records its final test accuracy (no checkpoint selection),
agreement with the teacher, wall-clock minutes, teacher forward examples, iterations, settings and
run date. A row's iteration count is calibrated so that the whole run (setup included) fits its
budget: a short calibration run measures the seconds per iteration and the setup, then the row
runs with ``(budget - setup) / seconds_per_iteration`` iterations, so every method gets its full
learning-rate schedule. Rows are merged into ``--out`` by their key (data, pair, method, sidecar,
budget, seed), so they can be run separately, across sessions, and a row already there is skipped
unless ``--rerun``. The teacher and its release (sidecar with rank-32 covariance factors) are
trained once per data set and pair under ``--work``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from dfkd_meta.config import DistillConfig, OnlineConfig
from dfkd_meta.data import load_data
from dfkd_meta.device import retain_freed_memory
from dfkd_meta.distill import distill, distill_online
from dfkd_meta.models import build_model, hidden_dropout_keep_probs
from dfkd_meta.onnx.torch_export import export_onnx
from dfkd_meta.stats.export import export_release
from dfkd_meta.synthesis import METHODS
from dfkd_meta.train import train_teacher

HERE = Path(__file__).resolve().parent
# pairs: teacher, student, resize. "mlp" (the dropout student) is kept for its recorded rows; "mlp-plain" is the
# headline MLP pair, with Hinton et al. 2015's unregularised 800-800 student (dropout capped "mlp" at 97.4%)
PAIRS = {"lenet": ("lenet5", "lenet5-half", 32), "mlp": ("hinton1200", "hinton800", None),
         "mlp-plain": ("hinton1200", "hinton800-plain", None)}
TEACHER_EPOCHS = 8
KD_EPOCHS = 40  # the student recipe on real data (the cap every data-free row is judged against)
COV_RANK = 32


def release_for(data_spec: str, pair: str, work: Path, log) -> tuple:
    teacher_arch, _, resize = PAIRS[pair]
    data = load_data(data_spec, resize)
    folder = work / data.name / teacher_arch  # pairs with the same teacher share it and its release
    rel = folder / "release"
    sidecar = rel / "teacher.dfkd.h5"
    if not sidecar.is_file():
        log(f"training {teacher_arch} on {data.name} ({TEACHER_EPOCHS} epochs) and exporting its release")
        torch.manual_seed(0)
        trained = train_teacher(build_model(teacher_arch, data.input_shape, data.num_classes), data,
                                epochs=TEACHER_EPOCHS, device="cpu", progress=False)
        path = export_onnx(trained.model, data.input_shape, folder / "teacher.onnx", convention=trained.convention,
                           dropout_keep=hidden_dropout_keep_probs(trained.model))
        export_release(path, data, rel, cov_rank=COV_RANK, progress=False)
    return data, rel / "teacher.onnx", sidecar


def _student(pair: str, data, seed: int):
    torch.manual_seed(seed)
    return build_model(PAIRS[pair][1], data.input_shape, data.num_classes)


def run_online(pair, data, teacher, sidecar, method, seed, minutes, calibrate, log, state: Path | None = None,
               time_budget: bool = False) -> dict:
    """One row. With ``state`` (a path stem), the calibrated plan and the run's checkpoint live there,
    so an interrupted row resumes where it stopped (the long rows span sessions). With
    ``time_budget`` the loop runs on ``distill --minutes`` (the budget less the measured setup), the
    calibrated count only spacing the curve's points, so a row cannot overrun when the machine slows."""
    plan_path = state.with_suffix(".plan.json") if state is not None else None
    if plan_path is not None and plan_path.is_file():
        plan = json.loads(plan_path.read_text())
        log(f"  resuming {method} {'with' if sidecar else 'without'} sidecar, seed {seed}: {plan['iterations']} "
            "iterations planned")
    else:
        cfg = OnlineConfig(method=method, iterations=calibrate, seed=seed, checkpoint_every=calibrate)
        t0 = time.perf_counter()
        probe = distill_online(teacher, _student(pair, data, seed), cfg, sidecar=sidecar, device="cpu", progress=False)
        total = time.perf_counter() - t0
        loop = probe.report["history"][-1]["seconds"]
        per_it, setup = loop / calibrate, total - loop
        plan = {"iterations": max(calibrate, int((minutes * 60 - setup) / per_it)), "seconds_per_iteration": per_it,
                "setup_seconds": setup}
        if plan_path is not None:
            plan_path.parent.mkdir(parents=True, exist_ok=True)
            plan_path.write_text(json.dumps(plan))
        log(f"  {method} {'with' if sidecar else 'without'} sidecar, seed {seed}: {per_it:.3f} s/it, setup "
            f"{setup:.0f} s -> {plan['iterations']} iterations")
    iterations, per_it = plan["iterations"], plan["seconds_per_iteration"]
    cfg = OnlineConfig(method=method, iterations=iterations, seed=seed, checkpoint_every=max(1, iterations // 20))
    if time_budget:  # the count becomes a cap far above the plan; the clock ends the run
        cfg = OnlineConfig(method=method, iterations=4 * iterations, seed=seed,
                           minutes=max(0.1, minutes - plan["setup_seconds"] / 60),
                           checkpoint_every=max(1, iterations // 20))
    t0 = time.perf_counter()
    r = distill_online(teacher, _student(pair, data, seed), cfg, sidecar=sidecar, device="cpu", eval_data=data,
                       eval_every=max(1, iterations // 10), progress=False,
                       checkpoint=state.with_suffix(".ckpt") if state is not None else None,
                       resume=state is not None).report
    seconds = time.perf_counter() - t0
    if state is not None:
        # across sessions the wall clock of one process is not the row's: count the loop's own seconds
        # (kept in the checkpoint, curve evaluations excluded) plus the setup measured at calibration
        seconds = r["distill_seconds"] + plan["setup_seconds"]
    return {"accuracy": r["student_accuracy"], "agreement": r["agreement"], "teacher_accuracy": r["teacher_accuracy"],
            "minutes": round(seconds / 60, 2), "iterations": r["iterations"], "teacher_forward_examples":
            r["teacher_forward_examples"], "seconds_per_iteration": round(per_it, 4),
            "curve": [h for h in r["history"] if "student_accuracy" in h], "settings": r["settings"],
            "method_settings": r["method_settings"], "student_recipe": r["student_recipe"],
            "gaussian_per_batch": r["gaussian_per_batch"], "resumable": state is not None,
            "budget_mode": "time" if time_budget else "calibrated iterations"}


def run_kd(pair, data, teacher, seed, log) -> dict:
    t0 = time.perf_counter()
    r = distill(teacher, _student(pair, data, seed), data, DistillConfig(epochs=KD_EPOCHS, seed=seed), device="cpu",
                eval_data=data, progress=False).report
    return {"accuracy": r["student_accuracy"], "agreement": r["agreement"], "teacher_accuracy": r["teacher_accuracy"],
            "minutes": round((time.perf_counter() - t0) / 60, 2), "epochs": KD_EPOCHS, "settings": r["settings"]}


def load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {"rows": {}}


def save(path: Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)


def table(results: dict) -> str:
    lines = ["| data | pair | method | sidecar | budget min | seeds | test accuracy | agreement | minutes | "
             "teacher examples |", "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    groups: dict[tuple, list] = {}
    for key, row in results["rows"].items():
        k = tuple(key.split("|")[:-1])
        groups.setdefault(k, []).append(row)
    for k in sorted(groups):
        rows = groups[k]
        acc = np.array([r["accuracy"] for r in rows])
        spread = f" +- {acc.std():.4f}" if len(rows) > 1 else ""
        data, pair, method, sidecar, budget = k
        lines.append(f"| {data} | {pair} | {method} | {sidecar} | {budget} | {len(rows)} | {acc.mean():.4f}{spread} | "
                     f"{np.mean([r.get('agreement', float('nan')) for r in rows]):.4f} | "
                     f"{np.mean([r['minutes'] for r in rows]):.1f} | "
                     f"{int(np.mean([r.get('teacher_forward_examples', 0) for r in rows])):,} |")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    """Accuracy against wall-clock minutes: one panel per data set, pair and budget; a colour per method,
    solid with the sidecar, dashed without; seeds in the same style."""
    from dfkd_meta.plotting import pyplot, save_png

    panels: dict[tuple, list] = {}
    for key, row in sorted(results["rows"].items()):
        if row.get("curve"):
            data, pair, method, sidecar, budget, seed = key.split("|")
            panels.setdefault((data, pair, budget), []).append((method, sidecar, seed, row["curve"]))
    if not panels:
        return
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.2), squeeze=False)
    colours = {m: f"C{i}" for i, m in enumerate(sorted({m for rows in panels.values() for m, *_ in rows}))}
    for ax, ((data, pair, budget), rows) in zip(axes[0], sorted(panels.items())):
        low, labelled = 1.0, set()
        for method, sidecar, _seed, curve in rows:
            acc = [c["student_accuracy"] for c in curve]
            low = min(low, min(acc[len(acc) // 2:]))
            label = None if (method, sidecar) in labelled else f"{method} {'+ sidecar' if sidecar == 'yes' else ''}"
            labelled.add((method, sidecar))
            ax.plot([c["seconds"] / 60 for c in curve], acc, "-" if sidecar == "yes" else "--",
                    color=colours[method], label=label, linewidth=1.2)
        ax.set_title(f"{data} {pair}, {budget} min per run", fontsize=9)
        ax.set_xlabel("wall-clock minutes (2 CPU cores)")
        ax.set_ylim(max(0.0, low - 0.05), 1.0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("student test accuracy (final-iteration curve)")
    fig.tight_layout()
    save_png(fig, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="mnist:../shared/data/mnist")
    ap.add_argument("--pair", choices=sorted(PAIRS), default="lenet")
    ap.add_argument("--methods", nargs="+", default=sorted(METHODS))
    ap.add_argument("--grid", action="store_true", help="every method, with and without the sidecar")
    ap.add_argument("--sidecar", choices=["both", "yes", "no"], default="both")
    ap.add_argument("--minutes", type=float, default=5.0, help="wall-clock budget per row")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--kd", action="store_true", help="also the KD-on-real-data row (same seeds)")
    ap.add_argument("--calibrate", type=int, default=40, help="iterations of the calibration run")
    ap.add_argument("--work", type=Path, default=HERE.parent / "runs" / "bench-online")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "online.json")
    ap.add_argument("--rerun", action="store_true")
    ap.add_argument("--time-budget", action="store_true",
                    help="end each row by the clock (distill --minutes) instead of a calibrated iteration count")
    ap.add_argument("--resumable", action="store_true",
                    help="checkpoint each row under --work/rows/ and resume an interrupted one (long rows)")
    ap.add_argument("--table", action="store_true", help="only print the results file's table")
    args = ap.parse_args(argv)
    log = lambda m: print(m, flush=True)  # noqa: E731
    results = load(args.out)
    if args.table:
        print(table(results))
        plot(results, args.out.with_suffix(".png"))
        return 0
    retain_freed_memory()  # as `dfkd-meta distill --method` does
    data, teacher, sidecar = release_for(args.data, args.pair, args.work, log)
    methods = sorted(METHODS) if args.grid else args.methods
    sides = {"both": ["no", "yes"], "yes": ["yes"], "no": ["no"]}[args.sidecar]
    today = dt.date.today().isoformat()
    for seed in args.seeds:
        if args.kd:
            key = f"{data.name}|{args.pair}|kd-real-data|n/a|{KD_EPOCHS} epochs|{seed}"
            if key not in results["rows"] or args.rerun:
                results["rows"][key] = {**run_kd(args.pair, data, teacher, seed, log), "date": today}
                save(args.out, results)
                log(f"{key}: {results['rows'][key]['accuracy']:.4f}")
        for method in methods:
            for side in sides:
                key = f"{data.name}|{args.pair}|{method}|{side}|{args.minutes:g}|{seed}"
                if key in results["rows"] and not args.rerun:
                    continue
                state = args.work / "rows" / key.replace("|", "_").replace("/", "-") if args.resumable else None
                row = run_online(args.pair, data, teacher, sidecar if side == "yes" else None, method, seed,
                                 args.minutes, args.calibrate, log, state, args.time_budget)
                results["rows"][key] = {**row, "date": today}
                save(args.out, results)
                log(f"{key}: {row['accuracy']:.4f} ({row['minutes']:.1f} min, {row['iterations']} iterations)")
    print(table(results))
    plot(results, args.out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
