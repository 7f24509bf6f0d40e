"""What ``fuzz.py --target transfer|onnx`` mutates and how each mutated file is read (the sidecar target is
fuzz.py's own). Each target: its valid bases (built here, deterministic), a mutation of a base into a file,
and the check that runs in the forked, bounded child, returning the rules or the one-line error it gave.

- transfer: transfer sets of several shapes (image and vector inputs, raw and model spaces), mutated as
  sidecars are (byte flips, truncations, structural edits through h5py); read by
  ``check_transfer_in_process`` under the read bounds, the check ``read_transfer`` runs in its child.
- onnx: the conformance models (MLP, CNN, dynamic batch, external data) and the shipped demo teacher,
  mutated by byte flips, truncations and protobuf edits (huge or negative dims, external-data paths
  outside the folder or absolute, wrong tensor sizes, unknown ops and domains, attribute retyping, cut
  graphs); loaded as a consumer loads a teacher: ``load_onnx`` (parse, onnx.checker, external data from
  inside the folder), our op registry (``OnnxModule``), then ONNX Runtime, run once on a zero batch.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "fixtures" / "conformance" / "models"


# ------------------------------------------------------------------------------------------ bytes

def byte_mutation(kind: str, base: bytes, base_name: str, rng: np.random.Generator, path: Path,
                  head: int = 0) -> dict:
    """Write ``base`` with 1-8 byte flips (``kind`` "flip"; with ``head``, half of them land in the first ``head``
    bytes) or cut at a random length ("truncate") to ``path``; returns what was done (enough to redo it)."""
    data = bytearray(base)
    if kind == "truncate":
        keep = int(rng.integers(0, len(data)))
        path.write_bytes(bytes(data[:keep]))
        return {"kind": "truncate", "base": base_name, "keep": keep}
    n = int(rng.integers(1, 9))
    limits = np.where(rng.random(n) < 0.5, min(len(data), head), len(data)) if head else [len(data)] * n
    spots = [(int(rng.integers(0, lim)), int(rng.integers(1, 256))) for lim in limits]
    for pos, mask in spots:
        data[pos] ^= mask
    path.write_bytes(bytes(data))
    return {"kind": "flip", "base": base_name, "flips": spots}


# ------------------------------------------------------------------------------------------ transfer

def transfer_bases(folder: Path) -> dict[str, bytes]:
    from dfkd_meta.transfer import TransferWriter

    out = {}
    for name, shape, c, space in (("image", (1, 8, 8), 10, "model"), ("vector", (64,), 4, "raw"),
                                  ("rgb", (3, 6, 6), 3, "model")):
        rng = np.random.default_rng(len(name))
        path = folder / f"{name}.h5"
        domain = {"layout": "NCHW" if len(shape) == 3 else "NC", "value_min": 0.0, "value_max": 1.0,
                  "norm_mean": [0.5] * shape[0] if len(shape) == 3 else [0.5], "norm_std": [0.25] * (
                      shape[0] if len(shape) == 3 else 1), "convention": None, "image_shape": None}
        w = TransferWriter(path, input_shape=shape, num_classes=c, temperature=4.0,
                           provenance={"model_sha256": "ab" * 32, "sidecar_sha256": "cd" * 32, "objective": "noise",
                                       "settings": {"seed": 0}}, input_domain=domain, input_space=space)
        for _ in range(2):
            logits = rng.normal(0, 2, (12, c)).astype(np.float32)
            soft = np.exp(logits / 4) / np.exp(logits / 4).sum(1, keepdims=True)
            w.append(x=rng.uniform(0, 1, (12, *shape)).astype(np.float32), classes=rng.integers(0, c, 12),
                     teacher_logits=logits, teacher_soft=soft.astype(np.float32),
                     loss=rng.uniform(0, 1, 12).astype(np.float32))
        w.finish()
        out[f"transfer-{name}.h5"] = path.read_bytes()
    return out


def check_transfer(path: Path, bounds) -> dict:
    from dfkd_meta.transfer import check_transfer_in_process

    report = check_transfer_in_process(path, bounds=bounds)
    return {"rules": sorted({f.rule for f in report.findings}), "errors": sorted({f.rule for f in report.errors}),
            "dm199": [f.message for f in report.findings if f.rule == "DM199"][:3]}


# ------------------------------------------------------------------------------------------ onnx

def onnx_bases(folder: Path) -> dict[str, bytes]:
    out = {f"{n}.onnx": (MODELS / f"{n}.onnx").read_bytes() for n in ("mlp", "cnn", "mlp_dynamic", "mlp_ext")}
    demo = ROOT / "dfkd_meta" / "demo_assets" / "fashion-mnist" / "release" / "teacher.onnx"
    if demo.is_file():
        out["demo-lenet5.onnx"] = demo.read_bytes()
    return out


def prepare_onnx_folder(work: Path) -> None:
    """The external-data file the mlp_ext base references, beside every mutated model."""
    shutil.copyfile(MODELS / "mlp_ext.onnx.data", work / "mlp_ext.onnx.data")


def mutate_onnx(base: bytes, base_name: str, rng: np.random.Generator, path: Path) -> dict:
    import onnx

    kind = str(rng.choice(["flip", "truncate", "proto", "proto"]))
    if kind in ("flip", "truncate"):
        return byte_mutation(kind, base, base_name, rng, path)
    m = onnx.ModelProto.FromString(base)
    edits = [_proto_edit(m, rng) for _ in range(int(rng.integers(1, 4)))]
    path.write_bytes(m.SerializeToString())
    return {"kind": "proto", "base": base_name, "edits": edits}


def _proto_edit(m, rng: np.random.Generator) -> str:
    from onnx import TensorProto, helper

    g = m.graph
    pick = lambda seq: seq[int(rng.integers(0, len(seq)))]  # noqa: E731
    op = str(rng.choice(["huge_dim", "negative_dim", "external_path", "tensor_size", "op_type", "domain",
                         "attribute", "drop_node", "drop_initializer", "rename_io", "opset", "ir_version",
                         "constant_of_shape", "dtype"]))
    values = list(g.input) + list(g.output) + list(g.value_info)
    if op in ("huge_dim", "negative_dim") and values:
        vi = pick(values)
        dims = vi.type.tensor_type.shape.dim
        if len(dims):
            d = pick(dims)
            d.dim_value = int(rng.choice([2**31, 2**40, 2**62])) if op == "huge_dim" else -int(rng.integers(1, 5))
        return f"{op} {vi.name}"
    if op == "external_path" and g.initializer:
        t = pick(g.initializer)
        t.data_location = TensorProto.EXTERNAL
        del t.external_data[:]
        loc = str(rng.choice(["../../etc/passwd", "/etc/passwd", "missing.data", "mlp_ext.onnx.data", "a/../../x",
                              "C:\\\\x.data", ""]))
        for k, v in (("location", loc), ("offset", str(int(rng.choice([0, 8, 2**40])))),
                     ("length", str(int(rng.choice([4, 400, 2**40]))))):
            e = t.external_data.add()
            e.key, e.value = k, v
        t.ClearField("raw_data")
        return f"external {t.name} -> {loc!r}"
    if op == "tensor_size" and g.initializer:
        t = pick(g.initializer)
        if len(t.dims):
            t.dims[int(rng.integers(0, len(t.dims)))] = int(rng.choice([0, 1, 7, 2**33]))
        return f"dims {t.name}"
    if op == "op_type" and g.node:
        n = pick(g.node)
        n.op_type = str(rng.choice(["Loop", "If", "Scan", "Foo", "Gemm", "Relu", "Conv", "Reshape", "Concat"]))
        return f"op {n.name} -> {n.op_type}"
    if op == "domain" and g.node:
        n = pick(g.node)
        n.domain = str(rng.choice(["com.microsoft", "ai.onnx.ml", "evil"]))
        return f"domain {n.name} -> {n.domain}"
    if op == "attribute" and g.node:
        n = pick(g.node)
        if n.attribute:
            a = pick(n.attribute)
            n.attribute.remove(a)
            n.attribute.append(helper.make_attribute(a.name, pick([2**40, -1, 1.5e300, "x", [0, 0, 0, 0, 0, 0]])))
        else:
            n.attribute.append(helper.make_attribute("axis", int(rng.integers(-9, 9))))
        return f"attribute {n.name}"
    if op == "drop_node" and g.node:
        g.node.remove(pick(g.node))
        return "drop node"
    if op == "drop_initializer" and g.initializer:
        g.initializer.remove(pick(g.initializer))
        return "drop initializer"
    if op == "rename_io" and values:
        vi = pick(values)
        vi.name = str(rng.choice(["", "x", "logits", "\x1b[31mred", "a" * 300]))
        return "rename"
    if op == "opset" and m.opset_import:
        m.opset_import[0].version = int(rng.choice([1, 6, 30, 10**6]))
        return f"opset {m.opset_import[0].version}"
    if op == "ir_version":
        m.ir_version = int(rng.choice([0, 1, 3, 99, 2**40]))
        return f"ir {m.ir_version}"
    if op == "constant_of_shape":
        shape = helper.make_tensor("huge_shape", TensorProto.INT64, [2], [2**20, 2**20])
        g.initializer.append(shape)
        g.node.insert(0, helper.make_node("ConstantOfShape", ["huge_shape"], ["huge_out"]))
        return "ConstantOfShape 2^40"
    if op == "dtype" and g.input:
        g.input[0].type.tensor_type.elem_type = int(rng.choice([TensorProto.STRING, TensorProto.INT8,
                                                                  TensorProto.DOUBLE, 0, 99]))
        return "input dtype"
    return f"{op} skipped"


# The one-line errors a rejected model gets, by the phrase that says which check refused it.
REJECTIONS = (("not ONNX", "not a readable ONNX model"), ("no graph", "holds no ONNX graph"),
              ("no graph", "is empty (0 bytes)"), ("onnx.checker", "onnx.checker rejects"),
              ("external data outside", "points outside the model's folder"),
              ("external data missing", "external data file"), ("external data unreadable", "cannot load its external"),
              ("unsupported op", "unsupported ops"), ("malformed tensor/attribute", "is malformed"),
              ("malformed tensor/attribute", "malformed attribute"), ("input shape", "per-example shape"),
              ("input shape", "values per example"), ("ORT cannot load", "ONNX Runtime cannot load"),
              ("ORT cannot run", "ONNX Runtime cannot run"), ("unknown tensor", "no tensors named"))


def check_onnx(path: Path, bounds) -> dict:
    """Load and run ``path`` as a consumer does its teacher; the one-line error, or accepted."""
    from dfkd_meta.errors import DfkdError

    bounds.apply()
    try:
        from dfkd_meta.onnx.graph import OnnxModule, load_onnx
        from dfkd_meta.onnx.inspect import model_facts, require_input_shape
        from dfkd_meta.onnx.runtime import OrtModel

        proto = load_onnx(path)
        facts = model_facts(path, proto)
        OnnxModule(proto, source=str(path))
        runner = OrtModel(proto)
        shape = require_input_shape(facts, str(path))  # as the consumers do before they allocate inputs
        runner.run_checked(np.zeros((2, *shape), np.float32), where=str(path))
        return {"rules": ["accepted"], "errors": []}
    except DfkdError as exc:
        text = str(exc)
        if "\n" in text:
            return {"rules": ["multi-line error"], "errors": ["multi-line"], "dm199": [text[:300]]}
        kind = next((k for k, phrase in REJECTIONS if phrase in text), f"other {type(exc).__name__}")
        return {"rules": [kind], "errors": [kind]}
    except MemoryError:
        return {"rules": ["DM115"], "errors": ["DM115"]}
    finally:
        bounds.lift()
