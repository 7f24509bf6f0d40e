"""The sidecar file format (spec/SPEC.md): typed objects, writer, reader, validator."""
from .io import CheckedSidecar, SidecarInvalidError, open_sidecar, read_sidecar, write_sidecar
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

__all__ = ["CheckedSidecar", "ChannelStats", "ConventionRecord", "DatasetProvenance", "Finding", "InputDomain", "LayerStats",
           "ModelBinding", "PrivacyBlock", "Report", "Sidecar", "SidecarInvalidError", "SpectralStats", "TeacherCheck",
           "open_sidecar", "read_sidecar", "validate", "write_sidecar"]
