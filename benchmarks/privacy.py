"""What a privacy budget costs a consumer and buys a publisher (not a test; run by hand, resumable).

    python benchmarks/privacy.py --teacher mnist-lenet5 --epsilons inf 8 4 1 0.5 --minutes 3
    python benchmarks/privacy.py --teacher mnist-hinton1200 --epsilons inf 8 4 1 0.5 --minutes 3
    python benchmarks/privacy.py --table
    python benchmarks/privacy.py --teacher mnist-lenet5 --choose-clip 0.25 0.5 1 2 4 --epsilons 8   # validation rows

For each teacher (the claim's, made once under runs/claim) and budget epsilon (delta ``DELTA``): a release is
exported from the teacher's training files (less the validation split) with ``--dp-epsilon`` (``inf``: exact
statistics), every budget with the same settings (covariance rank 0, which a private export requires; the default
layers, spectral k and clip); then

- the best data-free student of the claim (DFAD with the sidecar, the claim's defaults) trains for ``--minutes`` on
  the clock and is scored once on the test split;
- ``dfkd_meta.audit`` measures the release: class-mean PSNR/SSIM of the best reconstruction, the tracing test's
  AUC and advantage on a shadow release of ``--members`` examples, and the nearest-neighbour share of first-layer
  Gaussian draws.

Nothing is tuned on the test split: the one setting chosen here, the clip default (``--dp-clip``), is chosen by
``--choose-clip`` on the validation split (the same student, scored on ``val``; results/privacy-clip.json, no audit:
the clip changes what the noise hides, not the budget). Writes results/privacy.json and privacy.png.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import claim  # noqa: E402
from protocol import overran, run_rows  # noqa: E402

from dfkd_meta.audit import audit_release  # noqa: E402
from dfkd_meta.config import ExportConfig, OnlineConfig  # noqa: E402
from dfkd_meta.distill import distill_online  # noqa: E402
from dfkd_meta.models import build_model  # noqa: E402
from dfkd_meta.stats.export import export_release  # noqa: E402

RESULTS = HERE / "results"
WORK = HERE.parent / "runs" / "privacy"
DELTA = 1e-5
FIRST_CLIP = 1.0  # the clip of the first rows (the default before --choose-clip chose one)
TEACHERS = ("mnist-lenet5", "mnist-hinton1200")


def eps_label(eps: float) -> str:
    return "inf" if math.isinf(eps) else f"{eps:g}"


def row_key(teacher: str, eps: float, minutes: float, seed: int, clip: float) -> str:
    """A row's key; a private row clipped at other than the first rows' 1.0 says its clip."""
    tail = f"|clip{clip:g}" if not math.isinf(eps) and clip != FIRST_CLIP else ""
    return f"{teacher}|{eps_label(eps)}|{minutes:g}|{seed}{tail}"


def run_row(teacher: str, eps: float, minutes: float, seed: int, members: int, log, clip: float) -> dict:
    data, model, _ = claim.release(teacher, False, log)
    folder = WORK / teacher / f"eps-{eps_label(eps)}" if clip == FIRST_CLIP else \
        WORK / teacher / f"eps-{eps_label(eps)}-clip-{clip:g}"
    t0 = time.perf_counter()
    private = {} if math.isinf(eps) else {"dp_epsilon": eps, "dp_delta": DELTA, "dp_clip": clip}
    exported = export_release(model, data, folder, cov_rank=0, overwrite=True, progress=False, **private)
    export_seconds = time.perf_counter() - t0
    log(f"  released: {exported.summary['sidecar_bytes'] / 1e6:.2f} MB in {export_seconds:.0f} s")
    student = trained_student(teacher, data, exported, minutes, seed, "test", log)
    log("  auditing the release")
    return {"epsilon": None if math.isinf(eps) else eps, "delta": None if math.isinf(eps) else DELTA, **student,
            "export_seconds": round(export_seconds, 1), "sidecar_bytes": exported.summary["sidecar_bytes"],
            "privacy": exported.summary["privacy"], **audited(exported.model_path, exported.sidecar_path, data,
                                                              members, seed)}


def run_clip_row(teacher: str, eps: float, clip: float, minutes: float, seed: int, log) -> dict:
    """A validation row for the clip default: a release at ``eps`` clipped at ``clip``, the student scored on val."""
    data, model, _ = claim.release(teacher, False, log)
    folder = WORK / teacher / f"clip-{clip:g}-eps-{eps_label(eps)}"
    exported = export_release(model, data, folder, cov_rank=0, overwrite=True, progress=False, dp_epsilon=eps,
                              dp_delta=DELTA, dp_clip=clip)
    student = trained_student(teacher, data, exported, minutes, seed, "val", log)
    return {"teacher": teacher, "epsilon": eps, "delta": DELTA, "clip": clip, "seed": seed, **student,
            "noise_std": exported.summary["privacy"]["noise_std"]}


def trained_student(teacher: str, data, exported, minutes: float, seed: int, split: str, log) -> dict:
    """The claim's best data-free student (DFAD with the sidecar) on ``exported`` for ``minutes``, scored on
    ``split`` once: the row's student figures."""
    torch.manual_seed(seed)
    arch = claim.TEACHERS[teacher][2]
    student = build_model(arch, data.input_shape, data.num_classes)
    cfg = OnlineConfig(method="dfad", iterations=10_000_000, minutes=minutes, seed=seed)
    r = distill_online(exported.model_path, student, cfg, sidecar=exported.sidecar_path, device="cpu", eval_data=data,
                       eval_split=split, progress=False, log=lambda m: log("  " + m)).report
    loop_minutes = r["distill_seconds"] / 60
    return {"student_accuracy": r["student_accuracy"], "teacher_accuracy": r["teacher_accuracy"], "split": split,
            "method": "dfad", "variant": "sidecar", "student": arch, "minutes": round(loop_minutes, 3),
            "budget_minutes": minutes, "overran": overran(loop_minutes, minutes), "iterations": r["iterations"],
            "teacher_forward_examples": r["teacher_forward_examples"], "stalled": r["stalled"]}


def clip_summary(results: dict) -> str:
    """The validation rows the clip default was chosen on."""
    rows = sorted(results["rows"].values(), key=lambda r: (r["teacher"], r["epsilon"], r["clip"], r["seed"]))
    if not rows:
        return "No rows yet (benchmarks/privacy.py --choose-clip)."
    lines = ["| teacher | epsilon | clip (RMS per unit) | student accuracy on val (DFAD + sidecar) | minutes | iterations |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['teacher']} | {r['epsilon']:g} | {r['clip']:g} | {r['student_accuracy']:.4f} | "
                     f"{r['minutes']:.1f} | {r['iterations']:,} |")
    seeds = ", ".join(str(x) for x in sorted({r["seed"] for r in rows}))
    lines += ["", f"delta {DELTA:g}; validation split (held out of the teacher's training files); seeds {seeds}."]
    return "\n".join(lines)


def audited(model: Path, sidecar: Path, data, members: int, seed: int) -> dict:
    """The audit of a release, and the figures the table shows."""
    t0 = time.perf_counter()
    audit = audit_release(model, sidecar, data, members=members, seed=seed)
    return {"audit_seconds": round(time.perf_counter() - t0, 1),
            "class_mean_psnr": audit["class_means"].get("psnr"), "class_mean_ssim": audit["class_means"].get("ssim"),
            "class_mean_best": audit["class_means"].get("best"),
            "membership_auc": audit["membership"]["auc"], "membership_advantage": audit["membership"]["advantage"],
            "nearest_train_share": audit["nearest_neighbours"].get("first_layer_gaussian", {}).get(
                "train_nearer_share"), "audit": audit}


def reaudit(results: dict, teacher: str, log) -> None:
    """Audit again the releases the rows of ``teacher`` were made with (the same files the student trained on), after
    a change to the audit; the student's figures stay."""
    data, _, _ = claim.release(teacher, False, log)
    for key, row in results["rows"].items():
        if row["teacher"] == teacher:
            clip = (row["privacy"] or {}).get("clip", FIRST_CLIP)
            folder = WORK / teacher / f"eps-{key.split('|')[1]}" + ("" if clip == FIRST_CLIP else f"-clip-{clip:g}")
            log(f"{key}: auditing {folder} again")
            row.update(audited(folder / "teacher.onnx", folder / "teacher.dfkd.h5", data,
                               row["audit"]["membership"]["members"], row["seed"]))


def _groups(results: dict) -> list[list[dict]]:
    """Rows of the same teacher, budget and clip (their seeds), ordered by teacher, then budget (exact first)."""
    groups: dict[tuple, list[dict]] = {}
    for r in results["rows"].values():
        clip = (r["privacy"] or {}).get("clip")
        groups.setdefault((r["teacher"], -(r["epsilon"] or math.inf), clip or 0.0), []).append(r)
    return [sorted(groups[k], key=lambda r: r["seed"]) for k in sorted(groups)]


def _mean(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return sum(values) / len(values) if values else None


def summary(results: dict) -> str:
    """One Markdown table: each teacher, budget and clip, the student's accuracy (mean over seeds, range) and the
    audit's figures (means)."""
    if not results["rows"]:
        return "No rows yet (benchmarks/privacy.py)."
    lines = ["| teacher | epsilon | seeds | student accuracy (DFAD + sidecar) | minutes | class-mean PSNR dB / SSIM | "
             "membership AUC / advantage | draws nearer train |",
             "| --- | ---: | ---: | ---: | ---: | --- | --- | ---: |"]
    for rows in _groups(results):
        r = rows[0]
        eps = "none (exact)" if r["epsilon"] is None else f"{r['epsilon']:g} (clip {r['privacy']['clip']:g})"
        acc = f"{_mean(rows, 'student_accuracy'):.4f}"
        if len(rows) > 1:
            acc += f" ({min(x['student_accuracy'] for x in rows):.4f}..{max(x['student_accuracy'] for x in rows):.4f})"
        psnr = "" if _mean(rows, "class_mean_psnr") is None else \
            f"{_mean(rows, 'class_mean_psnr'):.1f} / {_mean(rows, 'class_mean_ssim'):.3f}"
        share = "" if _mean(rows, "nearest_train_share") is None else f"{_mean(rows, 'nearest_train_share'):.1%}"
        lines.append(f"| {r['teacher']} | {eps} | {', '.join(str(x['seed']) for x in rows)} | {acc} | "
                     f"{_mean(rows, 'minutes'):.1f} | {psnr} | {_mean(rows, 'membership_auc'):.3f} / "
                     f"{_mean(rows, 'membership_advantage'):.3f} | {share} |")
    rows = list(results["rows"].values())
    teachers = ", ".join(f"{t} {a:.4f}" for t, a in sorted({(r["teacher"], r["teacher_accuracy"]) for r in rows}))
    members = ", ".join(f"{m:,}" for m in sorted({r["audit"]["membership"]["members"] for r in rows}))
    lines += ["", f"delta {DELTA:g}; test split, read once per row; several seeds: their mean (range), the audit's "
              f"figures averaged; the teachers' accuracy: {teachers}; membership on a shadow release of {members} "
              "examples."]
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    """Student accuracy and membership AUC against epsilon: a line per teacher and clip (through the teacher's exact
    rows), each point a mean over its seeds with their range as a bar."""
    from dfkd_meta.plotting import pyplot, save_png

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9.2, 3.8))
    groups = _groups(results)
    for teacher in sorted({r["teacher"] for r in results["rows"].values()}):
        exact = [g for g in groups if g[0]["teacher"] == teacher and g[0]["epsilon"] is None]
        for clip in sorted({g[0]["privacy"]["clip"] for g in groups if g[0]["teacher"] == teacher
                            and g[0]["epsilon"] is not None}):
            line = exact + [g for g in groups if g[0]["teacher"] == teacher and g[0]["epsilon"] is not None
                            and g[0]["privacy"]["clip"] == clip]
            line.sort(key=lambda g: g[0]["epsilon"] or math.inf)
            xs = [g[0]["epsilon"] or 32.0 for g in line]  # "exact" drawn at the right end, labelled
            for ax, key in zip(axes, ("student_accuracy", "membership_auc")):
                mean = [_mean(g, key) for g in line]
                err = [[m - min(r[key] for r in g) for m, g in zip(mean, line)],
                       [max(r[key] for r in g) - m for m, g in zip(mean, line)]]
                ax.errorbar(xs, mean, yerr=err, fmt="o-", capsize=3, label=f"{teacher}, clip {clip:g}")
    for ax, label in zip(axes, ("student test accuracy", "membership AUC (0.5: a coin)")):
        ax.set_xscale("log")
        ax.set_xticks([0.5, 1, 4, 8, 32], ["0.5", "1", "4", "8", "exact"])
        ax.set_xlabel("epsilon (delta 1e-5)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[1].axhline(0.5, color="grey", lw=0.8)
    axes[0].legend(fontsize=7)
    save_png(fig, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", choices=TEACHERS)
    ap.add_argument("--epsilons", type=float, nargs="+", default=[math.inf, 8, 4, 1, 0.5])
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--members", type=int, default=2000)
    ap.add_argument("--rerun", action="store_true")
    ap.add_argument("--table", action="store_true")
    ap.add_argument("--reaudit", action="store_true", help="audit the teacher's rows' releases again (see reaudit)")
    ap.add_argument("--clip", type=float, default=ExportConfig.dp_clip, help="the private rows' clip (default: the "
                    "library's default)")
    ap.add_argument("--choose-clip", type=float, nargs="+", metavar="CLIP",
                    help="validation rows for the clip default: each clip at each of --epsilons")
    args = ap.parse_args(argv)
    out = RESULTS / "privacy.json"
    results = json.loads(out.read_text()) if out.is_file() else {"rows": {}}
    if args.table:
        print(summary(results))
        return 0
    if args.teacher is None:
        ap.error("--teacher is required")

    def log(msg):
        print(msg, flush=True)
    if args.choose_clip:
        clip_out = RESULTS / "privacy-clip.json"
        clip_results = json.loads(clip_out.read_text()) if clip_out.is_file() else {"rows": {}}
        clip_jobs = ((f"{args.teacher}|{eps_label(eps)}|{clip:g}|{args.minutes:g}|{seed}",
                      lambda eps=eps, clip=clip, seed=seed: run_clip_row(args.teacher, eps, clip, args.minutes, seed, log))
                     for seed in args.seeds for eps in args.epsilons for clip in args.choose_clip)
        run_rows(clip_out, clip_results, clip_jobs, rerun=args.rerun, log=log,
                 done=lambda key, row: f"val {row['student_accuracy']:.4f}, {row['iterations']} iterations")
        print(clip_summary(clip_results))
        return 0
    if args.reaudit:
        reaudit(results, args.teacher, log)
        out.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
        plot(results, out.with_suffix(".png"))
        print(summary(results))
        return 0

    def job(eps, seed):
        return {**run_row(args.teacher, eps, args.minutes, seed, args.members, log, args.clip), "teacher": args.teacher,
                "seed": seed}
    jobs = ((row_key(args.teacher, eps, args.minutes, seed, args.clip), lambda eps=eps, seed=seed: job(eps, seed))
            for seed in args.seeds for eps in args.epsilons)
    run_rows(out, results, jobs, rerun=args.rerun, log=log,
             done=lambda key, row: f"student {row['student_accuracy']:.4f}, membership AUC "
                                   f"{row['membership_auc']:.3f}, class-mean PSNR {row['class_mean_psnr']}")
    plot(results, out.with_suffix(".png"))
    print(summary(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
