"""Renderers of the published tables: one named function per generated region, each reading only
``benchmarks/results/*.json`` (through ``Results``) and returning Markdown.

A renderer is registered with ``@renderer(NAME)``; ``report.py`` fills every
``<!-- generated: NAME -->`` ... ``<!-- end: NAME -->`` region of README.md and docs/*.md with it.
Numbers reach the prose only through these functions.
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


class Results:
    """The results files, each read once, by stem (``results["speed"]`` is results/speed.json)."""

    def __init__(self, folder: Path = RESULTS):
        self.folder, self._cache = Path(folder), {}

    def __getitem__(self, stem: str) -> dict:
        if stem not in self._cache:
            path = self.folder / f"{stem}.json"
            if not path.is_file():
                raise SystemExit(f"{path}: results file missing; run the benchmark that writes it first")
            self._cache[stem] = json.loads(path.read_text())
        return self._cache[stem]


RENDERERS: dict[str, Callable[[Results], str]] = {}


def renderer(name: str):
    def register(fn):
        if name in RENDERERS:
            raise ValueError(f"renderer {name!r} registered twice")
        RENDERERS[name] = fn
        return fn
    return register


def _pct(x: float, digits: int = 1) -> str:
    return f"{100 * x:.{digits}f} %"


def _fmt(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


def _table(header: list[str], rows: list[list[str]], right: set[int] = frozenset()) -> str:
    align = ["---:" if i in right else "---" for i in range(len(header))]
    return "\n".join("| " + " | ".join(r) + " |" for r in [header, align, *rows])


# --- the demo (benchmarks/demo_seeds.py) ----------------------------------------------------------------------

@renderer("demo-table")
def demo_table(res: Results) -> str:
    import demo_seeds
    return demo_seeds.readme_block(res["demo-fashion"])


@renderer("demo-seeds")
def demo_seeds_summary(res: Results) -> str:
    import demo_seeds
    return demo_seeds.seeds_block(res["demo-fashion"])


# --- the claim (benchmarks/claim.py) -----------------------------------------------------------------------------

@renderer("claim-targets")
def claim_targets(res: Results) -> str:
    import claim
    return claim.targets(res["claim"])


@renderer("claim-defaults")
def claim_defaults(res: Results) -> str:
    """Which defaults chosen before the protocol were re-chosen or confirmed on the validation split."""
    import claim
    return claim.defaults_status(res["claim-val"])


HEADLINE = [  # (label, old results key prefix in online.json, claim.json teacher, budget minutes)
    ("MNIST, LeNet-5 -> LeNet-5-half", "mnist|lenet|dfad", "mnist-lenet5", "10"),
    ("Fashion-MNIST, LeNet-5 -> LeNet-5-half", "fashion-mnist|lenet|dfad", "fashion-lenet5", "10"),
    ("MNIST, hinton1200 -> hinton800-plain", "mnist|mlp-plain|dfad", "mnist-hinton1200", "10"),
]


def _mean_rows(rows: list[dict]) -> str:
    if not rows:
        return "not run yet"
    acc = [r["accuracy"] for r in rows]
    spread = f" ({min(acc):.4f}..{max(acc):.4f})" if len(acc) > 1 else ""
    return f"{np.mean(acc):.4f}{spread}"


def _minutes(rows: list[dict]) -> str:
    return f"{np.mean([r['minutes'] for r in rows]):.1f}" if rows else ""


@renderer("claim-headline")
def claim_headline(res: Results) -> str:
    """DFAD with and without the sidecar: the rows measured before the protocol (results/online.json) beside the
    rows measured under it (results/claim.json, test split, defaults)."""
    old, new = res["online"]["rows"], res["claim"]["rows"]
    rows = []
    for label, prefix, teacher, budget in HEADLINE:
        before = {v: [r for k, r in old.items() if k.startswith(f"{prefix}|{v}|{budget}|")] for v in ("no", "yes")}
        after = {v: [r for k, r in new.items() if k.startswith(f"test|{teacher}|dfad|{v}|{budget}|")
                     and k.endswith("|defaults")] for v in ("none", "sidecar")}
        rows.append([label, _mean_rows(before["no"]), _mean_rows(before["yes"]),
                     f"{_minutes(before['no'])} / {_minutes(before['yes'])}", str(len(before["yes"])),
                     _mean_rows(after["none"]), _mean_rows(after["sidecar"]),
                     f"{_minutes(after['none'])} / {_minutes(after['sidecar'])}" if after["none"] else "",
                     str(min(len(after["none"]), len(after["sidecar"])))])
    return _table(["pair (dfad, 10 min)", "before: no metadata", "before: sidecar", "before: minutes", "seeds",
                   "protocol: no metadata", "protocol: sidecar", "protocol: minutes", "seeds"], rows,
                  right={4, 8})


# --- speed (benchmarks/speed.py) ---------------------------------------------------------------------------------

@renderer("speed-machine")
def speed_machine(res: Results) -> str:
    s = res["speed"]
    return (f"Measured on {s['machine']['threads']} threads (torch {s['machine']['torch']}); this machine's fp32 "
            f"matmul rate {s['matmul_gflops_per_s']:.1f} GFLOP/s, a streaming copy {s['copy_gb_per_s']:.1f} GB/s.")


@renderer("speed-reconstruction")
def speed_reconstruction(res: Results) -> str:
    s, rows = res["speed"], []
    target = {"hinton1200": s["targets"]["mlp_reconstruction_fraction"],
              "lenet5": s["targets"]["lenet_reconstruction_fraction"]}
    for t in s["teachers"]:
        for r in t["reconstruction"]:
            rows.append([t["teacher"], str(r["batch_size"]), _pct(r["fraction_of_matmul_rate"]),
                         f"{r['conv_gemm_ms']:.1f} / {r['other_ops_ms']:.1f}", _pct(r["ceiling_kernels_only"]),
                         _pct(r["ceiling_kernels_plus_reads"]), f">= {_pct(target[t['teacher']], 0)}"
                         if t["teacher"] in target else ""])
    return _table(["teacher", "batch", "share of the matmul rate", "kernels / other ops, ms per step",
                   "ceiling: kernels only", "ceiling: kernels + reads", "target"], rows, right={1, 2, 4, 5})


@renderer("speed-export")
def speed_export(res: Results) -> str:
    s = res["speed"]
    rows = [[t["teacher"], f"{t['export']['export_examples_per_s']:,.0f}", f"{t['export']['ort_examples_per_s']:,.0f}",
             f"{t['export']['export_over_ort_throughput']:.2f}x", f"{t['export']['taps_only_over_ort_throughput']:.2f}x",
             f">= {s['targets']['export_over_ort']:.2f}x"] for t in s["teachers"]]
    return _table(["teacher", "export examples/s", "ONNX Runtime inference examples/s", "export / inference",
                   "inference with the taps only / inference", "target"], rows, right={1, 2, 3, 4})


@renderer("speed-online")
def speed_online(res: Results) -> str:
    s = res["speed"]
    rows = [[r["method"], str(r["iterations"]), f"{r['loop_s']:.1f}", f"{r['generator_s']:.1f}",
             _pct(r["fraction_of_matmul_rate"]), _pct(r["ceiling_kernels_only"])]
            for r in sorted(s["online_lenet5_to_half"], key=lambda r: r["loop_s"])]
    return _table(["method (LeNet-5 -> half, sidecar)", "iterations", "loop s", "generators s",
                   "teacher + student, share of the matmul rate", "ceiling: their kernels only"], rows,
                  right={1, 2, 3, 4, 5}) + (f"\n\nTarget: teacher + student at >= "
                                            f"{_pct(s['targets']['online_teacher_student_fraction'], 0)}.")


@renderer("speed-validation")
def speed_validation(res: Results) -> str:
    s = res["speed"]
    rows = [[f"{v['file_mb']:.0f}", f"{v['seconds']:.2f}", f"{v['rss_above_imports_mb']:.0f}"] for v in s["validation"]]
    return _table(["sidecar MB", "validation s", "memory above the imports, MB"], rows, right={0, 1, 2}) + \
        f"\n\nTarget: under {s['targets']['validation_seconds']:.0f} s, memory flat in the file's size."


# --- reconstruction on MNIST (benchmarks/quality.py, benchmarks/lopes2017.py) -----------------------------------

@renderer("quality-mnist")
def quality_mnist(res: Results) -> str:
    q, rows = res["quality-mnist"], []
    best = {}
    for r in q["rows"]:
        if r.get("accuracy") is not None and not r["method"].startswith(("teacher", "student")):
            best[r["pair"]] = max(best.get(r["pair"], 0.0), r["accuracy"])
    for r in q["rows"]:
        acc = r.get("accuracy")
        cell = r.get("note", "") if acc is None else (f"**{acc:.4f}**" if acc == best.get(r["pair"]) else f"{acc:.4f}")
        rows.append([r["pair"], r["method"], cell, _fmt(r.get("agreement"), ".4f"),
                     _fmt(r.get("reconstruct_seconds"), ".1f"), _fmt(r.get("distill_seconds"), ".1f")])
    return _table(["pair", "method", "MNIST test accuracy", "agreement with teacher", "reconstruct s", "distill s"],
                  rows, right={2, 3, 4, 5}) + f"\n\nAll rows: {q['total_seconds'] / 60:.0f} minutes on 2 cores."


def _lopes_rows(res: Results, stem: str) -> dict:
    return res[stem]["rows"]


@renderer("lopes2017")
def lopes2017_table(res: Results) -> str:
    import lopes2017
    rows = []
    for key, r in sorted(_lopes_rows(res, "lopes2017").items()):
        pair, row = key.split("|")
        if "[" in row or row == "teacher":
            continue
        paper = lopes2017.PAPER[pair].get(row)
        p, short = r.get("plan"), r.get("short_distillation")
        rows.append([pair, row, "" if paper is None else f"{paper:.2f}", f"{100 * r['accuracy']:.2f}",
                     "" if not short else f"{100 * short['accuracy']:.2f}",
                     f"{p['samples']:,} x {p['steps']}" if p else "",
                     f"{r.get('reconstruct_minutes', 0):.1f} / {r.get('distill_minutes', 0):.1f}"])
    teachers = ", ".join(f"{pair} {100 * r['accuracy']:.2f}" for key, r in sorted(_lopes_rows(res, "lopes2017").items())
                         for pair in [key.split("|")[0]] if key.endswith("|teacher"))
    return _table(["pair", "objective", "paper", "ours", "ours at 3,000 student steps", "inputs x steps per batch",
                   "minutes: reconstruct / distil"], rows, right={2, 3, 4}) + f"\n\nTeachers: {teachers}."


@renderer("lopes2017-ablations")
def lopes2017_ablations(res: Results) -> str:
    rows = _lopes_rows(res, "lopes2017")
    out = []
    for key, r in sorted(rows.items()):
        pair, row = key.split("|")
        if "[" not in row:
            continue
        base_name, ablation = row.split(" [")
        base = rows.get(f"{pair}|{base_name}")
        out.append([pair, base_name, ablation.rstrip("]"), r["ablation"], f"{100 * base['accuracy']:.2f}" if base else "",
                    f"{100 * r['accuracy']:.2f}", f"{r.get('reconstruct_minutes', 0):.1f}"])
    return _table(["pair", "objective", "ablation", "what changes", "preset", "ablation", "reconstruct minutes"], out,
                  right={4, 5, 6})


@renderer("lopes2017-full-budget")
def lopes2017_full_budget(res: Results) -> str:
    import lopes2017
    cut, full = _lopes_rows(res, "lopes2017"), _lopes_rows(res, "lopes2017_full_budget")
    out = []
    for key, r in sorted(full.items()):
        pair, row = key.split("|")
        if row in ("teacher", "KD on data"):
            continue
        paper = lopes2017.PAPER[pair].get(row)
        out.append([pair, row, f"{100 * cut[key]['accuracy']:.2f}" if key in cut else "", f"{100 * r['accuracy']:.2f}",
                    f"{r.get('reconstruct_minutes', 0):.0f}", f"{100 * cut[f'{pair}|all_layers']['accuracy']:.2f}",
                    "" if paper is None else f"{paper:.2f}"])
    return _table(["pair", "objective", "cut", "full budget", "reconstruct minutes", "`all_layers`, cut", "paper"],
                  out, right={2, 3, 4, 5, 6})


# --- online rows before the protocol (benchmarks/online.py) -----------------------------------------------------

@renderer("online-history")
def online_history(res: Results) -> str:
    import online
    return online.table(res["online"])


# --- reading untrusted files (benchmarks/fuzz.py, benchmarks/read_bounds.py) -----------------------------------

@renderer("fuzz")
def fuzz_table(res: Results) -> str:
    rows = []
    for stem, what in (("fuzz", "sidecars"), ("fuzz-transfer", "transfer files"), ("fuzz-onnx", "ONNX models")):
        f = res[stem]
        o = f["outcomes"]
        rows.append([what, f["date"], f"{f['files']:,}", f"{o.get('accepted', 0):,}", f"{o.get('rejected', 0):,}",
                     f"{o.get('bound', 0):,}", str(len(f.get("failures", []))), f"{f['files_per_second']:.1f}",
                     f"{f['peak_child_rss_mib']:.0f} (target {f['memory_target_mib']:.0f})"])
    return _table(["files fuzzed", "date", "files", "accepted", "rejected by a rule", "stopped by a bound",
                   "crashes, hangs or internal failures", "files/s", "peak child memory MiB"], rows,
                  right={2, 3, 4, 5, 6, 7})


@renderer("fuzz-rules")
def fuzz_rules(res: Results) -> str:
    rules = res["fuzz"]["error_rules"]
    top = sorted(rules.items(), key=lambda kv: -kv[1])[:8]
    return "Most frequent rules on the sidecar campaign: " + ", ".join(f"{r} ({n:,} files)" for r, n in top) + "."


@renderer("read-bounds")
def read_bounds(res: Results) -> str:
    r = res["read_bounds"]
    rows = [[f"{x['declared_mb']:,.0f}", f"{x['file_mb']:,.2f}", "yes" if x["compressed"] else "no",
             f"{x['child_cpu_s']:.2f}", f"{x['default_cpu_bound_s']:.1f}", f"{x['margin']:.1f}x"] for x in r["rows"]]
    b = r["bound"]
    return _table(["data MB", "file MB", "compressed", "reader CPU s", "bound s", "margin"], rows,
                  right={0, 1, 3, 4, 5}) + \
        (f"\n\nThe bound: {b['base_cpu_seconds']:.0f} s plus {b['cpu_seconds_per_gb']:.0f} s per GB of data; "
         f"every file valid: {'yes' if r['all_valid'] else 'no'}; smallest margin {r['smallest_margin']:.1f}x "
         f"(measured {r['date']}).")


# --- the conformance corpus (fixtures/conformance/expected.json: a fixture, counted, not typed) -----------------

@renderer("conformance-corpus")
def conformance_corpus(res: Results) -> str:
    expected = json.loads((HERE.parent / "fixtures" / "conformance" / "expected.json").read_text())
    invalid = [k for k in expected if k.startswith("invalid/")]
    schema = [k for k in invalid if k.startswith("invalid/schema_")]
    rules = sorted({r for v in expected.values() for r in v["rules"]})
    return (f"The conformance corpus in `fixtures/conformance/` holds {len(expected) - len(invalid)} valid sidecars "
            f"with their tiny ONNX models and {len(invalid)} invalid files (each hostile HDF5 feature, truncation, "
            f"wrong versions, missing items, wrong dtypes and shapes, NaN, negative std, hash mismatches, ...; "
            f"{len(schema)} of them derived from the schema: a required attribute of every element type deleted or "
            f"of the wrong kind), {len(rules)} rule ids in all. `expected.json` gives the exact rule ids each must "
            "produce; `python fixtures/make_conformance.py` regenerates the corpus byte for byte.")


# --- speed beside the authors' code (benchmarks/reference_speed.py) ---------------------------------------------

@renderer("reference-speed")
def reference_speed(res: Results) -> str:
    r = res["reference-speed"]
    rows = []
    for row in r["rows"]:
        theirs = row.get("reference_seconds_per_iteration", row.get("reference_seconds_per_input_step"))
        mine = row["ours"].get("seconds_per_input_step", row["ours"]["seconds_per_iteration"])
        unit = "input step" if "reference_seconds_per_input_step" in row else "student update"
        rows.append([row["method"], row["reference"].split(": ")[0].split("@")[0],
                     f"{row['teacher']}; {row['student']}; batch {row['batch']}", unit, f"{theirs:.3f}", f"{mine:.3f}",
                     f"{row['ours_over_reference']:.2f}x"])
    return _table(["method", "reference code", "teacher; student; batch", "per", "reference s", "ours s",
                   "ours / reference"], rows, right={4, 5, 6}) + \
        f"\n\nMeasured {r['date']} on {r['machine']['threads']} threads, torch {r['machine']['torch']}, one after the other."


# --- real-size releases (benchmarks/scale.py) --------------------------------------------------------------------

@renderer("scale")
def scale_table(res: Results) -> str:
    r = res["scale"]
    rows = []
    for name, x in r["rows"].items():
        kinds = ", ".join(f"{n} {g}" for g, n in sorted(x["granularity"].items()))
        rows.append([name, f"{x['architecture']} {'x'.join(map(str, x['input_shape']))}", f"{x['classes']:,}",
                     f"{x['examples']:,}", f"{x['export_seconds']:.0f}", _pct(x["planning_share"], 0),
                     f"{x['export_examples_per_second']:,.0f} / {x['ort_examples_per_second']:,.0f} "
                     f"({x['throughput_vs_ort']:.2f}x)", f"{x['export_peak_mb']:,.0f}",
                     f"{x['sidecar_bytes'] / 2 ** 20:,.1f} / {x['model_bytes'] / 2 ** 20:,.1f}", kinds,
                     f"{x['spectral_blocks']} ({x['spectral_omitted']} left out)",
                     f"{x['validate_seconds']:.1f} s, {x['validate_child_peak_mb']:,.0f} MB"])
    m = r["machine"]
    return _table(["row", "model", "classes", "examples", "export s", "planning", "export / ORT examples/s",
                   "export peak MB", "sidecar / model MB", "layers by granularity", "spectral blocks",
                   "validate"], rows, right={2, 3, 4, 5, 7}) + \
        f"\n\nRandom weights and images (seed 0), default settings; {m['cpus']} CPUs, {m['torch_threads']} threads."


@renderer("scale-online")
def scale_online(res: Results) -> str:
    """Every online method on the 3-channel residual release (``scale.py --online``): speed and memory."""
    row_name = next((n for n, x in res["scale"]["rows"].items() if "online" in x), None)
    if row_name is None:
        return "Not measured yet: `python benchmarks/scale.py --rows resnet18-c100 --rerun --online`."
    x = res["scale"]["rows"][row_name]
    st = x["online_setting"]
    rows = []
    for method in sorted({k.split()[0] for k in x["online"]}):
        none, side = x["online"][f"{method} none"], x["online"][f"{method} sidecar"]
        rows.append([method, f"{none['seconds_per_iteration']:.3f} / {side['seconds_per_iteration']:.3f}",
                     f"{none['iterations']:,} / {side['iterations']:,}",
                     f"{none['teacher_examples_per_second']:,.0f} / {side['teacher_examples_per_second']:,.0f}",
                     str(side["moment_layers"]), f"{max(none['peak_mb'], side['peak_mb']):,.0f}"])
    return _table(["method", "s per iteration (none / sidecar)", "iterations", "teacher examples/s",
                   "moment layers (sidecar)", "peak MB"], rows, right={4, 5}) + \
        (f"\n\nThe {row_name} release ({x['architecture']}, {'x'.join(map(str, x['input_shape']))}, {x['classes']} "
         f"classes, random weights); student {st['student']}, batch {st['batch_size']}, {st['minutes']:g} minute per "
         f"row on {st['device']}, measured {x['date']}. Speed only: the teacher is at chance, so accuracy means "
         "nothing here (the real-data row below measures it).")


@renderer("scale-real")
def scale_real(res: Results) -> str:
    """The real-data row (``scale.py --real``): a residual teacher exported from a PNG image folder."""
    r = res["scale"].get("real")
    if r is None:
        return "Not measured yet: `python benchmarks/scale.py --real`."
    tc = r["teacher_check"]
    head = (f"{r['teacher']}: {r['png_files']:,} PNG files, exported from `imagefolder:` in {r['export_seconds']:.0f} s "
            f"(teacher check {_pct(tc['accuracy'], 2)} on {tc['samples']:,} {tc['split']} examples; layers "
            + ", ".join(f"{n} {g}" for g, n in sorted(Counter(r["granularity"].values()).items()))
            + f"); its statistics differ from the in-memory export of the same examples by at most "
            f"{r['stats_vs_in_memory_max_diff_in_stds']:.1e} standard deviations.")
    rows = [[v, _pct(x["accuracy"], 2), f"{x['minutes']:.2f}", f"{x['iterations']:,}",
             f"{x['teacher_forward_examples']:,}", "yes" if x["stalled"] else "no"] for v, x in r["rows"].items()]
    text = head + "\n\n" + _table(["dfad", "student test accuracy", "minutes", "iterations", "teacher examples",
                                    "stalled"], rows, right={1, 2, 3, 4}) + \
        f"\n\nStudent lenet5-half, seed 0, {r['online_minutes']} minutes each, measured {r['date']}."
    b = res["scale"].get("budget_cost")
    if b is not None:
        full = res["claim"]["rows"][b["full_row"]]
        text += (f"\n\nWhat the size budget costs the student: the same teacher's sidecar squeezed from "
                 f"{b['full_sidecar_bytes'] / 2 ** 20:.1f} MB to {b['sidecar_bytes'] / 2 ** 20:.1f} MB (`--max-size "
                 f"{b['max_size_mb']:g}`; layers " + ", ".join(f"{n} {g}" for g, n in sorted(b["granularity"].items()))
                 + f"), dfad with it for 3 minutes, seed 0: {_pct(b['accuracy'], 2)} ({b['iterations']:,} "
                 f"iterations), against {_pct(full['accuracy'], 2)} with the full sidecar (the claim's row, "
                 f"{full['iterations']:,} iterations).")
    return text



@renderer("quantize")
def quantize_table(res: Results) -> str:
    r = res["quantize"]["rows"]
    teachers = list(dict.fromkeys(x["teacher"] for x in r.values()))
    rows = []
    for t in teachers:
        f = r[f"{t}|float|none|channel"]
        rows.append([t, "float teacher", "", f"{_pct(f['test_accuracy'], 2)} ({_pct(f['val_accuracy'], 2)})", "", ""])
        for weights in ("channel", "tensor"):
            for corr in ("none", "bias", "equalise", "equalise+bias"):
                cells = []
                for cal in ("data", "noise", "sidecar"):
                    x = r.get(f"{t}|{cal}|{corr}|{weights}")
                    cells.append("" if x is None else f"{_pct(x['test_accuracy'], 2)} ({_pct(x['val_accuracy'], 2)})")
                if any(cells):
                    rows.append([t, f"INT8, per {weights}", corr, *cells])
    return _table(["teacher", "model", "corrections", "real data", "noise", "sidecar"], rows, right={3, 4, 5}) + \
        f"\n\nTest accuracy (validation accuracy in brackets); {SAMPLES_NOTE}"


SAMPLES_NOTE = ("512 class-balanced calibration inputs, ONNX Runtime static quantisation (QDQ, uint8 activations, "
                "int8 weights, MinMax calibration).")


@renderer("quantize-speed")
def quantize_speed(res: Results) -> str:
    q = res["quantize"]
    rows = [[t, f"{s['float']['latency_ms']:.3f} / {s['int8']['latency_ms']:.3f}",
             f"{s['float']['examples_per_second']:,.0f} / {s['int8']['examples_per_second']:,.0f}",
             f"{s['float_bytes'] / 1024:,.0f} / {s['int8_bytes'] / 1024:,.0f}"] for t, s in q["speed"].items()]
    m = q["machine"]
    return _table(["teacher", "latency, batch 1 (ms): float / INT8", "examples/s, batch 256: float / INT8",
                   "file KB: float / INT8"], rows, right={1, 2, 3}) + \
        f"\n\nONNX Runtime on the CPU, {m['threads']} threads ({m['platform']})."


@renderer("quantize-headline")
def quantize_headline(res: Results) -> str:
    r = res["quantize"]["rows"]
    teachers = list(dict.fromkeys(x["teacher"] for x in r.values()))
    rows = [[t] + [_pct(r[f"{t}|{c}|none|channel"]["test_accuracy"], 2) if f"{t}|{c}|none|channel" in r else ""
                   for c in ("float", "data", "noise", "sidecar")] for t in teachers]
    return _table(["teacher", "float", "INT8, real-data calibration", "INT8, noise", "INT8, sidecar (default)"],
                  rows, right={1, 2, 3, 4}) + "\n\nTest accuracy; per-channel weights, no corrections; " + SAMPLES_NOTE


# --- the KD losses (benchmarks/losses.py) ------------------------------------------------------------------------

@renderer("losses-val")
def losses_val(res: Results) -> str:
    """The validation rows the loss weights were chosen on."""
    import losses
    return losses.summary(res["losses"], "val")


@renderer("losses")
def losses_test(res: Results) -> str:
    """The reported rows: the test split, read once per row."""
    import losses
    return losses.summary(res["losses"], "test")


# --- privacy: what a budget costs and buys (benchmarks/privacy.py) -------------------------------------------------

@renderer("privacy")
def privacy_sweep(res: Results) -> str:
    """Each teacher and budget: the best data-free student's test accuracy and the leakage audit's figures."""
    import privacy
    return privacy.summary(res["privacy"])


@renderer("privacy-clip")
def privacy_clip(res: Results) -> str:
    """The validation rows the clip default was chosen on (``privacy.py --choose-clip``)."""
    import privacy
    return privacy.clip_summary(res["privacy-clip"])


def _mb(n: float) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


@renderer("distributed")
def distributed_table(res: Results) -> str:
    """One process against two under torchrun (``distributed.py``): seconds, throughput, bytes communicated."""
    rows = res["distributed"]["rows"]
    if not rows:
        return "_No rows yet: run `python benchmarks/distributed.py`._"
    body, base = [], {}
    for key in sorted(rows, key=lambda k: (["export", "reconstruct", "online"].index(rows[k]["task"]),
                                           rows[k]["processes"], rows[k]["threads"] is not None)):
        r = rows[key]
        if r["config"] == "1 process":
            base[r["task"]] = r["throughput"]
        sent = r.get("communicated_bytes")
        if r["task"] == "online":
            sent_text = (f"{_mb(r['ddp_gradient_bytes_per_iteration'])} DDP gradients + "
                         f"{_mb(r['collective_bytes_per_iteration'])} other, per iteration") if r["processes"] > 1 else "-"
        else:
            sent_text = f"{_mb(sent)} in all" if r["processes"] > 1 else "-"
        seconds = f"{r['seconds']:.1f}" + (f" ({r['pass_seconds']:.1f} pass)" if "pass_seconds" in r else "")
        body.append([r["task"], r["config"], seconds, f"{r['throughput']:,.1f} {r['unit']}/s",
                     f"{r['throughput'] / base[r['task']]:.2f}x" if r["task"] in base else "", sent_text])
    machine = next(iter(rows.values()))["machine"]
    table = _table(["command", "processes", "seconds", "throughput", "vs 1 process", "through the main process"],
                   body, right={2, 3, 4})
    return (table + f"\n\nMNIST, the claim's LeNet-5 release; {machine['cpus']} CPUs, no GPU, gloo over localhost; "
            "one run per row (dates in results/distributed.json). Export: the statistics pass over 60,000 images "
            "(its throughput; the seconds before it, the checks and the spectral planning, run on every process); "
            "reconstruct: 2,048 samples, 50 steps; online: DFAD with the sidecar, 150 iterations of 256.\n\n"
            + _scaling_model(rows))


def _scaling_model(rows: dict) -> str:
    """What the measured bytes imply for W processes (a model, not a measurement)."""
    online = next((r for r in rows.values() if r["task"] == "online" and r["processes"] > 1), None)
    export = next((r for r in rows.values() if r["task"] == "export" and r["processes"] > 1), None)
    if online is None or export is None:
        return ""
    g = online["ddp_gradient_bytes_per_iteration"] + online["collective_bytes_per_iteration"]
    step = online["seconds"] / max(online["work"], 1)
    lines = []
    for w in (8, 64):
        ring = 2 * (w - 1) / w * g  # a ring all-reduce: each process sends and receives this much per iteration
        compute = step * online["processes"] / w  # the measured iteration's work, split further
        lines.append(f"{w} processes: {_mb(ring)} per process per iteration, {ring / 1.25e9 * 1e3:.2f} ms at 10 Gb/s, "
                     f"against {compute * 1e3:.1f} ms of work if the measured {step * 1e3:.0f} ms of two processes "
                     f"splits evenly ({ring / 1.25e9 / compute:.0%})")
    return ("How it extrapolates (a model from the measured bytes, not a measurement): an online iteration's traffic "
            "is all-reduces (DDP's of the student's gradients; DFAD's generator gradients every fifth iteration, "
            "averaged per iteration here; a few flags), and a ring all-reduce of G bytes costs each process "
            "2(W-1)/W G; for " + "; ".join(lines) + ". "
            f"The export's merge sends each accumulator three times ({_mb(export['communicated_bytes'])} here) "
            "whatever the data size, so its cost per example falls as the data grows; reconstruct sends each "
            "finished batch once to the main process, which writes it. So the global batch of 256 carries an online "
            "method to a few processes per machine; beyond, a larger global batch (and its learning rate) or "
            "faster links are needed, as in any data-parallel training.")
