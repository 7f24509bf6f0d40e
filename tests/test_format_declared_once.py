"""The format is declared once: an item added to the schema (and its dataclass) is written, read back,
validated and shown with no other code change."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import yaml

from dfkd_meta.sidecar import read_sidecar, validate, write_sidecar
from dfkd_meta.sidecar.io import SidecarInvalidError
from dfkd_meta.sidecar.schema import parse_schema, schema_path
from dfkd_meta.sidecar.summary import describe, format_summary
from dfkd_meta.sidecar.types import ELEMENTS, DatasetProvenance, LayerStats

from .sidecar_factory import full_example


def _extended():
    """A copy of the schema with two new optional items, and dataclasses that carry them."""
    raw = yaml.safe_load(schema_path().read_text())
    raw["types"]["dataset_provenance"]["attrs"]["collection_period"] = {"kind": "str", "required": False,
                                                                         "min_len": 1}
    raw["types"]["layer_stats"]["datasets"]["median"] = {"dtype": "float32", "shape": ["C", "U"], "required": False,
                                                         "checks": {"finite": "DM611"}}
    schema = parse_schema(raw)
    dataset_cls = dataclasses.make_dataclass("DatasetProvenance", [("collection_period", str | None, None)],
                                             bases=(DatasetProvenance,))
    layer_cls = dataclasses.make_dataclass("LayerStats", [("median", np.ndarray | None, None)], bases=(LayerStats,))
    registry = {**ELEMENTS,
                "dataset_provenance": dataclasses.replace(ELEMENTS["dataset_provenance"], cls=dataset_cls),
                "layer_stats": dataclasses.replace(ELEMENTS["layer_stats"], cls=layer_cls)}
    sc = full_example()
    sc.format_version = schema.format_version  # the extended schema is the newest one's copy
    sc.dataset = dataset_cls(**{f.name: getattr(sc.dataset, f.name) for f in dataclasses.fields(sc.dataset)},
                             collection_period="2025-01/2025-06")
    sc.layers = [layer_cls(**{f.name: getattr(x, f.name) for f in dataclasses.fields(x)},
                           median=x.mean + np.float32(0.5)) for x in sc.layers]
    return schema, registry, sc


def test_an_item_added_to_the_schema_is_written_read_validated_and_shown(tmp_path):
    schema, registry, sc = _extended()
    path = write_sidecar(sc, tmp_path / "x.dfkd.h5", schema=schema, registry=registry)
    back = read_sidecar(path, isolate=False, schema=schema, registry=registry)
    assert back.dataset.collection_period == "2025-01/2025-06"
    for x, y in zip(sorted(back.layers, key=lambda x: x.key), sorted(sc.layers, key=lambda x: x.key), strict=True):
        assert x.median.dtype == np.float32 and np.array_equal(x.median, y.median)
    assert validate(path, isolate=False, schema=schema).valid
    info = describe(back, path, schema=schema, registry=registry)
    assert info["dataset"]["collection_period"] == "2025-01/2025-06"
    assert "median" in info["layers"][0]
    text = format_summary(info, schema)
    assert "also: collection_period=2025-01/2025-06" in text and "also: median=" in text
    # the new item's declaration drives the checks too: its value constraint and its finite check
    sc.layers[0].median[0, 0] = np.nan
    with pytest.raises(SidecarInvalidError, match="DM611 /layers/conv/median"):
        write_sidecar(sc, tmp_path / "nan.dfkd.h5", schema=schema, registry=registry)
    sc.layers[0].median[0, 0] = 0.0
    sc.dataset.collection_period = ""
    with pytest.raises(SidecarInvalidError, match="DM504 /dataset@collection_period"):
        write_sidecar(sc, tmp_path / "empty.dfkd.h5", schema=schema, registry=registry)
    # the package's own schema does not know the items: not marked ignorable, they are refused
    assert {"DM205"} <= validate(path, isolate=False).rules


def test_every_dataclass_field_is_a_schema_item():
    """The registry and the schema describe the same items: nothing is written by hand elsewhere."""
    from dfkd_meta.sidecar.schema import load_schema

    schema = load_schema()
    for name, el in ELEMENTS.items():
        spec = schema.types[name]
        items = set(spec.attrs) | set(spec.datasets) | set(spec.groups)
        paired = {i for pair in el.pairs.values() for i in pair}
        for f in dataclasses.fields(el.cls):
            if f.name == el.key or f.name in el.pairs:
                continue
            item = next((i for i, n in el.renamed.items() if n == f.name), f.name)
            assert item in items, f"{el.cls.__name__}.{f.name} is not an item of schema type {name}"
        covered = {next((i for i, n in el.renamed.items() if n == f.name), f.name)
                   for f in dataclasses.fields(el.cls)} | paired | set(el.constants)
        assert items - covered == set(), f"schema items of {name} without a field: {items - covered}"
    list_types = {n for n, t in schema.types.items() if t.children_type}
    assert set(schema.types) - set(ELEMENTS) == list_types  # list types are fields of their parent
