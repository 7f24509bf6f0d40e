"""The sidecar file format (spec/SPEC.md): typed objects, writer, reader, validator."""
from .io import SidecarInvalidError, read_sidecar, write_sidecar
from .types import (ChannelStats, DatasetProvenance, InputDomain, LayerStats, ModelBinding, PrivacyBlock, Sidecar,
                    SpectralStats)
from .validator import Finding, Report, validate

__all__ = ["ChannelStats", "DatasetProvenance", "Finding", "InputDomain", "LayerStats", "ModelBinding",
           "PrivacyBlock", "Report", "Sidecar", "SidecarInvalidError", "SpectralStats", "read_sidecar",
           "validate", "write_sidecar"]
