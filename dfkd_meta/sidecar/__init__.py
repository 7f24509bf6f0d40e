"""The sidecar file format (spec/SPEC.md): typed objects, writer, reader, validator."""
from .io import SidecarInvalidError, read_sidecar, write_sidecar
from .report import Finding, Report
from .types import (
                    ChannelStats,
                    ConventionRecord,
                    DatasetProvenance,
                    InputDomain,
                    LayerStats,
                    ModelBinding,
                    PrivacyBlock,
                    Sidecar,
                    SpectralStats,
                    TeacherCheck,
)
from .validator import validate

__all__ = ["ChannelStats", "ConventionRecord", "DatasetProvenance", "Finding", "InputDomain", "LayerStats",
           "ModelBinding", "PrivacyBlock", "Report", "Sidecar", "SidecarInvalidError", "SpectralStats", "TeacherCheck",
           "read_sidecar", "validate", "write_sidecar"]
