"""``quantize_release``: the teacher copied once, the sidecar validated and bound to that copy before any
work, calibration inputs made without the data, ONNX Runtime's static quantisation, DFQ's corrections,
the INT8 model checked (onnx.checker, one ORT pass over the calibration inputs against the float
teacher) and written atomically with what it was calibrated on in its metadata."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch

from .. import __version__
from ..config import QuantizeConfig, settings
from ..data import DataSource
from ..device import resolve_device
from ..errors import DfkdError, UsageError
from ..fileio import PrivateFolder, atomic_path, output_lock, require_file, sha256_file
from ..onnx.graph import load_onnx
from ..onnx.inspect import copy_model, model_bytes
from ..onnx.runtime import OrtModel
from ..sidecar.card import CARD_KEY, CARD_NAME, QUANTIZATION_KEY, CardError, card_with_derived, derived_entry, read_card
from ..sidecar.release import SIDECAR_SUFFIX
from ..sidecar.types import Sidecar
from ..synthesis.context import SynthesisContext
from .calibration import Calibration, build_calibration
from .corrections import correct_bias, equalise, layer_inputs

METADATA_KEY = QUANTIZATION_KEY  # what the INT8 model was made from; the release validator reads it
ORT_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
ONE_BATCH_AT_A_TIME = {"CalibStridedMinMax": 1}  # ORT calibrates batch by batch, merging ranges (any calibrator)


@dataclass
class QuantizeResult:
    path: Path
    report: dict = field(default_factory=dict)


class _Reader:
    """ONNX Runtime's calibration data reader over a calibration source's batches, each made when it is read.
    ``set_range`` lets ONNX Runtime calibrate one batch at a time (``CalibStridedMinMax``), merging the ranges as it
    goes, so that its memory is one batch's activations, not every batch's."""

    def __init__(self, calib: Calibration, input_name: str):
        self.calib, self.input_name = calib, input_name
        self.set_range(0, len(self))

    def __len__(self) -> int:
        return self.calib.num_batches

    def set_range(self, start_index: int, end_index: int) -> None:
        self.pending = iter(range(start_index, min(end_index, len(self))))

    def get_next(self) -> dict | None:
        b = next(self.pending, None)
        return None if b is None else {self.input_name: self.calib.checked_batch(b)}


def _quantise(float_proto: onnx.ModelProto, calib: Calibration, cfg: QuantizeConfig, folder: PrivateFolder,
              input_name: str, stem: str) -> onnx.ModelProto:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src, prepared, dst = (Path(folder.path) / f"{stem}.{k}.onnx" for k in ("float", "prepared", "int8"))
    onnx.save(float_proto, src)
    try:  # shape inference only: an optimisation pass could rename the tensors the corrections look up
        quant_pre_process(str(src), str(prepared), skip_optimization=True, skip_symbolic_shape=True)
    except Exception:  # a graph ONNX's shape inference cannot follow is still quantised, as it is
        prepared = src
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # ORT's quantiser logs its advice at WARNING on every call
    try:
        # QUInt8 activations, QInt8 weights: ONNX Runtime's advice for x86 CPUs (QDQ, no range reduction)
        quantize_static(str(prepared), str(dst), _Reader(calib, input_name), quant_format=QuantFormat.QDQ,
                        per_channel=cfg.per_channel, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=getattr(CalibrationMethod, ORT_METHODS[cfg.method]),
                        extra_options=dict(ONE_BATCH_AT_A_TIME))
    except DfkdError:
        raise
    except Exception as exc:
        raise DfkdError(f"ONNX Runtime could not quantise the teacher ({type(exc).__name__}: {exc}); "
                        "nothing was written") from None
    finally:
        logging.getLogger().setLevel(quiet)
    return onnx.load(str(dst))


def sidecar_means(sc: Sidecar, tensors: list[str]) -> dict[str, np.ndarray]:
    """The data's mean per channel (a conv map) or per unit of each of ``tensors`` the sidecar records: the class
    means weighted by the class counts."""
    out: dict[str, np.ndarray] = {}
    for layer in sc.layers_in_order():
        if layer.tensor_name not in tensors or layer.count.sum() <= 0:
            continue
        p = layer.count.astype(np.float64) / layer.count.sum()
        if len(layer.shape) == 3 and layer.channel is not None:
            out[layer.tensor_name] = p @ layer.channel.mean.astype(np.float64)
        elif layer.per_unit:
            units = p @ layer.mean.astype(np.float64)
            out[layer.tensor_name] = units.reshape(layer.shape[0], -1).mean(1) if len(layer.shape) == 3 else units
        elif layer.pooled_mean is not None and len(layer.shape) == 1:
            out[layer.tensor_name] = layer.pooled_mean.astype(np.float64)
    return out


@torch.no_grad()
def measured_means(ctx: SynthesisContext, calib: Calibration, tensors: list[str]) -> dict[str, np.ndarray]:
    """The float teacher's mean per channel (conv maps) or per unit of ``tensors`` over the calibration inputs."""
    sums: dict[str, torch.Tensor] = {}
    count = 0
    for x in calib.batches():
        acts = ctx.run(torch.as_tensor(x, device=ctx.device), tensors)
        for name in tensors:
            a = acts[name].double()  # [N, C, ...]: summed over the examples and each channel's positions
            per_channel = a.sum(dim=(0, *range(2, a.dim()))) / (a[0, 0].numel() if a.dim() > 2 else 1)
            sums[name] = sums.get(name, 0) + per_channel
        count += len(x)
    return {name: (s / count).cpu().numpy() for name, s in sums.items()}


def _layer_means(ctx: SynthesisContext, calib: Calibration, proto: onnx.ModelProto,
                 scales: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """E[x] of each correctable layer's input: from the sidecar where it records the tensor, else measured on the
    calibration inputs; divided by the equalisation's per-channel factors (measured on the original graph)."""
    wanted = layer_inputs(proto)
    means = sidecar_means(ctx.sidecar, wanted) if ctx.sidecar is not None else {}
    source = {t: "sidecar" for t in means}
    rest = [t for t in wanted if t not in means]
    if rest:
        means.update(measured_means(ctx, calib, rest))
        source.update({t: "calibration inputs" for t in rest})
    for tensor, s in scales.items():
        if tensor in means:
            means[tensor] = means[tensor] / np.repeat(s, means[tensor].size // s.size)
    return means, source


def _card_to_list_in(src: Path, out: Path) -> Path:
    """The model card an INT8 model at ``out`` is listed in: the teacher's release folder's, with ``out`` in it."""
    card = src.parent / CARD_NAME
    if out.resolve().parent != src.resolve().parent:
        raise UsageError(f"{out}: {{list_in_card}} lists the INT8 model in the teacher's release folder; write it "
                         f"there ({{output}} {src.parent / out.name})")
    if out.name == CARD_NAME or out.name.endswith(SIDECAR_SUFFIX) or out.name.startswith("."):
        raise UsageError(f"{out}: not a name for a model in a release folder; pass {{output}} "
                         f"{src.parent / (src.stem + '.int8.onnx')}")
    if not card.is_file():
        raise UsageError(f"{card}: {{list_in_card}} needs the release's model card, and there is none; run dfkd-meta "
                         "export to write the release, or leave out {list_in_card}")
    return card


def _card_describes(card: Path, src: Path, sha256: str) -> dict:
    """The card's ``dfkd_meta`` block; refuses a card that is unreadable or describes another model."""
    try:
        front, _ = read_card(card)
    except CardError as exc:
        raise UsageError(f"{card}: the model card cannot be read safely ({exc}); re-export the release") from None
    block = front.get(CARD_KEY)
    if not isinstance(block, dict) or block.get("model") != src.name or block.get("model_sha256") != sha256:
        raise UsageError(f"{card}: the model card describes another model than {src.name} (sha256 {sha256[:12]}…); "
                         "re-export the release, or leave out {list_in_card}")
    return block


def _agreement(quantised: onnx.ModelProto, ctx: SynthesisContext, calib: Calibration) -> dict:
    """The INT8 model against the float teacher on the calibration inputs: top-1 agreement and the largest logit
    error in units of the teacher's logit spread (its standard deviation over those inputs)."""
    runner = OrtModel(quantised)
    agree, n, worst, spread = 0, 0, 0.0, []
    for x in calib.batches():
        q = runner.run_checked(x, "the INT8 model")[runner.output_names[0]]
        f = ctx.teacher_logits(torch.as_tensor(x, device=ctx.device)).cpu().numpy()
        if q.shape != f.shape or not np.isfinite(q).all():
            raise DfkdError(f"the INT8 model gives outputs of shape {list(q.shape)} or non-finite values on the "
                            "calibration inputs; nothing was written")
        agree += int((q.argmax(1) == f.argmax(1)).sum())
        n += len(x)
        worst = max(worst, float(np.abs(q - f).max()))
        spread.append(f.std())
    scale = float(np.mean(spread)) or 1.0
    return {"top1_agreement": agree / n, "max_logit_error": worst, "max_logit_error_in_spreads": worst / scale}


def quantize_release(model: str | os.PathLike, out: str | os.PathLike, cfg: QuantizeConfig, *,
                     sidecar: str | os.PathLike | None = None, data: DataSource | None = None, device: str = "auto",
                     list_in_card: bool = False, log=None) -> QuantizeResult:
    """Write ``out``, ``model`` in INT8 (QDQ), calibrated as ``cfg.calibration`` says; see the package docstring.
    ``data``: the source of calibration ``data`` (in Python, instead of a ``data:SPEC``). ``list_in_card``: ``out``
    is written into the teacher's release folder and listed in its model card (SPEC §13, derived models).

    ``out`` (and the card) change only when the quantised model has passed onnx.checker and run on every
    calibration input."""
    cfg.check()
    src = require_file(model, "model")
    if Path(out).resolve() == src.resolve():
        raise UsageError(f"{out}: the output would overwrite the teacher; pass another {{output}}")
    card = _card_to_list_in(src, Path(out)) if list_in_card else None
    say = log or (lambda _msg: None)
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        stack.enter_context(output_lock(out))
        if card is not None:  # two runs listing models in one card would each write it from what they read
            stack.enter_context(output_lock(card, "{list_in_card}"))
        folder = stack.enter_context(PrivateFolder())
        copy = copy_model(folder, src)  # what is checked, calibrated and quantised is this copy
        listed = _card_describes(card, src, copy.sha256) if card is not None else None
        ctx = SynthesisContext(copy.path, sidecar, resolve_device(device), cfg.input_norm)  # the sidecar: before work
        if listed is not None and ctx.sidecar_sha256 not in (None, listed.get("sidecar_sha256")):
            raise UsageError(f"{sidecar}: not the sidecar of the release in {card.parent} (the card names "
                             f"{listed.get('sidecar')!r}); pass that sidecar, or leave out {{list_in_card}}")
        proto = load_onnx(copy.path)
        input_name = ctx.teacher.input_names[0]
        calib = build_calibration(ctx, cfg, folder, data)
        say(f"calibration: {calib.describe()['calibration']}, {cfg.samples} inputs")
        float_proto, report, scales = proto, {}, {}
        if "equalise" in cfg.corrections:
            float_proto, eq, scales = equalise(proto)
            report.update(eq)
            say(f"equalised {len(eq['equalised_pairs'])} pairs of layers")
        quantised = _quantise(float_proto, calib, cfg, folder, input_name, "first")
        if "bias" in cfg.corrections:
            means, sources = _layer_means(ctx, calib, proto, scales)
            float_proto, bias = correct_bias(float_proto, quantised, means)
            report.update(bias, bias_means_from=sources)
            say(f"bias-corrected {len(bias['bias_corrected_layers'])} layers; quantising again")
            quantised = _quantise(float_proto, calib, cfg, folder, input_name, "corrected")
        record = {"tool": f"dfkd-meta {__version__}", "teacher_sha256": copy.sha256,
                  "sidecar_sha256": ctx.sidecar_sha256, **calib.describe(), "method": cfg.method,
                  "per_channel": cfg.per_channel, "corrections": list(cfg.corrections), "format": "QDQ",
                  "activations": "uint8", "weights": "int8"}
        keep = [p for p in proto.metadata_props if p.key != METADATA_KEY]  # the teacher's input convention stays
        del quantised.metadata_props[:]
        quantised.metadata_props.extend(keep)
        quantised.metadata_props.add(key=METADATA_KEY, value=json.dumps(record, sort_keys=True))
        try:
            onnx.checker.check_model(quantised)
        except Exception as exc:
            raise DfkdError(f"the INT8 model fails onnx.checker ({exc}); nothing was written") from None
        check = _agreement(quantised, ctx, calib)
        with atomic_path(out) as tmp:
            onnx.save(quantised, tmp)
            if card is not None:  # the card changes with the model: both or neither
                text = card_with_derived(card, derived_entry(Path(out).name, sha256_file(tmp), record),
                                         check["top1_agreement"])
                with atomic_path(card) as tmp_card:
                    tmp_card.write_text(text, encoding="utf-8")
    result = {"output": str(out), "teacher": str(model), "sidecar": str(sidecar) if sidecar else None,
              "settings": settings(cfg), "quantization": record, **report, "on_calibration_inputs": check,
              "float_bytes": model_bytes(src), "int8_bytes": Path(out).stat().st_size,
              "seconds": round(time.perf_counter() - t0, 2)}
    return QuantizeResult(Path(out), result)
