"""The KD losses of the registry under the claim's protocol (not a test; run by hand, resumable).

    python benchmarks/losses.py --teacher mnist-lenet5 --inputs data --losses kd kd,dkd kd,at:100 kd,fitnet:10 \\
        --minutes 2 --seeds 0 --split val            # choosing the weights: validation split only
    python benchmarks/losses.py --teacher fashion-lenet5 --inputs online --losses l1 l1,at:100 \\
        --minutes 5 --seeds 0 1 2                    # reported rows: the test split, read once each
    python benchmarks/losses.py --table

Inputs a student is trained on (the only difference between compared rows is the loss):
- ``data``: the teacher's training files less the validation split (the real-data upper bound, as ``distill
  --data``);
- ``transfer``: a transfer set of ``TRANSFER_SAMPLES`` draws from the sidecar's first-layer Gaussian (the best
  transfer set of the demo, no optimisation), made once per teacher before any row and outside the clock;
- ``online``: DFAD with the teacher's sidecar (the claim's best online method), the named losses replacing the
  student's published L1 (the generator keeps its own objective).

Every row runs under ``--minutes`` on the clock, records its minutes, steps and loss weights, and is scored on
``--split``. On ``data`` and ``transfer`` the teacher's logits and paired tensors are computed once before the clock
starts (distill.loop caches them), so rows differ by their losses' own cost, not by teacher passes; online, every
step's inputs are new and a feature loss costs one more teacher pass per step, inside the clock. Rows of feature
losses run before the cache existed are kept under ``superseded`` and run again. The teachers,
students, data splits and releases are the claim's (benchmarks/claim.py), made once under runs/claim.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import claim  # noqa: E402
from protocol import order, overran, run_rows  # noqa: E402

from dfkd_meta.config import DistillConfig, OnlineConfig  # noqa: E402
from dfkd_meta.distill import distill, distill_online  # noqa: E402
from dfkd_meta.models import build_model  # noqa: E402
from dfkd_meta.transfer import read_transfer  # noqa: E402

RESULTS = HERE / "results"
INPUTS = ("data", "transfer", "online")
TRANSFER_SAMPLES = 16_000


def transfer_set(teacher: str, model: Path, sidecar: Path, log) -> Path:
    """The teacher's Gaussian transfer set under runs/losses (made once, seed 0)."""
    from dfkd_meta.config import ReconstructConfig
    from dfkd_meta.reconstruct.synthesize import reconstruct

    path = HERE.parent / "runs" / "losses" / teacher / f"first-layer-gaussian-{TRANSFER_SAMPLES}.h5"
    if not path.is_file():
        log(f"{path}: drawing {TRANSFER_SAMPLES} inputs from the sidecar's first-layer Gaussian")
        path.parent.mkdir(parents=True, exist_ok=True)
        reconstruct(model, sidecar, path, ReconstructConfig(objective="first_layer_gaussian",
                                                            samples=TRANSFER_SAMPLES, steps=0, seed=0),
                    device="cpu", progress=False)
    return path


def run_row(teacher: str, inputs: str, loss: str, minutes: float, seed: int, split: str, log) -> dict:
    data, model, sidecar = claim.release(teacher, False, log)
    transfer = transfer_set(teacher, model, sidecar, log) if inputs == "transfer" else None  # made once, untimed
    arch = claim.TEACHERS[teacher][2]
    torch.manual_seed(seed)
    student = build_model(arch, data.input_shape, data.num_classes)
    t0 = time.perf_counter()
    if inputs in ("data", "transfer"):
        source = data if transfer is None else read_transfer(transfer, num_classes=data.num_classes)
        r = distill(model, student, source, DistillConfig(loss=loss, minutes=minutes, epochs=10_000, seed=seed),
                    device="cpu", eval_data=data, eval_split=split, progress=False).report
        loop_minutes, steps = r["loop_seconds"] / 60, r["steps_this_run"]
    else:
        cfg = OnlineConfig(method="dfad", iterations=10_000_000, minutes=minutes, seed=seed, loss=loss)
        r = distill_online(model, student, cfg, sidecar=sidecar, device="cpu", eval_data=data, eval_split=split,
                           progress=False, log=lambda m: log("  " + m)).report
        loop_minutes, steps = r["distill_seconds"] / 60, r["iterations"]
    return {"accuracy": r["student_accuracy"], "teacher_accuracy": r["teacher_accuracy"], "split": split,
            "minutes": round(loop_minutes, 3), "budget_minutes": minutes, "overran": overran(loop_minutes, minutes),
            "wall_minutes": round((time.perf_counter() - t0) / 60, 3), "steps": steps,
            "epochs_done": r.get("epochs_done"), "objective": r["objective"], "feature_pairs": r["feature_pairs"],
            "teacher_forward_examples": r.get("teacher_forward_examples"), "stalled": r.get("stalled", []),
            "teacher_features": r.get("teacher_features"),
            "student": arch, "teacher_file": str(model.relative_to(HERE.parent)),
            "transfer_file": str(transfer.relative_to(HERE.parent)) if transfer is not None else None}


def table(results: dict) -> str:
    lines = ["| split | teacher | inputs | loss | budget min | seed | accuracy | minutes | objective |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for key, r in sorted(results["rows"].items()):
        split, teacher, inputs, loss, minutes, seed = key.split("|")
        weights = ", ".join(f"{n} {w:g}" for n, w in r["objective"].items())
        lines.append(f"| {split} | {teacher} | {inputs} | {loss} | {minutes} | {seed} | {r['accuracy']:.4f} | "
                     f"{r['minutes']:.2f} | {weights} |")
    return "\n".join(lines)


BASELINE = {"data": "kd", "transfer": "kd", "online": "l1"}  # what each source of inputs trains with when no loss is named
LABEL = {"data": "real data (training files less the validation split)",
         "transfer": f"data-free: {TRANSFER_SAMPLES:,} draws from the sidecar's first-layer Gaussian",
         "online": "data-free: DFAD with the sidecar"}


def summary(results: dict, split: str) -> str:
    """One Markdown table per (teacher, inputs, budget) on ``split``: each loss's mean accuracy over its seeds (range
    in brackets; how many runs the stall monitor flagged while they ran), the difference from the inputs' baseline
    loss on the same seeds, minutes and student steps."""
    groups: dict[tuple, dict[str, dict[int, dict]]] = {}
    for key, r in results["rows"].items():
        s, teacher, inputs, loss, minutes, seed = key.split("|")
        if s == split and not before_cache(inputs, r):  # not yet rerun: superseded, not reported
            groups.setdefault((teacher, inputs, minutes), {}).setdefault(loss, {})[int(seed)] = r
    if not groups:
        return f"No {split} rows yet (benchmarks/losses.py)."
    out = []
    for (teacher, inputs, minutes), by_loss in sorted(groups.items()):
        base = by_loss.get(BASELINE[inputs], {})
        lines = [f"**{teacher}, {LABEL[inputs]}, {minutes} min a row**", "",
                 f"| loss | seeds | accuracy | vs {BASELINE[inputs]} (same seeds) | minutes | steps |",
                 "| --- | ---: | ---: | ---: | ---: | ---: |"]
        ranked = sorted(by_loss.items(), key=lambda kv: -sum(r["accuracy"] for r in kv[1].values()) / len(kv[1]))
        for loss, rows in ranked:
            acc = [rows[s]["accuracy"] for s in sorted(rows)]
            spread = f" ({min(acc):.4f}..{max(acc):.4f})" if len(acc) > 1 else ""
            shared = sorted(set(rows) & set(base))
            delta = ("" if loss == BASELINE[inputs] or not shared else
                     f"{100 * sum(rows[s]['accuracy'] - base[s]['accuracy'] for s in shared) / len(shared):+.2f}")
            mins = sum(r["minutes"] for r in rows.values()) / len(rows)
            steps = sum(r["steps"] for r in rows.values()) / len(rows)
            stalled = sum(bool(r.get("stalled")) for r in rows.values())
            flag = f" (stalled: {stalled} of {len(rows)})" if stalled else ""
            lines.append(f"| `{loss}` | {len(rows)} | {sum(acc) / len(acc):.4f}{spread}{flag} | {delta} | {mins:.2f} | "
                         f"{steps:.0f} |")
        out.append("\n".join(lines))
    return "\n\n".join(out)


VAL_TEACHER = "fashion-lenet5"  # where every loss's weight is chosen (real data, validation split)


def chosen(results: dict, inputs: str) -> list[str]:
    """The losses as the validation rows chose them, best first: for each loss added to KD on ``VAL_TEACHER``'s real
    data (validation split), its best weight; DKD as it ran. Online, DFAD's L1 takes KD's place beside a feature
    loss (the method's published student loss, extended)."""
    best: dict[str, tuple[float, str]] = {}
    for key, r in results["rows"].items():
        split, teacher, source, loss, _, _ = key.split("|")
        if (split, teacher, source) != ("val", VAL_TEACHER, "data") or loss == "kd" or before_cache(source, r):
            continue
        name = loss.split(",")[-1].split(":")[0]
        if name not in best or r["accuracy"] > best[name][0]:
            best[name] = (r["accuracy"], loss)
    ranked = [loss for _, loss in sorted(best.values(), reverse=True)]
    if not ranked:
        raise SystemExit(f"no validation rows of {VAL_TEACHER} on real data to choose from: run them first")
    return [loss.replace("kd,", "l1,", 1) for loss in ranked] if inputs == "online" else ranked


def expand(words: list[str], results: dict, inputs: str) -> list[str]:
    """``--losses`` with ``val-every`` (the baseline, then every loss at its chosen weight) and ``val-top3`` (the
    baseline and the three best) expanded."""
    out: list[str] = []
    for w in words:
        picks = ({"val-every": chosen(results, inputs), "val-top3": chosen(results, inputs)[:3]}.get(w))
        out += [w] if picks is None else [BASELINE[inputs], *picks]
    return list(dict.fromkeys(out))


CACHE_REASON = "the teacher's features ran once per batch inside the clock (before distill.loop cached them)"


def before_cache(inputs: str, row: dict) -> bool:
    """A feature loss's row on fixed inputs run while the loop still ran the teacher on every batch."""
    return inputs != "online" and bool(row.get("feature_pairs")) and "teacher_features" not in row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", choices=sorted(claim.TEACHERS))
    ap.add_argument("--inputs", choices=INPUTS, default="data")
    ap.add_argument("--losses", nargs="+", default=["kd"],
                    help="each a --loss value: name[:weight], comma-joined; or val-every / val-top3 (see expand)")
    ap.add_argument("--minutes", type=float, default=2.0)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--split", choices=["val", "test"], default="val")
    ap.add_argument("--rerun", action="store_true")
    ap.add_argument("--table", action="store_true")
    args = ap.parse_args(argv)
    out = RESULTS / "losses.json"
    results = json.loads(out.read_text()) if out.is_file() else {"rows": {}}
    if args.table:
        print(table(results))
        return 0
    if args.teacher is None:
        ap.error("--teacher is required")
    if args.teacher in claim.NEVER_TUNED and args.split == "val":
        ap.error(f"{args.teacher} is the pair no setting is chosen on: test split only")

    def log(msg):
        print(msg, flush=True)
    for key in [k for k, r in results["rows"].items() if before_cache(k.split("|")[2], r)]:
        results.setdefault("superseded", {})[key] = {**results["rows"].pop(key), "reason": CACHE_REASON}
    losses = expand(args.losses, results, args.inputs)
    log(f"losses: {' '.join(losses)}")
    jobs = ((f"{args.split}|{args.teacher}|{args.inputs}|{loss}|{args.minutes:g}|{seed}",
             lambda loss=loss, seed=seed: run_row(args.teacher, args.inputs, loss, args.minutes, seed, args.split, log))
            for seed in args.seeds for loss in order(losses, seed))
    run_rows(out, results, jobs, rerun=args.rerun, log=log,
             done=lambda key, row: f"{row['accuracy']:.4f} ({row['minutes']:.2f} min, {row['steps']} steps)")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
