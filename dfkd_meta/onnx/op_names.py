"""Which ONNX ops the torch runner implements, known without importing torch.

`inspect` is a metadata command and must stay fast and torch-free, so the names are read from the
op modules' source: every ``op("Name", ...)`` call with literal names (the registry's only form of
registration; a test checks that this set equals the imported registry).
"""
from __future__ import annotations

import ast
import functools
from pathlib import Path

OPS_DIR = Path(__file__).with_name("ops")
DEFAULT_DOMAINS = ("", "ai.onnx")


@functools.cache
def supported_ops() -> frozenset[str]:
    names: set[str] = set()
    for source in sorted(OPS_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "op":
                names.update(a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str))
    return frozenset(names)


def is_supported(op_type: str, domain: str = "") -> bool:
    return domain in DEFAULT_DOMAINS and op_type in supported_ops()
