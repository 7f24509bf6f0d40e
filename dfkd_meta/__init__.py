"""dfkd-meta: data-free knowledge distillation from model-release metadata.

The package imports lazily: ``import dfkd_meta`` loads neither torch nor h5py until a name
that needs them is used.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    # the file format
    "Sidecar": "sidecar", "ModelBinding": "sidecar", "InputDomain": "sidecar", "DatasetProvenance": "sidecar",
    "LayerStats": "sidecar", "ChannelStats": "sidecar", "SpectralStats": "sidecar", "PrivacyBlock": "sidecar",
    "Finding": "sidecar", "Report": "sidecar", "SidecarInvalidError": "sidecar",
    "read_sidecar": "sidecar", "write_sidecar": "sidecar", "validate": "sidecar",
    "validate_release": "sidecar.release",
    "model_binding": "sidecar.binding",
    # errors
    "DfkdError": "errors", "UsageError": "errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'dfkd_meta' has no attribute {name!r}")
