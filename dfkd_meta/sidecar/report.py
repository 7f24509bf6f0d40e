"""What validation produces: findings (rule id, SPEC section, path, message, fix) and the report."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..errors import shown
from .schema import Schema, schema_or_default

SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}


@dataclass(frozen=True)
class Finding:
    severity: str
    rule: str
    section: str
    path: str
    message: str
    fix: str = ""

    def __post_init__(self) -> None:
        # paths and messages quote names and values from an untrusted file: never raw control characters
        object.__setattr__(self, "path", shown(self.path))
        object.__setattr__(self, "message", shown(self.message))

    def format(self) -> str:
        return f"{self.severity.upper():7} {self.rule} (SPEC §{self.section}) {self.path}: {self.message}"


def finding(rule: str, path: str, message: str, schema: Schema | None = None) -> Finding:
    """A finding of ``rule``, with its severity, section and fix from the schema's rule table."""
    r = schema_or_default(schema).rules[rule]
    return Finding(r.severity, r.id, r.section, path, message, r.fix)


@dataclass
class Report:
    file: str
    model: str | None = None
    findings: list[Finding] = field(default_factory=list)
    sha256: str | None = None  # of the bytes checked (isolated validation copies the file once, then reads the copy)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def valid(self) -> bool:
        return not self.errors

    @property
    def rules(self) -> set[str]:
        return {f.rule for f in self.findings}

    def sort(self) -> None:
        self.findings.sort(key=lambda x: SEVERITY_ORDER[x.severity])

    def summary(self) -> str:
        status = "valid" if self.valid else "INVALID"
        info = len(self.findings) - len(self.errors) - len(self.warnings)
        return (f"{self.file}: {status} ({len(self.errors)} errors, {len(self.warnings)} warnings, "
                f"{info} notes)")

    def to_dict(self) -> dict:
        return {"file": self.file, "model": self.model, "valid": self.valid, "sha256": self.sha256,
                "findings": [asdict(f) for f in self.findings]}

    @classmethod
    def from_dict(cls, d: dict) -> Report:
        return cls(file=d["file"], model=d.get("model"), findings=[Finding(**f) for f in d["findings"]],
                   sha256=d.get("sha256"))
