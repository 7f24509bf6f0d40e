"""The machine-readable schema is well-formed and agrees with SPEC.md and the code."""
from __future__ import annotations

import re

import jsonschema
import pytest
import yaml

from dfkd_meta.sidecar.schema import ATTR_KINDS, DATASET_DTYPES, SEVERITIES, load_schema, schema_path
from dfkd_meta.sidecar.types import FORMAT_VERSION, LEGACY_FORMAT_VERSION

from .conftest import ROOT, corpus_expectations

SPEC = (ROOT / "spec" / "SPEC.md").read_text()

RULE = {"type": "object", "additionalProperties": False,
        "required": ["section", "severity", "summary", "fix"],
        "properties": {"section": {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$"},
                       "severity": {"enum": list(SEVERITIES)},
                       "summary": {"type": "string", "minLength": 5}, "fix": {"type": "string", "minLength": 5}}}
FAMILY = {"type": "object", "additionalProperties": False, "required": ["missing", "dtype", "shape", "value"],
          "properties": {k: {"type": "string", "pattern": "^DM[0-9]{3}$"} for k in ["missing", "dtype", "shape", "value"]}}
ATTR = {"type": "object", "additionalProperties": False, "required": ["kind"],
        "properties": {"kind": {"enum": list(ATTR_KINDS)}, "required": {"type": "boolean"}, "enum": {"type": "array"},
                       "pattern": {"type": "string"}, "min": {"type": "number"}, "max": {"type": "number"},
                       "exclusive_min": {"type": "number"}, "exclusive_max": {"type": "number"},
                       "min_len": {"type": "integer"}, "max_len": {"type": "integer"}, "finite": {"type": "boolean"}}}
DATASET = {"type": "object", "additionalProperties": False, "required": ["dtype", "shape"],
           "properties": {"dtype": {"enum": list(DATASET_DTYPES)}, "required": {"type": "boolean"},
                          "shape": {"type": "array", "items": {"type": "string", "pattern": "^[A-Z]+$|^[0-9]+$"}},
                          "checks": {"type": "object", "propertyNames": {"enum": ["finite", "nonnegative", "bounded"]},
                                     "additionalProperties": {"type": "string", "pattern": "^DM[0-9]{3}$"}}}}
TYPE = {"type": "object", "additionalProperties": False, "required": ["version", "section", "rules"],
        "properties": {"version": {"type": "string", "pattern": r"^[0-9]+\.[0-9]+\.[0-9]+$"},
                       "section": {"type": "string"}, "rules": FAMILY,
                       "attrs": {"type": "object", "additionalProperties": ATTR},
                       "datasets": {"type": "object", "additionalProperties": DATASET},
                       "groups": {"type": "object", "additionalProperties": {
                           "type": "object", "additionalProperties": False, "required": ["type"],
                           "properties": {"type": {"type": "string"}, "required": {"type": "boolean"}}}},
                       "children": {"type": "object", "additionalProperties": False, "required": ["type", "name_pattern"],
                                    "properties": {"type": {"type": "string"}, "name_pattern": {"type": "string"}}},
                       "ignorable": {"type": "boolean"}}}
META_SCHEMA = {
    "type": "object", "additionalProperties": False,
    "required": ["format", "format_version", "limits", "allowed_filters", "rules", "types"],
    "properties": {
        "format": {"const": "dfkd-meta"},
        "format_version": {"type": "string", "pattern": r"^[0-9]+\.[0-9]+\.[0-9]+$"},
        "limits": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 1}},
        "allowed_filters": {"type": "object", "additionalProperties": {"type": "string"}},
        "rules": {"type": "object", "propertyNames": {"pattern": "^DM[0-9]{3}$"}, "additionalProperties": RULE},
        "types": {"type": "object", "additionalProperties": TYPE},
    },
}

# Rules the corpus cannot hold a file for, and where each is tested instead.
NOT_IN_CORPUS = {
    "DM103": "a libhdf5 crash: test_validate.py simulates one",
    "DM114": "reading past the CPU bound: test_read_limits.py (a spinning child; fixtures/repro's hang file)",
    "DM115": "reading past the memory bound: test_read_limits.py (a failed allocation; fixtures/repro's files)",
    "DM116": "a validation past its wall-clock limit: test_validate.py simulates one",
    "DM106": "h5py cannot create user-defined links",
    "DM199": "an internal validator failure: test_validate.py forces one",
    "DM901": "needs labelled data (validate --data): test_convention.py re-checks releases against digits",
    "DM902": "needs labelled data (validate --data): test_convention.py re-checks releases against digits",
    "DM903": "needs labelled data (validate --data): test_convention.py re-checks the frozen 1.0.0 release",
    "DM904": "needs labelled data (validate --data): test_convention.py re-checks a release made with the wrong convention",
    "DM951": "about a release folder, not a file: test_release_card.py (a folder without a card)",
    "DM952": "about a release folder's card: test_release_card.py (hostile cards, links, fifos, oversize)",
    "DM953": "about a release folder's card: test_release_card.py (a card contradicting its release)",
    "DM954": "about a release folder: test_release_card.py (stray files)",
    "DM955": "about a release folder's derived models: test_quantize.py (an INT8 model listed in the card)",
}


@pytest.fixture(scope="module")
def raw():
    return yaml.safe_load(schema_path().read_text())


def test_schema_matches_its_meta_schema(raw):
    jsonschema.validate(raw, META_SCHEMA)


def test_schema_version_is_the_format_version():
    assert load_schema().format_version == FORMAT_VERSION == "2.1.0"
    assert load_schema(1).format_version == LEGACY_FORMAT_VERSION == "1.1.0"


def test_the_2_x_schema_is_the_1_x_schema_plus_the_granularities_and_the_privacy_accounting():
    """What 2.0 changed (the layer element's granularity items, DM624, three warnings consumers refused made errors)
    and what 2.1 added (the privacy accounting group and its rules), and nothing else (SPEC Appendix B)."""
    old, new = load_schema(1), load_schema(2)
    assert set(new.rules) - set(old.rules) == {"DM624", "DM805", "DM806", "DM807"} and set(old.rules) <= set(new.rules)
    changed = {r for r in old.rules if old.rules[r].severity != new.rules[r].severity}
    assert changed == {"DM618", "DM619", "DM719"} and all(new.rules[r].severity == "error" for r in changed)
    assert set(new.types) - set(old.types) == {"privacy_accounting"} and new.types["privacy_accounting"].ignorable
    assert {t for t in old.types if new.types[t] != old.types[t]} == {"layer_stats", "privacy"}
    p, q = old.types["privacy"], new.types["privacy"]
    assert p.attrs == q.attrs and set(q.groups) - set(p.groups) == {"accounting"} and not q.groups["accounting"].required
    a, b = old.types["layer_stats"], new.types["layer_stats"]
    assert set(b.attrs) - set(a.attrs) == {"granularity"} and set(b.datasets) - set(a.datasets) == {"pooled_mean",
                                                                                                       "pooled_std"}
    assert b.major == 2 and not b.datasets["mean"].required and a.datasets["mean"].required


def test_every_rule_cites_an_existing_spec_section():
    headings = set(re.findall(r"^#{2,4} (?:Appendix )?([0-9]+(?:\.[0-9]+){0,2})\.? ", SPEC, flags=re.M))
    for rule in load_schema().rules.values():
        assert rule.section in headings, f"{rule.id} cites §{rule.section}, not a SPEC.md heading"
    for t in load_schema().types.values():
        assert t.section in headings, f"type {t.name} cites §{t.section}"


def test_spec_and_schema_name_the_same_rules():
    in_spec = set(re.findall(r"\bDM[0-9]{3}\b", SPEC))
    in_schema = set(load_schema().rules)
    # SPEC.md refers to families generically (DM30x, x01, ...); every concrete id it names exists.
    assert in_spec - in_schema == set()
    section_specific = {r for r in in_schema if int(r[-2:]) >= 10 or r[:3] in ("DM1", "DM2")}
    assert section_specific - in_spec == set(), "rules with their own meaning must be described in SPEC.md"


def test_type_families_and_references_resolve():
    s = load_schema()
    for t in s.types.values():
        assert set(t.rules.values()) <= set(s.rules), t.name
        for g in t.groups.values():
            assert g.type in s.types
        if t.children_type:
            assert t.children_type in s.types
        for d in t.datasets.values():
            assert set(d.checks.values()) <= set(s.rules)


def test_every_rule_the_code_uses_is_declared():
    used = set()
    for path in (ROOT / "dfkd_meta").rglob("*.py"):
        used |= set(re.findall(r"\"(DM[0-9]{3})\"", path.read_text()))
    assert used, "the validator names its rules"
    assert used - set(load_schema().rules) == set()


def test_every_rule_has_a_conformance_file_or_a_reason():
    covered = {r for e in corpus_expectations().values() for r in e["rules"]}
    generic = {r for t in load_schema().types.values() for r in t.rules.values()}
    specific = set(load_schema().rules) - generic
    missing = specific - covered - set(NOT_IN_CORPUS)
    assert not missing, f"rules without a conformance file: {sorted(missing)}"
    assert not (set(NOT_IN_CORPUS) & covered), "a rule listed as untestable is in the corpus: drop it from the list"
    # every family's generic rules are exercised at least once across the corpus
    for kind in ("missing", "dtype", "shape", "value"):
        assert {t.rules[kind] for t in load_schema().types.values()} & covered, kind


def test_corpus_has_at_least_twenty_invalid_files():
    invalid = [k for k in corpus_expectations() if k.startswith("invalid/")]
    assert len(invalid) >= 20
