"""The paper's comparison on MNIST (not a test; run by hand, about an hour on 2 CPU cores by default).

    python benchmarks/quality.py --data mnist:../shared/data/mnist [--quick]

For each pair (hinton1200 -> hinton800 on 28x28, lenet5 -> lenet5-half on 32x32): the teacher's
test accuracy, a student distilled on the real training data (vanilla KD), and students distilled
from transfer sets built by noise, each Lopes et al. objective and the ZSKD metadata-free baseline.
Prints a markdown table and writes results/quality-mnist.json and results/quality-mnist.png.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from dfkd_meta.data import load_data
from dfkd_meta.distill import DistillConfig, distill
from dfkd_meta.models import build_model, hidden_dropout_keep_probs
from dfkd_meta.onnx.torch_export import export_onnx
from dfkd_meta.reconstruct.priors import Priors
from dfkd_meta.reconstruct.synthesize import ReconstructConfig, reconstruct
from dfkd_meta.sidecar import read_sidecar
from dfkd_meta.stats.export import export_release
from dfkd_meta.train import train_teacher
from dfkd_meta.transfer import read_transfer

HERE = Path(__file__).resolve().parent
PAIRS = {"mlp": ("hinton1200", "hinton800", None), "lenet": ("lenet5", "lenet5-half", 32)}
METHODS = ("noise", "zskd", "top_layer", "all_layers", "all_layers_dropout", "spectral_all_layers",
           "spectral_layer_pairs", "zskd+moments", "gaussian", "gaussian+zskd+moments")
# "gaussian": no optimisation; inputs drawn from the per-class Gaussian that the first stored layer's
# mean and covariance factors imply (--init first-layer), labelled by the teacher.
# "gaussian+X": method X optimised from those draws instead of uniform noise.
# Priors per pair: batch moment matching of the hidden layers for both; image priors for the
# convolutional pair (small shifts; no flips: digits are not mirror-symmetric). Moment matching
# reads the sidecar, so the metadata-free rows (zskd, noise) run without it; "zskd+moments" is
# ZSKD's soft labels with it, a metadata method.
PRIORS = {"mlp": Priors(feature=1.0), "lenet": Priors(tv=0.05, jitter=1, feature=0.5)}
LR = {"mlp": 0.1, "lenet": 0.05}  # Adam step size on the inputs (--lr overrides both)
# Per-method settings that beat the pair's defaults in exploratory runs (4,000 samples): ZSKD's
# soft labels leave the spread to the moment term, which works best strong and on the conv
# channels only (0.645 -> 0.905 for LeNet); the per-sample objectives prefer the pair defaults.
_LENET_ZSKD_MOMENTS = Priors(tv=0.05, jitter=1, feature=10.0, feature_layers="channels")
METHOD_PRIORS = {("lenet", "zskd+moments"): _LENET_ZSKD_MOMENTS, ("lenet", "gaussian+zskd+moments"): _LENET_ZSKD_MOMENTS}
METHOD_LR = {("lenet", "zskd+moments"): 0.1, ("lenet", "gaussian+zskd+moments"): 0.1}


def priors_for(pair: str, method: str) -> Priors:
    if (pair, method) in METHOD_PRIORS:
        return METHOD_PRIORS[pair, method]
    return replace(PRIORS[pair], feature=0.0) if method in ("zskd", "noise", "gaussian") else PRIORS[pair]


def lr_for(pair: str, method: str, override: float | None) -> float:
    return override or METHOD_LR.get((pair, method), LR[pair])


def objective_of(method: str) -> str:
    return "noise" if method == "gaussian" else method.removeprefix("gaussian+").removesuffix("+moments")


def init_of(method: str) -> str:
    return "first-layer" if method.startswith("gaussian") else "uniform"


def run_pair(pair: str, args, work: Path, log) -> list[dict]:
    teacher_arch, student_arch, resize = PAIRS[pair]
    data = load_data(args.data, resize)
    folder = work / pair
    teacher_path = folder / "teacher.onnx"
    rows = []
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    trained = train_teacher(build_model(teacher_arch, data.input_shape, 10), data, epochs=args.teacher_epochs,
                            batch_size=128, seed=args.seed, device=args.device, progress=False)
    export_onnx(trained.model, data.input_shape, teacher_path, convention=trained.convention,
                dropout_keep=hidden_dropout_keep_probs(trained.model))
    rows.append({"pair": pair, "method": f"teacher {teacher_arch}", "accuracy": trained.test_accuracy,
                 "train_seconds": round(time.perf_counter() - t0, 1)})
    log(f"{pair}: teacher {teacher_arch} {trained.test_accuracy:.4f}")
    t0 = time.perf_counter()
    release = export_release(teacher_path, data, folder / "release", cov_rank=args.cov_rank, progress=False,
                             overwrite=True)
    export_s = time.perf_counter() - t0
    cfg = DistillConfig(epochs=args.student_epochs, seed=args.seed)

    def student(source, method, recon_s=None):
        torch.manual_seed(args.seed)
        r = distill(release.model_path, build_model(student_arch, data.input_shape, 10), source, cfg,
                    device=args.device, eval_data=data, progress=False)
        rows.append({"pair": pair, "method": method, "accuracy": r.report["student_accuracy"],
                     "agreement": r.report["agreement"], "reconstruct_seconds": recon_s,
                     "distill_seconds": r.report["distill_seconds"]})
        log(f"{pair}: {method} {r.report['student_accuracy']:.4f}")

    student(data, f"student {student_arch}, KD on real data")
    for method in args.methods:
        dropout = any(x.dropout_keep_prob for x in read_sidecar(release.sidecar_path).layers)
        if method == "all_layers_dropout" and not dropout:
            rows.append({"pair": pair, "method": method, "accuracy": None, "note": "teacher trained without dropout"})
            log(f"{pair}: {method} not applicable (teacher trained without dropout)")
            continue
        t0 = time.perf_counter()
        stem = method.replace("+", "_")
        rc = reconstruct(release.model_path, release.sidecar_path, folder / f"transfer_{stem}.h5",
                         ReconstructConfig(objective=objective_of(method), samples=args.samples, steps=args.steps,
                                           batch_size=args.batch_size, lr=lr_for(pair, method, args.lr), seed=args.seed,
                                           init=init_of(method), priors=priors_for(pair, method)),
                         device=args.device, progress=False,
                         preview=folder / f"preview_{stem}.png" if pair == "lenet" or method != "noise" else None)
        student(read_transfer(rc.path), method, round(time.perf_counter() - t0, 1))
    rows[0]["export_seconds"] = round(export_s, 1)
    return rows


def plot(rows: list[dict], path: Path) -> None:
    from dfkd_meta.plotting import pyplot, save_png

    plt = pyplot()

    pairs = list(dict.fromkeys(r["pair"] for r in rows))
    fig, axes = plt.subplots(1, len(pairs), figsize=(6 * len(pairs), 4.5), squeeze=False)
    for ax, pair in zip(axes[0], pairs):
        sub = [r for r in rows if r["pair"] == pair and r["accuracy"] is not None]
        labels = [r["method"].replace("student ", "").replace(", KD on real data", " (real data)") for r in sub]
        colors = ["#555555"] + ["#2b8cbe"] + ["#bbbbbb" if r["method"] in ("noise", "zskd") else "#e6550d"
                                             for r in sub[2:]]
        ax.barh(range(len(sub)), [r["accuracy"] for r in sub], color=colors)
        ax.set_yticks(range(len(sub)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_xlabel("MNIST test accuracy")
        ax.set_title(pair)
        for i, r in enumerate(sub):
            ax.text(min(r["accuracy"] + 0.01, 0.9), i, f"{r['accuracy']:.3f}", va="center", fontsize=7)
    fig.tight_layout()
    save_png(fig, path, dpi=110)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="mnist:" + str(HERE.parent.parent / "shared" / "data" / "mnist"))
    ap.add_argument("--pairs", default="mlp,lenet")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--teacher-epochs", type=int, default=8)
    ap.add_argument("--student-epochs", type=int, default=15)
    ap.add_argument("--samples", type=int, default=10000, help="transfer-set size per method")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--lr", type=float, default=None, help="input step size (default: 0.1 for mlp, 0.05 for lenet)")
    ap.add_argument("--cov-rank", type=int, default=32, help="covariance factors per layer (0: none)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--work", type=Path, default=Path("runs/bench"))
    ap.add_argument("--out", type=Path, default=HERE / "results" / "quality-mnist.json")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    args = ap.parse_args(argv)
    args.methods = tuple(m for m in args.methods.split(",") if m)
    if args.quick:
        args.teacher_epochs, args.student_epochs, args.samples, args.steps = 1, 1, 500, 10
    t0 = time.perf_counter()
    rows = []
    for pair in args.pairs.split(","):
        rows += run_pair(pair, args, args.work, log=lambda m: print(m, flush=True))
    total = time.perf_counter() - t0
    print("\n| pair | method | test accuracy | agreement | reconstruct s | distill s |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        f = lambda v, p: "" if v is None else format(v, p)  # noqa: E731
        print(f"| {r['pair']} | {r['method']} | {f(r['accuracy'], '.4f') or r.get('note', '')} | "
              f"{f(r.get('agreement'), '.4f')} | "
              f"{f(r.get('reconstruct_seconds'), '.1f')} | {f(r.get('distill_seconds'), '.1f')} |")
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    settings["priors"] = {k: asdict(v) for k, v in PRIORS.items()}
    settings["method_priors"] = {"/".join(k): asdict(v) for k, v in METHOD_PRIORS.items()}
    settings["method_lr"] = {"/".join(k): v for k, v in METHOD_LR.items()}
    settings["priors_note"] = "zskd and noise run without the moment-matching (feature) prior"
    settings["lr"] = args.lr or LR
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"settings": settings, "total_seconds": round(total, 1), "rows": rows}, indent=2) + "\n")
    plot(rows, args.out.with_suffix(".png"))
    print(f"\nwrote {args.out} and {args.out.with_suffix('.png')} ({total / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
