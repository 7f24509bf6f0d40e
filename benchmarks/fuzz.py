"""Fuzzing campaign for the sidecar validator (run by hand, not in CI; see issue 19).

    python benchmarks/fuzz.py --files 100000 --workers 2          # about an hour with 2 workers
    python benchmarks/fuzz.py --files 300 --out runs/fuzz-smoke   # a quick look

Valid sidecars of every shape the format has (MLP with covariance factors and spectral blocks, CNN
with channel statistics, a minimal one, one with external model data, the frozen 1.0.0 release) are
mutated three ways: byte flips (36%), truncations (18%) and structural edits through h5py (46%:
deleted or retyped attributes and objects, replaced datasets, added or moved groups, names that are
not text). File ``i`` depends on ``(--seed, i)`` alone, so any finding can be regenerated.

Worker processes import the package once; each file is then read in a forked child under the
validator's own bounds (``ReadBounds``: CPU time and memory of the reading) plus a wall-clock limit,
so a crash or a runaway read costs one child. Every file is classed as accepted (valid), rejected
(with the rules it broke), an internal failure (DM199), a crash (the child died by a signal other
than the CPU bound's), a bound (DM114 CPU, DM115 memory) or a timeout (the wall clock). Files of
the last four classes are kept under ``--out/repro`` with their mutation. The summary (counts,
rules, peak memory of the children, files per second) goes to ``--results`` as JSON.

Target: 0 internal failures, 0 crashes, 0 timeouts, and every child's peak memory within the bound.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing as mp
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import h5py
import numpy as np

import dfkd_meta.sidecar.validator  # noqa: F401  (here, so a missing install fails once, not in every worker)

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fuzz_targets  # noqa: E402  (beside this script)

from dfkd_meta.sidecar.limits import ReadLimits

ROOT = Path(__file__).resolve().parents[1]
BASES = [ROOT / "fixtures/conformance/valid" / f"{n}.dfkd.h5"
         for n in ("mlp_full", "cnn_channel", "mlp_minimal", "mlp_ext", "mlp_dynamic_shape")]
BASES.append(ROOT / "fixtures/releases/digits-1.0.0/teacher.dfkd.h5")
KINDS = (("flip", 0.36), ("truncate", 0.18), ("structure", 0.46))


# ------------------------------------------------------------------------------------------ mutations

def mutate(base: bytes, base_name: str, rng: np.random.Generator, path: Path) -> dict:
    """Write a mutated copy of ``base`` to ``path``; returns what was done (enough to redo it)."""
    kind = str(rng.choice([k for k, _ in KINDS], p=[p for _, p in KINDS]))
    if kind in ("flip", "truncate"):
        # half the flips land in the first 16 KiB, where the superblock and most object headers live
        return fuzz_targets.byte_mutation(kind, base, base_name, rng, path, head=16384)
    path.write_bytes(base)
    edits = []
    try:
        with h5py.File(path, "r+") as f:
            for step in range(int(rng.integers(1, 6))):
                edits.append(_structural_edit(f, rng, step))
    except Exception as exc:  # an edit h5py itself refuses: the file is what it is so far
        edits.append(f"h5py refused: {type(exc).__name__}")
    return {"kind": "structure", "base": base_name, "edits": edits}


def _random_value(rng: np.random.Generator):
    choice = int(rng.integers(0, 9))
    if choice == 0:
        return int(rng.integers(-2**62, 2**62))
    if choice == 1:
        return float(rng.choice([np.nan, np.inf, -np.inf, 0.0, 1e38, -1e-45, rng.normal()]))
    if choice == 2:
        return "".join(chr(int(c)) for c in rng.integers(1, 0x2FF, int(rng.integers(0, 20))))
    if choice == 3:
        return bytes(rng.integers(1, 256, int(rng.integers(0, 20))).astype(np.uint8))
    if choice == 4:
        return rng.integers(-5, 100, int(rng.integers(0, 6))).astype(rng.choice(["i1", "i8", "u2"]))
    if choice == 5:
        return rng.normal(0, 1e3, int(rng.integers(0, 6))).astype(rng.choice(["f2", "f4", "f8"]))
    if choice == 6:
        return str(rng.choice(["1.0.0", "2.0.0", "1.9.0", "layer_stats", "logits", "NCHW", "all_layers", "x" * 70]))
    if choice == 7:
        return np.array([b"a", b"bc"], dtype=h5py.string_dtype("ascii"))
    return np.bool_(rng.integers(0, 2))


def _random_array(rng: np.random.Generator) -> np.ndarray:
    shape = tuple(int(s) for s in rng.integers(0, 12, int(rng.integers(0, 4))))
    dtype = str(rng.choice(["f4", "f8", "i8", "i2", "u1", "f2"]))
    return (rng.normal(0, 2, shape) * rng.choice([1, 1e20, 1e-30])).astype(dtype)


def _structural_edit(f: h5py.File, rng: np.random.Generator, step: int) -> str:
    objs: list[str] = []
    f.visit(objs.append)
    attrs = [("/", a) for a in f.attrs] + [(o, a) for o in objs for a in f[o].attrs]
    groups = ["/"] + [o for o in objs if isinstance(f[o], h5py.Group)]
    dsets = [o for o in objs if isinstance(f[o], h5py.Dataset)]
    op = str(rng.choice(["del_obj", "del_attr", "set_attr", "set_attr", "replace_data", "add_group", "add_dataset",
                         "move", "bad_name", "resize"]))
    pick = lambda seq: seq[int(rng.integers(0, len(seq)))]  # noqa: E731
    if op == "del_obj" and objs:
        o = pick(objs)
        del f[o]
        return f"del {o}"
    if op == "del_attr" and attrs:
        o, a = pick(attrs)
        del f[o].attrs[a]
        return f"del {o}@{a}"
    if op == "set_attr" and attrs:
        o, a = pick(attrs)
        f[o].attrs[a] = _random_value(rng)
        return f"set {o}@{a}"
    if op == "replace_data" and dsets:
        d = pick(dsets)
        del f[d]
        f[d] = _random_array(rng)
        return f"replace {d}"
    if op == "add_group":
        g = pick(groups)
        f[g].create_group(f"g{step}")
        return f"group {g}/g{step}"
    if op == "add_dataset":
        g = pick(groups)
        f[g][f"d{step}"] = _random_array(rng)
        return f"dataset {g}/d{step}"
    if op == "move" and objs:
        src, dst = pick(objs), pick(groups).rstrip("/") + f"/m{step}"
        if not dst.startswith(src + "/"):
            f.move(src, dst)
        return f"move {src} {dst}"
    if op == "bad_name":
        g = pick(groups)
        name = bytes(rng.integers(0x80, 0x100, 3).astype(np.uint8))
        if rng.random() < 0.5:
            f[g].attrs[name] = 1
        else:
            f[g].create_group(name)
        return f"bytes name under {g}"
    if op == "resize" and dsets:
        d = pick(dsets)
        arr = f[d][()]
        del f[d]
        f[d] = np.resize(arr, tuple(max(0, s + int(rng.integers(-1, 2))) for s in np.shape(arr))) \
            if np.ndim(arr) else arr
        return f"resize {d}"
    return f"{op} skipped"


# -------------------------------------------------------------------------------------------- running

def _check_sidecar(path: Path, bounds) -> dict:
    from dfkd_meta.sidecar.validator import check_file

    findings = check_file(path, bounds=bounds)
    return {"rules": sorted({f.rule for f in findings}), "errors": sorted({f.rule for f in findings
                                                                             if f.severity == "error"}),
            "dm199": [f.message for f in findings if f.rule == "DM199"][:3]}


def _check_in_child(path: Path, cpu: float, memory: int, wall: float) -> dict:
    """Read ``path`` as the target does, in a forked child under the bounds; classify how it ended."""
    from dfkd_meta.sidecar.limits import ReadBounds

    check = {"sidecar": _check_sidecar, "transfer": fuzz_targets.check_transfer,
             "onnx": fuzz_targets.check_onnx}[_ARGS.target]
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: read the file, send the rules back, leave without cleanup
        os.close(read_fd)
        try:
            out = json.dumps(check(path, ReadBounds(cpu, memory))).encode()
        except BaseException as exc:  # escaped the validator: the worst outcome
            out = json.dumps({"escaped": f"{type(exc).__name__}: {exc}"[:500]}).encode()
        with os.fdopen(write_fd, "wb") as fh:
            fh.write(out)
        os._exit(0)
    os.close(write_fd)
    t0 = time.monotonic()
    timed_out = True
    while time.monotonic() - t0 < wall:
        done, status, rusage = os.wait4(pid, os.WNOHANG)
        if done:
            timed_out = False
            break
        time.sleep(0.002)
    if timed_out:
        os.kill(pid, signal.SIGKILL)
        _, status, rusage = os.wait4(pid, 0)
    with os.fdopen(read_fd, "rb") as fh:
        payload = fh.read()
    peak_mib = rusage.ru_maxrss / 1024
    if timed_out:
        return {"outcome": "timeout", "peak_mib": peak_mib}
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGXCPU:
            return {"outcome": "bound", "rules": ["DM114"], "peak_mib": peak_mib}
        return {"outcome": "crash", "signal": signal.Signals(sig).name, "peak_mib": peak_mib}
    try:
        result = json.loads(payload)
    except ValueError:
        return {"outcome": "crash", "signal": f"exit {os.WEXITSTATUS(status)} without a report", "peak_mib": peak_mib}
    if "escaped" in result:
        return {"outcome": "escaped", "error": result["escaped"], "peak_mib": peak_mib}
    if result.get("dm199"):
        outcome = "dm199"
    elif "DM115" in result["rules"] or "DM114" in result["rules"]:
        outcome = "bound"
    else:
        outcome = "rejected" if result["errors"] else "accepted"
    return {"outcome": outcome, **result, "peak_mib": peak_mib}


_BASES: dict[str, bytes] = {}
_ARGS: argparse.Namespace | None = None


def _init(args: argparse.Namespace) -> None:
    global _ARGS
    _ARGS = args
    from dfkd_meta.sidecar.scan import disable_hdf5_plugins

    disable_hdf5_plugins()
    np.ones((2, 2)) @ np.ones((2, 2))  # BLAS buffers exist before any child's memory bound
    from dfkd_meta.sidecar.limits import ReadBounds

    warm = Path(tempfile.mkdtemp(prefix="dfkd-fuzz-bases-"))
    if args.target == "sidecar":
        for p in BASES:
            if p.is_file():
                _BASES[p.name if p.parent.name == "valid" else "release-1.0.0.dfkd.h5"] = p.read_bytes()
    else:
        _BASES.update(fuzz_targets.transfer_bases(warm) if args.target == "transfer" else fuzz_targets.onnx_bases(warm))
    check = {"sidecar": _check_sidecar, "transfer": fuzz_targets.check_transfer, "onnx": fuzz_targets.check_onnx}
    for name, data in _BASES.items():  # warm every cache once (schema, h5py, onnx, ORT), so no forked child does
        p = warm / name
        p.write_bytes(data)
        if args.target == "onnx":
            fuzz_targets.prepare_onnx_folder(warm)
        check[args.target](p, ReadBounds(None, None))


def _one(i: int) -> dict:
    args = _ARGS
    rng = np.random.default_rng([args.seed, i])
    name = sorted(_BASES)[int(rng.integers(0, len(_BASES)))]
    work = Path(tempfile.gettempdir()) / f"dfkd-fuzz-{os.getpid()}"
    work.mkdir(exist_ok=True)
    path = work / f"{i}.{ {'sidecar': 'dfkd.h5', 'transfer': 'h5', 'onnx': 'onnx'}[args.target]}"
    if args.target == "onnx":
        if not (work / "mlp_ext.onnx.data").exists():
            fuzz_targets.prepare_onnx_folder(work)
        mutation = fuzz_targets.mutate_onnx(_BASES[name], name, rng, path)
    else:
        mutation = mutate(_BASES[name], name, rng, path)
    size = path.stat().st_size
    memory = ReadLimits(memory_mib=args.memory_mib).memory_bytes(size)  # the validator's default unless given
    result = _check_in_child(path, args.cpu, memory, args.wall)
    result.update(index=i, mutation=mutation)
    over = result["peak_mib"] > args.memory_target_mib
    if result["outcome"] in ("dm199", "crash", "timeout", "escaped", "bound") or over:
        keep = Path(args.out) / "repro"
        keep.mkdir(parents=True, exist_ok=True)
        label = result["outcome"] + ("-memory" if over else "")
        shutil.copyfile(path, keep / f"{label}-{i}{''.join(path.suffixes)}")
        (keep / f"{label}-{i}.json").write_text(json.dumps(result, indent=1, default=str))
    result["bytes"] = size
    path.unlink(missing_ok=True)
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", choices=["sidecar", "transfer", "onnx"], default="sidecar",
                    help="what is mutated and read: sidecars (the validator), transfer sets (read_transfer's check) "
                         "or ONNX teachers (loaded and run as a consumer does; see fuzz_targets.py)")
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--start", type=int, default=0, help="first file index (to continue a campaign)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cpu", type=float, default=20.0, help="CPU seconds a read may take (the validator's bound)")
    ap.add_argument("--memory-mib", type=int, default=None,
                    help="memory a read may add (default: the validator's, 256 MiB plus half the file's size)")
    ap.add_argument("--memory-target-mib", type=float, default=512.0,
                    help="peak child memory above which a file counts against the target and is kept")
    ap.add_argument("--wall", type=float, default=60.0, help="wall-clock seconds per file before it is a timeout")
    ap.add_argument("--out", default=str(ROOT / "runs" / "fuzz"), help="kept repro files go to OUT/repro")
    ap.add_argument("--results", type=Path, help="default: benchmarks/results/fuzz.json (fuzz-TARGET.json)")
    args = ap.parse_args(argv)
    args.results = args.results or ROOT / "benchmarks" / "results" / (
        "fuzz.json" if args.target == "sidecar" else f"fuzz-{args.target}.json")
    outcomes: Counter = Counter()
    by_kind: dict[str, Counter] = {}
    rules: Counter = Counter()
    failures: list[dict] = []
    peak, over_target = 0.0, 0
    t0 = last = time.monotonic()
    ctx = mp.get_context("fork")
    with ctx.Pool(args.workers, initializer=_init, initargs=(args,)) as pool:
        for n, r in enumerate(pool.imap_unordered(_one, range(args.start, args.start + args.files), chunksize=16), 1):
            outcomes[r["outcome"]] += 1
            by_kind.setdefault(r["mutation"]["kind"], Counter())[r["outcome"]] += 1
            rules.update(r.get("errors", r.get("rules", [])))
            peak = max(peak, r["peak_mib"])
            over_target += r["peak_mib"] > args.memory_target_mib
            if r["outcome"] in ("dm199", "crash", "timeout", "escaped"):
                failures.append({k: r.get(k) for k in ("index", "outcome", "signal", "dm199", "error", "mutation")})
            if time.monotonic() - last > 10 or n == args.files:
                last = time.monotonic()
                print(f"{n}/{args.files} files, {n / (last - t0):.1f}/s: {dict(outcomes)}; peak {peak:.0f} MiB",
                      file=sys.stderr, flush=True)
    seconds = time.monotonic() - t0
    summary = {"date": dt.date.today().isoformat(), "target": args.target, "files": args.files, "start": args.start,
               "seed": args.seed,
               "workers": args.workers, "bounds": {"cpu_seconds": args.cpu,
                                                   "memory_mib": args.memory_mib or "256 + half the file's size",
                                                   "wall_seconds": args.wall},
               "bases": sorted(_BASES) or [p.name for p in BASES], "seconds": round(seconds, 1),
               "files_per_second": round(args.files / seconds, 1), "outcomes": dict(outcomes),
               "outcomes_by_mutation": {k: dict(v) for k, v in by_kind.items()},
               "error_rules": dict(rules.most_common()), "peak_child_rss_mib": round(peak, 1),
               "memory_target_mib": args.memory_target_mib, "files_over_memory_target": over_target,
               "failures": failures[:200]}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k not in ("failures", "error_rules")}, indent=1))
    bad = sum(outcomes[k] for k in ("dm199", "crash", "timeout", "escaped")) + over_target
    print(f"{bad} failures (internal, crash, timeout, escaped, over {args.memory_target_mib:.0f} MiB) in {args.files} "
          f"files; repro files in {args.out}/repro")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
