"""An INT8 teacher without its data: ONNX Runtime's static quantisation (QDQ, per-channel weights),
calibrated on inputs made from the release's sidecar (calibration.py), with DFQ's corrections
(corrections.py) where they pay. ``quantize_release`` is what ``dfkd-meta quantize`` runs.
"""
from .calibration import CALIBRATIONS, build_calibration
from .quantize import QuantizeResult, quantize_release

__all__ = ["CALIBRATIONS", "QuantizeResult", "build_calibration", "quantize_release"]
