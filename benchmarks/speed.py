"""Speed against the machine's own limit (not a test; run by hand).

    python benchmarks/speed.py [--out benchmarks/results/speed.json] [--quick]

1. The machine's fp32 matmul rate (torch.mm, square matrices, best of several runs).
2. Reconstruction throughput for hinton1200 and lenet5 teachers at several batch sizes:
   sample-steps/s, and achieved FLOP/s from the counted FLOP model (one step = forward +
   input-gradient backward = 2x the forward FLOPs, weights frozen), as a fraction of (1).
3. Export throughput (statistics pass: ONNX Runtime with taps, per-class moments) against plain
   ONNX Runtime inference over the same batches of the same data source, and ORT with the same
   taps but no statistics (the ceiling for the statistics code).
   Beside each row, the bytes the step's leaf ops read (a profile) against the machine's streaming
   copy rate: how much of the step memory traffic alone explains.
4. Online synthesis, every method with the sidecar, LeNet-5 -> LeNet-5-half: the teacher's and the
   student's FLOPs (forward, input gradients of the teacher, weight and input gradients of the
   student, counted per example by hooks) over the loop's time less the generators' time (their
   recorded calls replayed alone, reported apart so a large generator cannot inflate the ratio).
5. Validation time and peak memory of large sidecars (>= 100 MB and twice that).

Random-weight teachers and synthetic inputs are used: speed does not depend on training, and the
script needs no data set. Ratios, not absolute times, are what the README quotes.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dfkd_meta.data import RAW, DataSource
from dfkd_meta.models import build_model
from dfkd_meta.onnx.inspect import forward_flops, load_model_proto, model_facts
from dfkd_meta.onnx.runtime import OrtModel
from dfkd_meta.onnx.torch_export import export_onnx
from dfkd_meta.reconstruct.synthesize import ReconstructConfig, reconstruct
from dfkd_meta.sidecar import validate
from dfkd_meta.stats.export import export_release

HERE = Path(__file__).resolve().parent


def matmul_rate(n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def memory_bandwidth(mb: int = 256, repeats: int = 5) -> float:
    """Bytes per second of a large copy (read + write), best of ``repeats``: the machine's streaming rate."""
    a = torch.empty(mb * 2 ** 20 // 4).uniform_()
    b = torch.empty_like(a)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        b.copy_(a)
        best = min(best, time.perf_counter() - t0)
    return 2 * a.numel() * 4 / best


VIEW_OPS = {"aten::view", "aten::reshape", "aten::_reshape_alias", "aten::slice", "aten::select", "aten::as_strided",
            "aten::expand", "aten::t", "aten::transpose", "aten::permute", "aten::unsqueeze", "aten::squeeze",
            "aten::flatten", "aten::unflatten", "aten::alias", "aten::detach", "aten::empty", "aten::empty_like",
            "aten::empty_strided", "aten::zeros", "aten::lift_fresh", "aten::resolve_conj", "aten::resolve_neg"}
ITEMSIZE = {"float": 4, "double": 8, "long int": 8, "int": 4, "bool": 1, "unsigned char": 1, "c10::Half": 2}


# The convolution and matrix-product kernels (ATen names; a backward's kernel time is its own self time).
CONV_GEMM_OPS = {"aten::mkldnn_convolution", "aten::_nnpack_spatial_convolution", "aten::convolution_backward",
                 "aten::_slow_conv2d_forward", "aten::_slow_conv2d_backward", "aten::slow_conv_transpose2d",
                 "aten::slow_conv_transpose2d_backward", "aten::mkldnn_convolution_backward", "aten::mm",
                 "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::linear", "aten::matmul"}


def _input_bytes(event) -> int:
    return sum(int(np.prod(shape)) * ITEMSIZE[dtype] for shape, dtype in zip(event.input_shapes, event.input_dtypes)
               if shape and dtype in ITEMSIZE)


def kernel_breakdown(prof, count: int) -> dict:
    """Per ``count`` units of work (steps, iterations): the self time of the convolution and matrix
    kernels, the self time of every other op, and the bytes the leaf ops read, all of them and the
    other ops' alone (their inputs; views excluded: a lower bound on their memory traffic, since their
    outputs are written too)."""
    kernel_us = other_us = 0.0
    read = other_read = 0
    for e in prof.events():
        if not e.name.startswith("aten::") or e.name in VIEW_OPS:
            continue
        kernel = e.name in CONV_GEMM_OPS
        if kernel:
            kernel_us += e.self_cpu_time_total
        else:
            other_us += e.self_cpu_time_total
        if not e.cpu_children:
            n = _input_bytes(e)
            read += n
            other_read += 0 if kernel else n
    return {"conv_gemm_s": kernel_us / 1e6 / count, "other_s": other_us / 1e6 / count,
            "bytes_read": read / count, "other_bytes_read": other_read / count}


def step_profile(model: Path, sidecar: Path, batch: int, folder: Path, steps: int = 5) -> dict:
    """``kernel_breakdown`` per reconstruction step, from a profile of ``steps`` steps (``bytes_read``:
    the step's memory traffic, lower bound)."""
    from torch.profiler import ProfilerActivity, profile

    cfg = ReconstructConfig(objective="all_layers", samples=batch, steps=steps, batch_size=batch)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        reconstruct(model, sidecar, folder / "traffic.h5", cfg, device="cpu", progress=False)
    return kernel_breakdown(prof, steps + 1)  # the batch's final labelling forward counted as one more step


def ceilings(flops: float, breakdown: dict, rate: float, bandwidth: float) -> dict:
    """The fraction of the matmul rate the work would reach if only its convolution and matrix kernels
    ran (every other op free), and if the other ops only had to read their inputs once at the streaming
    rate: what the kernels alone allow, measured inside the real work."""
    kernels = breakdown["conv_gemm_s"]
    return {"conv_gemm_ms": round(kernels * 1e3, 2), "other_ops_ms": round(breakdown["other_s"] * 1e3, 2),
            "conv_gemm_kernel_gflops_per_s": round(flops / kernels / 1e9, 2),
            "ceiling_kernels_only": round(flops / kernels / rate, 4),
            "ceiling_kernels_plus_reads": round(flops / (kernels + breakdown["other_bytes_read"] / bandwidth) / rate,
                                                4)}


def synthetic_source(shape: tuple[int, ...], n: int, seed: int = 0) -> DataSource:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    y = (np.arange(n) % 10).astype(np.int64)
    src = DataSource(name="synthetic", description="uniform random images", license="CC0-1.0",
                     class_names=[str(i) for i in range(10)], raw={"train": (x, y)}, spec="synthetic")
    return src


def _ort_pass(model: OrtModel, data: DataSource, batch_size: int = 500) -> float:
    t0 = time.perf_counter()
    for x, _ in data.batches("train", batch_size, feed=RAW):  # the identity convention, as the export uses
        model.run(x)
    return time.perf_counter() - t0


def bench_export(arch: str, shape: tuple[int, ...], export_n: int, folder: Path, repeats: int):
    """Export against plain ORT inference over the same batches of the same data source (input
    preparation included on both sides, fresh sessions, best of ``repeats``). ORT with the export's
    taps alone is a reference: tapping a pre-activation stops ORT fusing the op with its activation."""
    torch.manual_seed(0)
    model = build_model(arch, shape, 10).eval()
    path = export_onnx(model, shape, folder / f"{arch}.onnx")
    data = synthetic_source(shape, export_n)
    export_s, ort_s, taps_s = float("inf"), float("inf"), float("inf")
    for _ in range(repeats):
        release = export_release(path, data, folder / f"{arch}-release", spectral_k=0, batch_size=500,
                                 force=True, overwrite=True, progress=False)  # random weights: no accuracy check
        export_s = min(export_s, release.summary["pass_seconds"])
        taps = [layer["tensor"] for layer in release.summary["layers"]]
        ort_s = min(ort_s, _ort_pass(OrtModel(path), data))
        taps_s = min(taps_s, _ort_pass(OrtModel(path, taps=taps), data))
    return model, path, release, {
        "examples": export_n, "repeats": repeats, "export_pass_s": export_s,
        "ort_inference_s": round(ort_s, 4), "ort_with_taps_s": round(taps_s, 4),
        "export_examples_per_s": round(export_n / export_s, 1), "ort_examples_per_s": round(export_n / ort_s, 1),
        "export_over_ort_throughput": round(ort_s / export_s, 3),
        "taps_only_over_ort_throughput": round(ort_s / taps_s, 3), "measured": dt.date.today().isoformat()}


def bench_teacher(arch: str, shape: tuple[int, ...], batches: list[int], steps: int, export_n: int,
                  folder: Path, rate: float, bandwidth: float, repeats: int) -> dict:
    model, path, release, export = bench_export(arch, shape, export_n, folder, repeats)
    proto = load_model_proto(path)
    flops = forward_flops(model_facts(path, proto), proto)
    rows = []
    for b in batches:  # 2. reconstruction throughput
        reconstruct(release.model_path, release.sidecar_path, folder / "warm.h5",
                    ReconstructConfig(objective="all_layers", samples=b, steps=3, batch_size=b), device="cpu",
                    progress=False)
        seconds = min(reconstruct(release.model_path, release.sidecar_path, folder / f"{arch}-{b}.h5",
                                  ReconstructConfig(objective="all_layers", samples=b, steps=steps, batch_size=b),
                                  device="cpu", progress=False).summary["seconds"] for _ in range(repeats))
        sps = b * steps / seconds
        prof = step_profile(release.model_path, release.sidecar_path, b, folder)
        rows.append({"batch_size": b, "steps": steps, "sample_steps_per_s": round(sps, 1),
                     "gflops_per_s": round(sps * 2 * flops / 1e9, 2),
                     "fraction_of_matmul_rate": round(sps * 2 * flops / rate, 4),
                     # the step's reads at the machine's streaming rate, as a share of the step's time
                     "bytes_read_per_step_mb": round(prof["bytes_read"] / 2 ** 20, 2),
                     "read_time_share": round(prof["bytes_read"] / bandwidth / (seconds / steps), 3),
                     **ceilings(2 * flops * b, prof, rate, bandwidth)})
    return {"teacher": arch, "input_shape": list(shape), "forward_mflops": round(flops / 1e6, 4),
            "reconstruction": rows, "export": export}


class PassCounter:
    """Counts, while a run lasts, the examples run through the teacher (and how many of them are then
    differentiated to the input), through the student (forward with gradients: a weight and an input
    gradient follow), and the generators' calls by batch size and gradient mode, so their time can be
    replayed alone and reported apart from the teacher's and the student's."""

    def __init__(self, student: torch.nn.Module):
        self.student = student
        self.teacher_examples = self.teacher_grad_examples = 0
        self.student_examples = self.student_grad_examples = 0
        self.generator_calls: dict[tuple[int, bool], int] = {}
        self.generator: torch.nn.Module | None = None

    def __enter__(self):
        from dfkd_meta.onnx.graph import OnnxModule
        from dfkd_meta.synthesis.generators import InputGenerator

        counter, run, forward = self, OnnxModule.run, InputGenerator.forward
        self._restore = [(OnnxModule, "run", run), (InputGenerator, "forward", forward)]

        def counted_run(module, inputs, *args, **kw):
            x = inputs if isinstance(inputs, torch.Tensor) else next(iter(inputs.values()))
            counter.teacher_examples += len(x)
            if torch.is_grad_enabled() and x.requires_grad:
                counter.teacher_grad_examples += len(x)
            return run(module, inputs, *args, **kw)

        def counted_forward(module, z):
            key = (len(z), torch.is_grad_enabled())
            counter.generator_calls[key] = counter.generator_calls.get(key, 0) + 1
            counter.generator = counter.generator or module
            return forward(module, z)

        def student_hook(module, args, output):
            counter.student_examples += len(args[0])
            if torch.is_grad_enabled():
                counter.student_grad_examples += len(args[0])

        OnnxModule.run, InputGenerator.forward = counted_run, counted_forward
        self._hook = self.student.register_forward_hook(student_hook)
        return self

    def __exit__(self, *exc):
        for owner, name, value in self._restore:
            setattr(owner, name, value)
        self._hook.remove()

    @staticmethod
    def _replay(gen: torch.nn.Module, z: torch.Tensor, grad: bool) -> None:
        """One recorded generator call: forward, and backward where it ran with gradients."""
        with torch.set_grad_enabled(grad):
            out = gen(z)
            if grad:
                out.sum().backward()

    def generator_seconds(self, repeats: int = 3) -> float:
        """The generators' share of the run: each recorded call replayed alone (best of ``repeats``),
        with its backward where it ran with gradients, times its count."""
        if self.generator is None:
            return 0.0
        gen, total = self.generator, 0.0
        for (n, grad), calls in self.generator_calls.items():
            z = torch.randn(n, gen.nz)
            best = float("inf")
            for _ in range(repeats + 1):  # the first call warms up
                t0 = time.perf_counter()
                self._replay(gen, z, grad)
                best = min(best, time.perf_counter() - t0)
            total += best * calls
        gen.zero_grad(set_to_none=True)
        return total

    def generator_kernel_seconds(self) -> float:
        """The convolution and matrix kernels' time of the generators' recorded calls: each call
        replayed once under the profiler (after a warm-up), times its count."""
        from torch.profiler import ProfilerActivity, profile

        if self.generator is None:
            return 0.0
        gen, total = self.generator, 0.0
        for (n, grad), calls in self.generator_calls.items():
            z = torch.randn(n, gen.nz)
            self._replay(gen, z, grad)  # warm-up
            with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                self._replay(gen, z, grad)
            total += kernel_breakdown(prof, 1)["conv_gemm_s"] * calls
        gen.zero_grad(set_to_none=True)
        return total


def _online_flops(count: PassCounter, teacher_flops: float, student_flops: float) -> float:
    return (teacher_flops * (count.teacher_examples + count.teacher_grad_examples)
            + student_flops * (count.student_examples + 2 * count.student_grad_examples))


def bench_online(teacher: Path, sidecar: Path, student_arch: str, shape: tuple[int, ...], folder: Path, rate: float,
                 quick: bool) -> list[dict]:
    """Online synthesis, each method with the sidecar, LeNet pair: the teacher's and the student's
    passes counted in FLOPs against the loop's time less the generators' replayed time. A second,
    shorter run under the profiler gives the teacher's and the student's convolution and matrix
    kernel time (the loop's less the generators' replayed kernels): the ceiling those kernels allow."""
    from torch.profiler import ProfilerActivity, profile

    from dfkd_meta.config import OnlineConfig
    from dfkd_meta.device import retain_freed_memory
    from dfkd_meta.distill import distill_online
    from dfkd_meta.synthesis import METHODS

    retain_freed_memory()  # what `dfkd-meta distill --method` does

    proto = load_model_proto(teacher)
    teacher_flops = forward_flops(model_facts(teacher, proto), proto)
    torch.manual_seed(0)
    probe = build_model(student_arch, shape, 10).eval()
    student_path = export_onnx(probe, shape, folder / f"{student_arch}.onnx")
    student_proto = load_model_proto(student_path)
    student_flops = forward_flops(model_facts(student_path, student_proto), student_proto)
    rows = []
    for name, cls in sorted(METHODS.items()):
        every = int(cls.defaults.get("every", 1))
        iterations = max(10 if quick else 60, 2 * every)  # at least two synthesis rounds of the batch methods
        torch.manual_seed(0)
        student = build_model(student_arch, shape, 10)
        with PassCounter(student) as count:
            report = distill_online(teacher, student, OnlineConfig(method=name, iterations=iterations, seed=0),
                                    sidecar=sidecar, device="cpu", progress=False).report
        loop_s = report["distill_seconds"]
        gen_s = count.generator_seconds()
        flops = _online_flops(count, teacher_flops, student_flops)
        torch.manual_seed(0)
        student = build_model(student_arch, shape, 10)
        short = max(10, 2 * every)
        with PassCounter(student) as short_count, profile(activities=[ProfilerActivity.CPU]) as prof:
            distill_online(teacher, student, OnlineConfig(method=name, iterations=short, seed=0), sidecar=sidecar,
                           device="cpu", progress=False)
        kernels = kernel_breakdown(prof, 1)["conv_gemm_s"] - short_count.generator_kernel_seconds()
        ceiling = _online_flops(short_count, teacher_flops, student_flops) / max(kernels, 1e-9) / rate
        rows.append({"method": name, "iterations": iterations, "loop_s": round(loop_s, 3),
                     "generator_s": round(gen_s, 3), "teacher_examples": count.teacher_examples,
                     "teacher_input_gradient_examples": count.teacher_grad_examples,
                     "student_examples": count.student_examples,
                     "student_gradient_examples": count.student_grad_examples,
                     "teacher_student_gflop": round(flops / 1e9, 3),
                     "gflops_per_s": round(flops / max(loop_s - gen_s, 1e-9) / 1e9, 2),
                     "fraction_of_matmul_rate": round(flops / max(loop_s - gen_s, 1e-9) / rate, 4),
                     "profiled_iterations": short, "teacher_student_conv_gemm_ms_per_iteration":
                         round(kernels / short * 1e3, 2), "ceiling_kernels_only": round(ceiling, 4)})
    return rows


def bench_validation(folder: Path, sizes_mb: list[int]) -> list[dict]:
    from dfkd_meta.sidecar import DatasetProvenance, InputDomain, LayerStats, ModelBinding, Sidecar, write_sidecar

    rows = []
    for mb in sizes_mb:
        units, rank, c = 20_000, max(1, mb * 2 ** 20 // (10 * 20_000 * 4)), 10
        rng = np.random.default_rng(0)
        std = rng.uniform(0.5, 1.0, (c, units)).astype(np.float32)
        cov = (rng.standard_normal((c, units, rank)) * (0.2 / np.sqrt(rank))).astype(np.float32)
        layer = LayerStats(key="big", tensor_name="h", order=0, kind="pre_activation", shape=(units,),
                           mean=rng.standard_normal((c, units)).astype(np.float32), std=std,
                           count=np.full(c, 10, np.int64), cov_factors=cov)
        sc = Sidecar(model=ModelBinding("m.onnx", "0" * 64, 8, {"": 17}, "x", (-1, 64), "float32", "logits", c,
                                        InputDomain("NC", 0.0, 1.0)),
                     dataset=DatasetProvenance("synthetic", 100, np.full(c, 10, np.int64)), layers=[layer])
        path = write_sidecar(sc, folder / f"big{mb}.dfkd.h5")
        t0 = time.perf_counter()
        report = validate(path)  # what the CLI does: a child process with plugins disabled
        seconds = time.perf_counter() - t0
        # Peak memory of a process that does nothing but validate this file (imports included).
        # VmHWM, unlike ru_maxrss, is reset by exec: it is this process's own peak, not its parent's.
        hwm = "int(next(x for x in open('/proc/self/status') if x.startswith('VmHWM')).split()[1])"
        probe = ("import sys; from dfkd_meta.sidecar.validator import validate_in_process; "
                 f"validate_in_process(sys.argv[1]); print({hwm})")
        baseline = f"import dfkd_meta.sidecar.validator; print({hwm})"
        peak = int(subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True,
                                  check=True).stdout.split()[-1])
        idle = int(subprocess.run([sys.executable, "-c", baseline], capture_output=True, text=True,
                                  check=True).stdout.split()[-1])
        rows.append({"file_mb": round(path.stat().st_size / 2 ** 20, 1), "valid": report.valid,
                     "seconds": round(seconds, 3), "peak_rss_mb": round(peak / 1024, 1),
                     "rss_above_imports_mb": round((peak - idle) / 1024, 1)})
        path.unlink()
    return rows


def print_export(teachers: list[dict]) -> None:
    print("\n| teacher | export ex/s | ORT inference ex/s | export / ORT | ORT with taps only / ORT |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for t in teachers:
        e = t["export"]
        print(f"| {t['teacher']} | {e['export_examples_per_s']:.0f} | {e['ort_examples_per_s']:.0f} | "
              f"{e['export_over_ort_throughput']:.2f} | {e['taps_only_over_ort_throughput']:.2f} |")


def export_only(args) -> int:
    """The export rows alone, written over those of an earlier full run (each row keeps its date)."""
    results = json.loads(args.out.read_text()) if args.out.is_file() else {"teachers": []}
    by_arch = {t["teacher"]: t for t in results["teachers"]}
    n, repeats = (2000, 1) if args.quick else (20000, 3)
    with tempfile.TemporaryDirectory() as tmp:
        for arch, shape in (("hinton1200", (1, 28, 28)), ("lenet5", (1, 32, 32))):
            export = bench_export(arch, shape, n, Path(tmp), repeats)[3]
            by_arch.setdefault(arch, {"teacher": arch, "input_shape": list(shape)})["export"] = export
    results["teachers"] = list(by_arch.values())
    print_export(results["teachers"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE / "results" / "speed.json")
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--only-export", action="store_true",
                    help="re-measure only the export rows and replace them in the results file")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    if args.only_export:
        return export_only(args)
    rate = matmul_rate(1024 if args.quick else 2048)
    bandwidth = memory_bandwidth(64 if args.quick else 256)
    print(f"fp32 matmul rate: {rate / 1e9:.1f} GFLOP/s ({torch.get_num_threads()} threads); "
          f"streaming copy {bandwidth / 1e9:.1f} GB/s")
    steps = 5 if args.quick else 20
    batches = [64, 256] if args.quick else [64, 256, 1024]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        n, repeats = (2000, 1) if args.quick else (20000, 3)
        teachers = [bench_teacher("hinton1200", (1, 28, 28), batches, steps, n, folder, rate, bandwidth, repeats),
                    bench_teacher("lenet5", (1, 32, 32), batches, steps, n, folder, rate, bandwidth, repeats)]
        lenet = folder / "lenet5-release"
        online = bench_online(next(lenet.glob("*.onnx")), next(lenet.glob("*.dfkd.h5")), "lenet5-half", (1, 32, 32),
                              folder, rate, args.quick)
        validation = bench_validation(folder, [20] if args.quick else [100, 200])
    result = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "torch": torch.__version__, "threads": torch.get_num_threads()},
              "matmul_gflops_per_s": round(rate / 1e9, 2), "copy_gb_per_s": round(bandwidth / 1e9, 2),
              "teachers": teachers, "online_lenet5_to_half": online, "validation": validation,
              "targets": {"mlp_reconstruction_fraction": 0.80, "lenet_reconstruction_fraction": 0.25,
                          "export_over_ort": 0.65, "online_teacher_student_fraction": 0.25,
                          "validation_seconds": 2.0}}
    print("\n| teacher | batch | sample-steps/s | GFLOP/s | fraction of matmul rate | MB read per step "
          "| read time share | conv+GEMM kernels / other ops, ms per step | ceiling: kernels only "
          "| ceiling: kernels + reads |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for t in teachers:
        for r in t["reconstruction"]:
            print(f"| {t['teacher']} | {r['batch_size']} | {r['sample_steps_per_s']:.0f} | {r['gflops_per_s']:.1f} | "
                  f"{r['fraction_of_matmul_rate']:.1%} | {r['bytes_read_per_step_mb']:.1f} | "
                  f"{r['read_time_share']:.0%} | {r['conv_gemm_ms']:.1f} / {r['other_ops_ms']:.1f} | "
                  f"{r['ceiling_kernels_only']:.1%} | {r['ceiling_kernels_plus_reads']:.1%} |")
    print("\n| online method (LeNet-5 -> half, sidecar) | iterations | loop s | generator s | teacher+student GFLOP "
          "| GFLOP/s | fraction of matmul rate | ceiling: teacher + student kernels only |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in online:
        print(f"| {r['method']} | {r['iterations']} | {r['loop_s']:.1f} | {r['generator_s']:.1f} | "
              f"{r['teacher_student_gflop']:.1f} | {r['gflops_per_s']:.1f} | {r['fraction_of_matmul_rate']:.1%} | "
              f"{r['ceiling_kernels_only']:.1%} |")
    print_export(teachers)
    print("\n| sidecar MB | validation s | peak RSS MB | RSS above imports MB |")
    print("| ---: | ---: | ---: | ---: |")
    for v in validation:
        print(f"| {v['file_mb']} | {v['seconds']:.2f} | {v['peak_rss_mb']:.0f} | {v['rss_above_imports_mb']:.0f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
