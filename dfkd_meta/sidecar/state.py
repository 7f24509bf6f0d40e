"""The state one validation run shares between its parts: the open file, what the scan found, the
values that passed the structural checks, and the findings so far."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py

from .limits import ReadBounds
from .report import Finding
from .schema import Schema


class Fatal(Exception):
    """Stop validating: reading further would be unsafe or meaningless."""


@dataclass
class ValidationState:
    schema: Schema
    path: Path
    model: Path | None = None
    findings: list[Finding] = field(default_factory=list)
    file: h5py.File | None = None
    kinds: dict[str, str] = field(default_factory=dict)  # path -> group | dataset | link | other (from the scan)
    children: dict[str, list[str]] = field(default_factory=dict)  # group path -> child names
    tainted: set[str] = field(default_factory=set)  # datasets / attributes whose values must not be read
    values: dict[str, dict[str, Any]] = field(default_factory=dict)  # group path -> its attributes that passed
    types: dict[str, str] = field(default_factory=dict)  # group path -> the element type it was checked as
    global_symbols: dict[str, int] = field(default_factory=dict)  # shape symbols valid everywhere (C)
    datasets: dict[str, h5py.Dataset] = field(default_factory=dict)  # dataset path -> dataset that passed
    where: str = "/"  # the item being read, for DM102/DM199 findings
    bounds: ReadBounds | None = None  # CPU and memory bounds on the reading (in the child process)

    def add(self, rule: str, path: str, message: str) -> None:
        r = self.schema.rules[rule]
        self.findings.append(Finding(r.severity, rule, r.section, path, message, r.fix))

    def fatal(self, rule: str, path: str, message: str) -> None:
        self.add(rule, path, message)
        raise Fatal

    def errors_under(self, prefix: str) -> bool:
        return any(f.severity == "error" and f.path.startswith(prefix) for f in self.findings)

    def group_values(self, path: str) -> dict[str, Any]:
        """The checked attributes of the group at ``path`` ({} when it is absent or was not checked)."""
        return self.values.get(path) or {}

    def children_of_type(self, path: str, type_name: str) -> dict[str, str]:
        """Child name -> path of the checked child groups of ``path`` of type ``type_name``."""
        out = {}
        for name in self.children.get(path, []):
            child = f"{path.rstrip('/')}/{name}"
            if self.types.get(child) == type_name:
                out[name] = child
        return out


@dataclass
class GroupContext:
    """What a semantic rule sees of one group, after its structure (and its subgroups') was checked."""

    state: ValidationState
    path: str
    type_name: str
    attrs: dict[str, Any]  # validated attribute values; None where invalid or absent
    datasets: dict[str, h5py.Dataset | None]  # datasets that passed dtype and shape checks
    groups: dict[str, dict | None]  # subgroup name -> its validated attributes
    children: dict[str, dict | None]  # list children name -> validated attributes
    symbols: dict[str, int | None]
    rule: str = ""  # the rule being checked (set by the rule registry)

    def report(self, path: str, message: str) -> None:
        """Add a finding of this context's rule."""
        self.state.add(self.rule, path, message)
