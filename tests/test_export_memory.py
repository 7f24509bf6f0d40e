"""Export streams its data: peak memory at 1x and 10x the examples is the same within a margin, and the batch
adapts to the model's width (ISSUE 31; the real-size numbers are benchmarks/scale.py's)."""
from __future__ import annotations

import json
import subprocess
import sys

from dfkd_meta.stats.export import MAX_BATCH, TAP_BYTES, auto_batch_size

# Peak resident memory may differ by allocator noise and by the few arrays whose size follows the example count
# (the labels, 8 bytes an example): 10x the examples may cost at most this much more.
MARGIN_MB = 25

CHILD = r"""
import json, resource, sys, tempfile
from pathlib import Path
import numpy as np, torch
from dfkd_meta.data.stream import from_batches
from dfkd_meta.models import build_model
from dfkd_meta.onnx.torch_export import export_onnx
from dfkd_meta.stats.export import export_release

examples = int(sys.argv[1])
class Images:
    def __iter__(self):
        rng = np.random.default_rng(0)
        for start in range(0, examples, 250):
            n = min(250, examples - start)
            yield rng.random((n, 3, 16, 16), dtype=np.float32), rng.integers(0, 10, n)
folder = Path(tempfile.mkdtemp())
torch.manual_seed(0)
path = export_onnx(build_model("resnet8", (3, 16, 16), 10).eval(), (3, 16, 16), folder / "t.onnx")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
r = export_release(path, from_batches(Images(), num_classes=10), folder / "rel", force=True, spectral_k=0,
                   batch_size=250, progress=False)
print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "before_mb": before / 1024, "samples": r.summary["samples"]}))
"""


def _peak(examples: int) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(examples)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_export_memory_does_not_grow_with_the_examples():
    small, large = _peak(1000), _peak(10000)
    assert (small["samples"], large["samples"]) == (1000, 10000)
    # the data alone would be 10x 3 MB = 31 MB more if it were held; the statistics pass holds one batch
    assert large["peak_mb"] - small["peak_mb"] < MARGIN_MB, (small, large)


def test_the_default_batch_shrinks_for_wide_models():
    narrow = [("a", "a", "pre_activation", (16, 8, 8))]
    wide = [(f"l{i}", f"l{i}", "pre_activation", (64, 32, 32)) for i in range(16)]  # a CIFAR ResNet-18's taps
    assert auto_batch_size(narrow, (3, 8, 8)) == MAX_BATCH
    per_example = 4 * (3 * 32 * 32 + 16 * 64 * 32 * 32)
    assert auto_batch_size(wide, (3, 32, 32)) == TAP_BYTES // per_example < MAX_BATCH
    assert auto_batch_size([("x", "x", "pre_activation", (4096, 64, 64))], (3, 64, 64)) == 8  # never below 8
