"""The benchmarks' protocol, in one place: data splits, clock budgets and the order of compared rows.

- **Validation split.** ``carve`` takes ``VALIDATION_SIZE`` examples out of each data set's training
  files (a fixed random draw, seed ``VALIDATION_SEED``). Teachers are trained and sidecars exported
  on the rest; every setting is chosen by accuracy on ``val``; ``test`` is read once per reported
  row, after its run, and never to choose anything.
- **Equal wall time.** Compared rows run under the same ``--minutes`` (the loop stops on the clock;
  setup is outside it and recorded), each recording its minutes, iterations and teacher examples.
  A row that overran its budget by more than ``OVERRUN`` is marked for a rerun.
- **Alternating order.** Within a seed, the with- and without-metadata rows run in the order
  ``order(variants, seed)`` gives: reversed on odd seeds, so neither side always runs on a cold
  or a warm machine.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import platform
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from dfkd_meta.data import DataSource, load_data

VALIDATION_SIZE = 5000
VALIDATION_SEED = 2026
OVERRUN = 0.10  # a row this far over its budget is rerun
# the per-data-set normalisation constants a publisher elsewhere uses (raw [0, 1] -> (x - mean) / std)
NORMALISATION = {"mnist": (0.1307, 0.3081), "fashion-mnist": (0.2860, 0.3530)}
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
PAUSE = Path(__file__).resolve().parents[1] / "runs" / "pause"  # while it exists, no new row starts


def carve(data_spec: str, resize: int | None = None) -> DataSource:
    """The data set of ``data_spec`` with its validation split carved from the training files."""
    return load_data(data_spec, resize).with_validation(VALIDATION_SIZE, VALIDATION_SEED)


def order(variants: list[str], seed: int) -> list[str]:
    """The run order of a seed's compared rows: as given on even seeds, reversed on odd ones."""
    return list(variants) if seed % 2 == 0 else list(reversed(variants))


def overran(minutes: float, budget: float) -> bool:
    return minutes > budget * (1.0 + OVERRUN)


def run_rows(out: Path, results: dict, jobs: Iterable[tuple[str, Callable[[], dict]]], *, rerun: bool, log,
             done: Callable[[str, dict], str]) -> None:
    """Run each (key, job) not yet in ``results["rows"]`` (or ``rerun``, or overran), one at a time, waiting
    between rows while ``PAUSE`` exists (a window for other work on the machine, never inside a row); each row is
    recorded with its date and the machine, and ``out`` rewritten after it, so a stopped run resumes."""
    import torch

    machine = {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform()}
    for key, job in jobs:
        old = results["rows"].get(key)
        if old is not None and not rerun and not old.get("overran"):
            continue
        while PAUSE.exists():
            time.sleep(5)
        log(f"{key}: running")
        row = job()
        results["rows"][key] = {**row, "date": dt.date.today().isoformat(), "machine": machine}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
        log(f"{key}: {done(key, row)}")
