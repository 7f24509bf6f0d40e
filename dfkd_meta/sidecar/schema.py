"""Load the machine-readable schemas (spec/dfkd-meta-<MAJOR>.0.schema.yaml) into typed objects.

One schema per format MAJOR (SPEC §2): the newest drives the writer for files that need it and the
validator's defaults; a file of an older MAJOR this package still reads is checked against its own.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

SCHEMA_FILES = {1: "dfkd-meta-1.0.schema.yaml", 2: "dfkd-meta-2.0.schema.yaml"}  # format MAJOR -> its schema
CURRENT_MAJOR = max(SCHEMA_FILES)
SEVERITIES = ("error", "warning", "info")
ATTR_KINDS = ("str", "int", "float", "str_list", "int_list", "float_list")
DATASET_DTYPES = ("float32", "float64", "int64", "str")


@dataclass(frozen=True)
class Rule:
    id: str
    section: str
    severity: str
    summary: str
    fix: str


@dataclass(frozen=True)
class AttrSpec:
    name: str
    kind: str
    required: bool = True
    enum: tuple | None = None
    pattern: re.Pattern | None = None
    min: float | None = None
    max: float | None = None
    exclusive_min: float | None = None
    exclusive_max: float | None = None
    min_len: int | None = None
    max_len: int | None = None
    finite: bool = False


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    dtype: str
    shape: tuple[str, ...]
    required: bool = True
    checks: dict[str, str] = field(default_factory=dict)  # check name -> rule id


@dataclass(frozen=True)
class GroupRef:
    name: str
    type: str
    required: bool = True


@dataclass(frozen=True)
class TypeSpec:
    name: str
    version: str
    section: str
    rules: dict[str, str]  # missing / dtype / shape / value -> rule id
    attrs: dict[str, AttrSpec]
    datasets: dict[str, DatasetSpec]
    groups: dict[str, GroupRef]
    children_type: str | None = None
    children_pattern: re.Pattern | None = None
    ignorable: bool = False  # added by a MINOR version: writers mark its groups dfkd_ignorable=1 (SPEC §2)

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    @property
    def minor(self) -> int:
        return int(self.version.split(".")[1])


@dataclass(frozen=True)
class Schema:
    format: str
    format_version: str
    limits: dict[str, int]
    allowed_filters: dict[int, str]
    rules: dict[str, Rule]
    types: dict[str, TypeSpec]
    raw: dict[str, Any]

    @property
    def format_major(self) -> int:
        return int(self.format_version.split(".")[0])

    @property
    def format_minor(self) -> int:
        return int(self.format_version.split(".")[1])


def schema_path(major: int = CURRENT_MAJOR) -> Path:
    """The schema file of format ``major``: installed package data, else the source checkout's spec/ folder."""
    name = SCHEMA_FILES[major]
    try:
        p = resources.files("dfkd_meta.spec") / name
        if p.is_file():
            return Path(str(p))
    except ModuleNotFoundError:
        pass
    return Path(__file__).resolve().parents[2] / "spec" / name


def _attr(name: str, d: dict) -> AttrSpec:
    d = dict(d)
    pattern = d.pop("pattern", None)
    enum = d.pop("enum", None)
    return AttrSpec(name=name, pattern=re.compile(pattern) if pattern else None,
                    enum=tuple(enum) if enum is not None else None, **d)


def _type(name: str, d: dict) -> TypeSpec:
    children = d.get("children")
    return TypeSpec(
        name=name,
        version=str(d["version"]),
        section=str(d["section"]),
        rules=dict(d["rules"]),
        attrs={k: _attr(k, v) for k, v in (d.get("attrs") or {}).items()},
        datasets={k: DatasetSpec(name=k, dtype=v["dtype"], shape=tuple(str(s) for s in v["shape"]),
                                 required=v.get("required", True), checks=dict(v.get("checks", {})))
                  for k, v in (d.get("datasets") or {}).items()},
        groups={k: GroupRef(name=k, type=v["type"], required=v.get("required", True))
                for k, v in (d.get("groups") or {}).items()},
        children_type=children["type"] if children else None,
        children_pattern=re.compile(children["name_pattern"]) if children else None,
        ignorable=bool(d.get("ignorable", False)),
    )


def parse_schema(raw: dict) -> Schema:
    return Schema(
        format=raw["format"],
        format_version=str(raw["format_version"]),
        limits={k: int(v) for k, v in raw["limits"].items()},
        allowed_filters={int(k): v for k, v in raw["allowed_filters"].items()},
        rules={k: Rule(id=k, section=str(v["section"]), severity=v["severity"],
                       summary=v["summary"], fix=v["fix"]) for k, v in raw["rules"].items()},
        types={k: _type(k, v) for k, v in raw["types"].items()},
        raw=raw,
    )


def load_schema(major: int = CURRENT_MAJOR) -> Schema:
    """The schema of format ``major`` (default: the newest) the validator, the writer and the reader run on
    (parsed once per process: the same object on every call)."""
    return _load(major)


@functools.cache
def _load(major: int) -> Schema:
    with open(schema_path(major), encoding="utf-8") as f:
        return parse_schema(yaml.safe_load(f))


def package_schema_for(major: int) -> Schema | None:
    """The package's schema of format ``major``, or None when this package does not implement it."""
    return load_schema(major) if major in SCHEMA_FILES else None


def is_package_schema(schema: Schema) -> bool:
    return any(schema is load_schema(m) for m in SCHEMA_FILES)


def schema_or_default(schema: Schema | None) -> Schema:
    return load_schema() if schema is None else schema
