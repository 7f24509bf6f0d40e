"""Per-iteration time of our online methods beside the authors' published code, on this CPU (not a test; run by hand).

    python benchmarks/reference_speed.py --reference runs/reference [--iterations 20]

``--reference`` holds checkouts of the authors' repositories (each with a ``.commit`` file naming the commit,
or a git work tree), named as on GitHub:

- ``Data-Free-Adversarial-Distillation`` (VainF): DFAD, ``DFAD_mnist.py``;
- ``Efficient-Computing`` (huawei-noah): DAFL, ``Data-Efficient-Model-Compression/DAFL/DAFL-train.py``;
- ``DeepInversion`` (NVlabs): ``cifar10/deepinversion_cifar10.py``.

Their code runs as published, with device-selection changes only: the training step functions
(DFAD's ``train``, DeepInversion's ``get_images`` and its feature hook) are read from their files
and executed unchanged, except that ``'cuda'`` becomes ``'cpu'``; DAFL-train.py, a script with its
loop at the top level, runs whole with ``.cuda()`` made a no-op. Nothing they would load from disk
is unpickled: the teacher DAFL-train.py would ``torch.load`` is handed to it as its own
``lenet.LeNet5`` (random weights: speed does not depend on them), and torchvision, which only
their test loaders and image saving use (and which would pull a CUDA build of torch here), is
replaced by no-op stand-ins.

Ours runs the same teacher (the authors' module, exported to ONNX as a publisher would, BatchNorm
kept for DeepInversion), the same student module, a generator of the same shape (DCGAN-style,
ngf 64, z of 100) and the same batch, through ``distill_online``. Per iteration means per student
update (DFAD: one of its 5 student steps, with the generator step shared among them; DAFL: the
joint step) and, for DeepInversion, per input-optimisation step of a first batch (no ADI competition on
either side: ours starts it from the second batch). Writes
``benchmarks/results/reference-speed.json``.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import datetime as dt
import importlib.util
import json
import platform
import runpy
import shutil
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

from dfkd_meta.config import OnlineConfig
from dfkd_meta.device import retain_freed_memory
from dfkd_meta.distill import distill_online
from dfkd_meta.onnx.torch_export import export_onnx

HERE = Path(__file__).resolve().parent
DFAD_REPO, DAFL_REPO, DI_REPO = "Data-Free-Adversarial-Distillation", "Efficient-Computing", "DeepInversion"
DAFL_DIR = "Data-Efficient-Model-Compression/DAFL"


def commit_of(repo: Path) -> str:
    marker = repo / ".commit"
    if marker.is_file():
        return marker.read_text().strip()
    out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def module_from(path: Path, name: str) -> types.ModuleType:
    """Import one of the authors' files by path (their model files import only torch)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def definitions_from(path: Path, names: list[str], namespace: dict) -> dict:
    """Execute the named top-level functions and classes of ``path`` as written, device strings set to the CPU."""
    source = path.read_text()
    tree = ast.parse(source)
    found = {node.name: ast.get_source_segment(source, node) for node in tree.body
             if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in names}
    missing = sorted(set(names) - set(found))
    if missing:
        raise SystemExit(f"{path}: {', '.join(missing)} not found; is this the published revision?")
    for name in names:
        exec(found[name].replace("'cuda'", "'cpu'").replace(".cuda()", ""), namespace)  # noqa: S102
    return namespace


def torchvision_stand_in() -> dict[str, types.ModuleType]:
    """No-op modules for what the scripts import from torchvision (test loaders, image saving)."""
    tv = types.ModuleType("torchvision")
    transforms, datasets, utils, mnist = (types.ModuleType(f"torchvision.{n}") for n in
                                          ("transforms", "datasets", "utils", "datasets.mnist"))

    class _Nothing:
        def __init__(self, *a, **k):
            pass

        def __call__(self, x):
            return x

    class _TinyTest(torch.utils.data.Dataset):
        def __init__(self, *a, **k):
            self.x, self.y = torch.zeros(8, 1, 32, 32), torch.zeros(8, dtype=torch.long)

        def __len__(self):
            return len(self.y)

        def __getitem__(self, i):
            return self.x[i], self.y[i]

    for n in ("Compose", "Resize", "ToTensor", "Normalize", "RandomCrop", "RandomHorizontalFlip"):
        setattr(transforms, n, _Nothing)
    mnist.MNIST = datasets.MNIST = datasets.CIFAR10 = datasets.CIFAR100 = _TinyTest
    utils.save_image = lambda *a, **k: None
    tv.transforms, tv.datasets, tv.utils = transforms, datasets, utils
    datasets.mnist = mnist
    return {"torchvision": tv, "torchvision.transforms": transforms, "torchvision.datasets": datasets,
            "torchvision.datasets.mnist": mnist, "torchvision.utils": utils}


class StepClock:
    """Wall-clock times of an optimiser's ``step`` calls (what their loops do once per iteration)."""

    def __init__(self, optimizer_cls):
        self.times, self.cls, self.original = [], optimizer_cls, optimizer_cls.step

    def __enter__(self):
        original, times = self.original, self.times

        def step(opt, *a, **k):
            out = original(opt, *a, **k)
            times.append(time.perf_counter())
            return out
        self.cls.step = step
        return self

    def __exit__(self, *exc):
        self.cls.step = self.original

    def per_cycle(self, skip: int, stride: int = 1) -> float:
        """Mean seconds between every ``stride``-th call after the first ``skip`` (warm-up): one loop iteration."""
        t = self.times[skip::stride]
        if len(t) < 2:
            raise SystemExit("too few iterations to time; raise --iterations")
        return (t[-1] - t[0]) / (len(t) - 1)


class Logits(torch.nn.Module):
    """The authors' teacher with a one-argument forward: their LeNet5's ``out_feature=False`` default trips the
    legacy exporter's tracer. Same module, same weights."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)


def ours(method: str, teacher: torch.nn.Module, student: torch.nn.Module, input_shape, batch: int, iterations: int,
         options: dict, keep_batchnorm: bool = False) -> dict:
    """Our method on the same teacher (as ONNX), student and batch: seconds per iteration of the loop."""
    with tempfile.TemporaryDirectory(prefix="refspeed-") as work:
        model = export_onnx(Logits(teacher), tuple(input_shape), Path(work) / "teacher.onnx", keep_batchnorm=keep_batchnorm)
        cfg = OnlineConfig(method=method, iterations=iterations, batch_size=batch, options=options,
                           checkpoint_every=10 ** 9)
        r = distill_online(model, student, cfg, device="cpu", progress=False, log=lambda m: None).report
    return {"iterations": r["iterations"], "loop_seconds": round(r["distill_seconds"], 2),
            "seconds_per_iteration": round(r["distill_seconds"] / r["iterations"], 4),
            "method_settings": r["method_settings"]}


def bench_dfad(repo: Path, iterations: int, batch: int) -> dict:
    lenet, gan = module_from(repo / "network" / "lenet.py", "ref_lenet"), module_from(repo / "network" / "gan.py",
                                                                                      "ref_gan")
    torch.manual_seed(0)
    teacher, student = lenet.LeNet5().eval(), lenet.LeNet5Half()
    generator = gan.GeneratorA(nz=100, nc=1, img_size=32)
    ns = definitions_from(repo / "DFAD_mnist.py", ["train"], {"torch": torch, "F": torch.nn.functional})
    args = argparse.Namespace(epoch_itrs=iterations, batch_size=batch, nz=100, verbose=False, log_interval=10)
    opt_s = torch.optim.SGD(student.parameters(), lr=0.01, weight_decay=1e-4, momentum=0.9)  # as their main() builds it
    opt_g = torch.optim.Adam(generator.parameters(), lr=1e-3)
    with StepClock(torch.optim.SGD) as clock:  # cycles of 5 student steps (SGD) and 1 generator step
        ns["train"](args, teacher, student, generator, "cpu", [opt_s, opt_g], 1)
    theirs = clock.per_cycle(skip=5, stride=5) / 5
    torch.manual_seed(0)
    mine = ours("dfad", teacher, lenet.LeNet5Half(), (1, 32, 32), batch, 5 * iterations, {"ngf": 64, "nz": 100})
    return {"method": "dfad", "reference": f"VainF/{DFAD_REPO}@{commit_of(repo)}: DFAD_mnist.py train()",
            "teacher": "their LeNet5 (MNIST, 1x32x32)", "student": "their LeNet5Half", "generator": "GeneratorA, ngf 64",
            "batch": batch, "reference_seconds_per_iteration": round(theirs, 4), "ours": mine,
            "ours_over_reference": round(mine["seconds_per_iteration"] / theirs, 3)}


def bench_dafl(repo: Path, iterations: int, batch: int) -> dict:
    folder = repo / DAFL_DIR
    sys.path.insert(0, str(folder))
    lenet = module_from(folder / "lenet.py", "lenet")
    torch.manual_seed(0)
    teacher = lenet.LeNet5()
    stand_ins = torchvision_stand_in()
    patches = [(torch.nn.Module, "cuda", lambda self, *a, **k: self), (torch.Tensor, "cuda", lambda self, *a, **k: self),
               (torch, "load", lambda *a, **k: teacher)]
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    argv, modules = sys.argv, {k: sys.modules.get(k) for k in stand_ins}
    work = tempfile.mkdtemp(prefix="refspeed-dafl-")  # where the script saves its student
    try:
        for obj, name, value in patches:
            setattr(obj, name, value)
        sys.modules.update(stand_ins)
        sys.argv = ["DAFL-train.py", "--n_epochs", "1", "--batch_size", str(batch), "--output_dir", f"{work}/"]
        with StepClock(torch.optim.Adam) as clock, contextlib.redirect_stdout(sys.stderr):
            runpy.run_path(str(folder / "DAFL-train.py"), run_name="__main__")
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)
        for k, v in modules.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
        sys.argv = argv
        sys.path.remove(str(folder))
        shutil.rmtree(work, ignore_errors=True)
    theirs = clock.per_cycle(skip=4, stride=2)  # the generator's and the student's Adam step once each per iteration
    torch.manual_seed(0)
    mine = ours("dafl", teacher, lenet.LeNet5Half(), (1, 32, 32), batch, 3 * iterations, {"ngf": 64, "nz": 100})
    return {"method": "dafl", "reference": f"huawei-noah/{DAFL_REPO}@{commit_of(repo)}: {DAFL_DIR}/DAFL-train.py",
            "teacher": "their LeNet5 (MNIST, 1x32x32)", "student": "their LeNet5Half", "generator": "theirs, 128 maps",
            "batch": batch, "reference_iterations": 120, "reference_seconds_per_iteration": round(theirs, 4),
            "ours": mine, "ours_over_reference": round(mine["seconds_per_iteration"] / theirs, 3)}


def bench_deepinversion(repo: Path, steps: int, batch: int) -> dict:
    folder = repo / "cifar10"
    resnet = module_from(folder / "resnet_cifar.py", "resnet_cifar")
    torch.manual_seed(0)
    teacher, student = resnet.ResNet34().eval(), resnet.ResNet18()
    stand_ins = torchvision_stand_in()
    ns = {"torch": torch, "nn": torch.nn, "F": torch.nn.functional, "random": __import__("random"),
          "collections": __import__("collections"), "glob": __import__("glob"), "vutils": stand_ins["torchvision.utils"],
          "amp": None, "debug_output": False}
    definitions_from(folder / "deepinversion_cifar10.py", ["DeepInversionFeatureHook", "get_images"], ns)
    inputs = torch.randn((batch, 3, 32, 32), requires_grad=True)
    optimizer = torch.optim.Adam([inputs], lr=0.1)
    with StepClock(torch.optim.Adam) as clock:
        ns["get_images"](net=teacher, bs=batch, epochs=steps, idx=-1, net_student=student, prefix=None,
                         competitive_scale=0.0, optimizer=optimizer, inputs=inputs, bn_reg_scale=10.0,
                         random_labels=True, var_scale=2.5e-5)
    theirs = clock.per_cycle(skip=2)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    # one synthesised batch of `steps` input steps and one student update (counted in). Ours adds ADI's competition
    # term from the second batch on, so on this first batch neither side runs the student (competitive_scale 0)
    mine = ours("deepinversion", teacher, resnet.ResNet18(), (3, 32, 32), batch, 1,
                {"steps": steps, "synth_batch": batch, "gaussian_init": 0}, keep_batchnorm=True)
    mine["seconds_per_input_step"] = round(mine["loop_seconds"] / steps, 4)
    mine["wall_seconds"] = round(time.perf_counter() - t0, 1)
    return {"method": "deepinversion", "reference": f"NVlabs/{DI_REPO}@{commit_of(repo)}: "
            "cifar10/deepinversion_cifar10.py get_images()", "teacher": "their ResNet34 (CIFAR, 3x32x32), BatchNorm",
            "student": "their ResNet18", "batch": batch, "reference_seconds_per_input_step": round(theirs, 4),
            "ours": mine, "ours_over_reference": round(mine["seconds_per_input_step"] / theirs, 3)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", type=Path, default=HERE.parent / "runs" / "reference")
    ap.add_argument("--iterations", type=int, default=10,
                    help="DFAD's generator steps (5 student updates each); ours runs DAFL for 3x as many")
    ap.add_argument("--batch", type=int, default=64,
                    help="DFAD's and DAFL's batch, both sides (their default 512 takes seconds per step on 2 cores)")
    ap.add_argument("--di-steps", type=int, default=6)
    ap.add_argument("--di-batch", type=int, default=64)
    ap.add_argument("--only", nargs="+", choices=["dfad", "dafl", "deepinversion"],
                    default=["dfad", "dafl", "deepinversion"])
    ap.add_argument("--out", type=Path, default=HERE / "results" / "reference-speed.json")
    args = ap.parse_args(argv)
    repos = {"dfad": args.reference / DFAD_REPO, "dafl": args.reference / DAFL_REPO,
             "deepinversion": args.reference / DI_REPO}
    for name in args.only:
        if not repos[name].is_dir():
            raise SystemExit(f"{repos[name]}: no checkout of the {name} reference code; see this script's docstring")
    retain_freed_memory()
    rows = []
    for name in args.only:
        print(f"{name} ...", file=sys.stderr, flush=True)
        if name == "dfad":
            rows.append(bench_dfad(repos[name], args.iterations, args.batch))
        elif name == "dafl":
            rows.append(bench_dafl(repos[name], args.iterations, args.batch))
        else:
            rows.append(bench_deepinversion(repos[name], args.di_steps, args.di_batch))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    out = {"date": dt.date.today().isoformat(), "machine": {"platform": platform.platform(), "threads":
           torch.get_num_threads(), "torch": torch.__version__}, "rows": rows}
    args.out.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
