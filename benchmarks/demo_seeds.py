"""The consumer-side demo over several seeds: its spread, and whether the sidecar's lead exceeds it (run by hand).

    python benchmarks/demo_seeds.py --seeds 0 1 2

Runs ``dfkd-meta demo`` (the embedded Fashion-MNIST release, fixed rows at equal budgets) once per
seed, prints each row's accuracy per seed, mean and spread (max - min), and checks the claim the
README makes: the best row with the sidecar beats the best metadata-free row by more than the
spread of either. Writes ``benchmarks/results/demo-fashion.json``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from dfkd_meta.demo import DemoConfig, DemoResult, run_demo

HERE = Path(__file__).resolve().parent


def readme_block(results: dict) -> str:
    """The README's demo table: the first seed's run as the command prints it, with its measured time."""
    run = results["runs"][0]
    demo = DemoResult(rows=run["rows"])
    return (f"What it prints (seed {run['seed']}, measured on 2 CPU cores, {run['seconds']:.0f} s in all):\n\n"
            f"{demo.table()}\n\n{demo.verdict()}")


def seeds_block(results: dict) -> str:
    """The README's summary over seeds: the best row with and without the sidecar, spreads, the seed-by-seed margin."""
    table = {t["method"]: t for t in results["table"]}
    best = {m: max((t for t in results["table"] if t["metadata"] == m), key=lambda t: t["mean"])
            for m in ("sidecar", "none")}
    seeds = ", ".join(str(s) for s in results["seeds"])
    acc = lambda t: ", ".join(f"{a:.3f}" for a in t["accuracy"])  # noqa: E731
    others = [t for t in table.values() if t not in best.values() and t["metadata"] in ("sidecar", "none")]
    margin, spread = results["worst_seed_margin"], results["largest_spread"]
    verdict = ("so the lead holds seed by seed, by more than either row's spread" if margin > spread else
               "so the lead holds seed by seed, though by less than the larger spread" if margin > 0 else
               "so the lead does NOT hold seed by seed")
    lines = [f"- **Over seeds {seeds}** (measured {results['date']}; `python benchmarks/demo_seeds.py` reruns it into "
             "`benchmarks/results/demo-fashion.json`; `benchmarks/report.py` renders this summary):",
             f"  - Best sidecar row: `{best['sidecar']['method']}`, {best['sidecar']['mean']:.3f} mean "
             f"({acc(best['sidecar'])}).",
             f"  - Best metadata-free row: `{best['none']['method']}`, {best['none']['mean']:.3f} mean "
             f"({acc(best['none'])}).",
             f"  - Largest spread (max - min) of either row: {spread:.3f}. The sidecar row's worst seed beats the "
             f"metadata-free row's best by {margin:.3f}, {verdict}.",
             "  - The other rows: " + ", ".join(f"`{t['method']}` {t['mean']:.3f} (spread {t['spread']:.3f})"
                                                for t in others) + "."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default=str(HERE / "results" / "demo-fashion.json"))
    args = ap.parse_args(argv)
    runs = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory(prefix="demo-seed-") as work:
            t0 = time.perf_counter()
            result = run_demo(DemoConfig.for_data("fashion", seed=seed), work, progress=False,
                              log=lambda line: print(line, file=sys.stderr))
            runs.append({"seed": seed, "seconds": round(time.perf_counter() - t0, 1), "rows": result.rows})
            print(f"seed {seed}: {runs[-1]['seconds']:.0f} s", file=sys.stderr)
    labels = [r["method"] for r in runs[0]["rows"]]
    table = []
    for i, label in enumerate(labels):
        acc = np.array([run["rows"][i]["accuracy"] for run in runs])
        secs = [run["rows"][i]["seconds"] for run in runs]
        table.append({"method": label, "metadata": runs[0]["rows"][i]["metadata"],
                      "accuracy": acc.tolist(), "mean": float(acc.mean()), "spread": float(acc.max() - acc.min()),
                      "seconds": secs, "teacher_examples": runs[0]["rows"][i]["teacher_examples"]})
    best = {m: max((t for t in table if t["metadata"] == m), key=lambda t: t["mean"]) for m in ("sidecar", "none")}
    gap = best["sidecar"]["mean"] - best["none"]["mean"]
    # the lead must hold seed by seed too: the sidecar row's worst seed against the baseline's best
    margin = min(best["sidecar"]["accuracy"]) - max(best["none"]["accuracy"])
    spread = max(best["sidecar"]["spread"], best["none"]["spread"])
    print("| student trained on | metadata | " + " | ".join(f"seed {s}" for s in args.seeds) +
          " | mean | spread | seconds |")
    print("| --- | --- | " + " | ".join("---:" for _ in args.seeds) + " | ---: | ---: | ---: |")
    for t in table:
        secs = [s for s in t["seconds"] if s is not None]
        print(f"| {t['method']} | {t['metadata']} | " + " | ".join(f"{a:.3f}" for a in t["accuracy"]) +
              f" | {t['mean']:.3f} | {t['spread']:.3f} | {f'{min(secs):.0f}-{max(secs):.0f}' if secs else ''} |")
    print(f"\nbest with the sidecar {best['sidecar']['mean']:.3f} ({best['sidecar']['method']}), best without "
          f"metadata {best['none']['mean']:.3f} ({best['none']['method']}): lead {gap:+.3f}, worst-seed margin "
          f"{margin:+.3f}, largest spread {spread:.3f} -> {'holds' if margin > spread else 'DOES NOT HOLD'}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results = {"date": dt.date.today().isoformat(), "seeds": args.seeds, "table": table, "lead": gap,
               "worst_seed_margin": margin, "largest_spread": spread, "runs": runs}
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}; python benchmarks/report.py renders it into the README")
    return 0


if __name__ == "__main__":
    sys.exit(main())
