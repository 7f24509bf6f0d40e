"""Checks of a sidecar's binding against the ONNX model file (SPEC §6.2, §8.4, §9.3)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DfkdError
from ..fileio import sha256_file
from ..onnx.inspect import check_model, load_model_proto, model_facts, resolve_external_path
from . import values
from .state import ValidationState


def _layers(chk: ValidationState) -> dict[str, dict]:
    """Layer key -> validated attributes (with units) of the layers that passed their type check."""
    out = {}
    for key, path in chk.children_of_type("/layers", "layer_stats").items():
        a = dict(chk.group_values(path))
        shape = a.get("shape")
        a["units"] = int(np.prod(shape)) if shape is not None else None
        out[key] = a
    return out


def check_against_model(chk: ValidationState, model_path: Path) -> None:
    """SPEC §6.2, §8.4, §9.3: the binding, the layers and the spectral blocks against the model file."""
    if chk.types.get("/model") != "model_binding":
        return  # /model itself is missing or of the wrong type: already reported
    binding = chk.group_values("/model")
    chk.where = "/model"
    if binding.get("sha256") is not None:
        actual = sha256_file(model_path)
        if actual != binding["sha256"]:
            chk.add("DM420", "/model@sha256",
                    f"{model_path.name} has SHA-256 {actual[:16]}..., the sidecar is bound to {binding['sha256'][:16]}...")
    try:
        proto = load_model_proto(model_path)
    except DfkdError as exc:
        chk.add("DM425", "/model", str(exc))
        return
    facts = model_facts(model_path, proto)
    _external_data(chk, model_path, facts.external_data, binding)
    problem = check_model(model_path)
    if problem is not None:
        chk.add("DM425", "/model", f"onnx.checker rejects {model_path.name}: {problem}")

    if binding.get("ir_version") is not None and binding["ir_version"] != facts.ir_version:
        chk.add("DM422", "/model@ir_version", f"sidecar {binding['ir_version']}, model {facts.ir_version}")
    doms, vers = binding.get("opset_domains"), binding.get("opset_versions")
    if doms is not None and vers is not None and len(doms) == len(vers) and dict(zip(doms, vers)) != facts.opset_imports:
        chk.add("DM422", "/model@opset_versions", f"sidecar {dict(zip(doms, vers))}, model {facts.opset_imports}")

    _input(chk, facts, binding)
    logits = binding.get("logits_name")
    outputs = {o.name: o for o in facts.outputs}
    if logits is not None:
        if logits not in outputs:
            chk.add("DM424", "/model@logits_name", f"{logits!r} is not a graph output; outputs are {sorted(outputs)}")
        else:
            shape, c = outputs[logits].shape, binding.get("num_classes")
            if shape and isinstance(shape[-1], int) and c is not None and shape[-1] != c:
                chk.add("DM424", "/model@num_classes", f"sidecar {c} classes, {logits!r} has {shape[-1]}")

    layers = _layers(chk)
    for key, layer in layers.items():
        path, name = f"/layers/{key}", layer.get("tensor_name")
        if name is None:
            continue
        if name not in facts.node_outputs and name not in {i.name for i in facts.inputs}:
            chk.add("DM620", f"{path}@tensor_name", f"{name!r} is not a tensor of {model_path.name}")
            continue
        if layer.get("kind") == "logits" and logits is not None and name != logits:
            chk.add("DM623", f"{path}@tensor_name", f"{name!r} is not the logits output {logits!r}")
        info = facts.value_info.get(name)
        per_example = info.per_example_shape if info is not None else None
        if per_example is None:
            chk.add("DM622", f"{path}@shape", f"shape of {name!r} not known statically")
        elif layer.get("shape") is not None and tuple(layer["shape"]) != per_example:
            chk.add("DM621", f"{path}@shape", f"sidecar {list(layer['shape'])}, model {list(per_example)}")

    blocks = {p: chk.group_values(p) for p in chk.children_of_type("/spectral", "spectral_stats").values()}
    _spectral_bases(chk, model_path, binding, blocks, layers)
    for path, block in blocks.items():
        missing = [n for n in block.get("weight_tensors") or [] if n not in facts.initializers]
        if missing:
            chk.add("DM720", f"{path}@weight_tensors", f"not initializers of {model_path.name}: {missing}")


def _external_data(chk: ValidationState, model_path: Path, referenced: list[str], binding: dict) -> None:
    recorded = dict(zip(binding.get("external_data_paths") or [], binding.get("external_data_sha256") or []))
    for loc in referenced:
        target = resolve_external_path(model_path.parent, loc)
        if target is None:
            chk.add("DM421", "/model@external_data_paths", f"the model references {loc!r}, outside its folder")
        elif loc not in recorded:
            chk.add("DM421", "/model@external_data_paths",
                    f"the model references {loc!r}, which the sidecar does not record")
        elif not target.is_file():
            chk.add("DM421", "/model@external_data_paths", f"{loc!r} is missing beside {model_path.name}")
        elif sha256_file(target) != recorded[loc]:
            chk.add("DM421", "/model@external_data_sha256", f"{loc!r} differs from the file the sidecar is bound to")
    for loc in recorded:
        if loc not in referenced:
            chk.add("DM421", "/model@external_data_paths", f"{loc!r} is recorded but the model does not reference it")


def _input(chk: ValidationState, facts, binding: dict) -> None:
    if len(facts.inputs) != 1:
        chk.add("DM423", "/model@input_name", f"the model has {len(facts.inputs)} inputs; dfkd-meta needs exactly one")
        return
    inp = facts.inputs[0]
    name, shape, dtype = binding.get("input_name"), binding.get("input_shape"), binding.get("input_dtype")
    if name is not None and inp.name != name:
        chk.add("DM423", "/model@input_name", f"sidecar {name!r}, model {inp.name!r}")
    if dtype is not None and inp.dtype != dtype:
        chk.add("DM423", "/model@input_dtype", f"sidecar {dtype}, model {inp.dtype}")
    if shape is not None and inp.shape is not None:
        model_dims = inp.shape[1:]
        if len(inp.shape) != len(shape) or any(isinstance(d, int) and d != s for d, s in zip(model_dims, shape[1:])):
            chk.add("DM423", "/model@input_shape", f"sidecar {shape}, model {inp.shape}")


def _spectral_bases(chk: ValidationState, model_path: Path, binding: dict, blocks: dict[str, dict],
                    layers: dict[str, dict]) -> None:
    """DM721: every stored basis is an eigenbasis of the graph rebuilt from the model (SPEC §9.1)."""
    if not blocks or chk.errors_under("/spectral") or chk.errors_under("/layers"):
        return  # a malformed block is already reported; its basis cannot be checked meaningfully
    from ..onnx.graph import load_onnx
    from ..onnx.linearize import adjacency, eigen_residual, jacobian_block, linearised_module, normalized_laplacian

    input_shape = tuple(binding.get("input_shape") or ())[1:]
    try:
        module = linearised_module(load_onnx(model_path), str(model_path))
    except DfkdError as exc:
        chk.add("DM721", "/spectral", f"cannot rebuild the graph from the model: {exc}")
        return
    cache: dict[tuple[str, str], object] = {}
    for path, block in blocks.items():
        infos = [layers[r] for r in block["layers"]]
        try:
            jac = []
            for a, b in zip(infos, infos[1:]):
                pair = (a["tensor_name"], b["tensor_name"])
                if pair not in cache:
                    cache[pair] = jacobian_block(module, *pair, a["shape"], input_shape)
                jac.append(cache[pair])
        except DfkdError as exc:
            chk.add("DM721", path, f"cannot rebuild the graph from the model: {exc}")
            continue
        lap = normalized_laplacian(adjacency(jac, [i["units"] for i in infos]))
        vals, basis = chk.file[path]["eigenvalues"][()], chk.file[path]["basis"]
        cols = max(1, values.BLOCK_BYTES // (8 * max(1, basis.shape[0])))  # column blocks, bounded like every read
        residual = np.concatenate([eigen_residual(lap, vals[j:j + cols], basis[:, j:j + cols])
                                   for j in range(0, basis.shape[1], cols)])
        worst = int(residual.argmax())
        if residual[worst] > 1e-3:
            chk.add("DM721", f"{path}/basis", f"column {worst}: ||L v - lambda v|| = {residual[worst]:.3g} "
                                              f"(allowed 1e-3) for the graph of {model_path.name}")
