"""The package's modules follow the pipeline: no import cycle, no import up the layers, no private names
imported across modules, no module much longer than 500 lines."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from .conftest import ROOT

PACKAGE = ROOT / "dfkd_meta"
CLI = ROOT / "cli"  # installed as dfkd_meta.cli
MAX_LINES = 520  # "about 500"

# Bottom to top. A module may import its own layer and the layers below it, never above.
LAYERS = [
    ("base", ["dfkd_meta", "dfkd_meta.errors", "dfkd_meta.fileio", "dfkd_meta.device", "dfkd_meta.dist",
              "dfkd_meta.privacy", "dfkd_meta.convention", "dfkd_meta.plotting", "dfkd_meta.progress", "dfkd_meta.assets"]),
    ("teacher", ["dfkd_meta.onnx", "dfkd_meta.models"]),
    ("formats and data", ["dfkd_meta.sidecar", "dfkd_meta.transfer", "dfkd_meta.data"]),
    ("publisher", ["dfkd_meta.train", "dfkd_meta.stats"]),
    ("consumer", ["dfkd_meta.reconstruct", "dfkd_meta.synthesis"]),
    ("consumer products", ["dfkd_meta.distill", "dfkd_meta.quantize", "dfkd_meta.audit"]),
    ("application", ["dfkd_meta.demo", "dfkd_meta.cli"]),
]


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[0] == "cli":
        parts = ["dfkd_meta", *parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted([*PACKAGE.rglob("*.py"), *CLI.rglob("*.py")])}


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
    return ".".join(base + ([node.module] if node.module else []))


def _imports(modules: dict[str, Path]) -> dict[str, set[tuple[str, str | None]]]:
    """module -> {(imported module, imported name or None)} for imports of dfkd_meta, lazy ones included."""
    out: dict[str, set[tuple[str, str | None]]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        found: set[tuple[str, str | None]] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found |= {(a.name, None) for a in node.names if a.name.startswith("dfkd_meta")}
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(name, path.name == "__init__.py", node)
                if not target.startswith("dfkd_meta"):
                    continue
                for a in node.names:
                    sub = f"{target}.{a.name}"
                    found.add((sub, None) if sub in modules else (target, a.name))
        out[name] = found
    return out


def _layer(module: str) -> int:
    best, depth = None, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > depth:
                best, depth = i, len(p)
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best


@pytest.fixture(scope="module")
def graph():
    modules = _modules()
    return modules, _imports(modules)


def test_every_module_has_a_layer(graph):
    modules, _ = graph
    for m in modules:
        _layer(m)


def test_every_import_of_the_package_resolves(graph):
    """Lazy imports inside functions too: a broken one would only fail when that path runs."""
    modules, imports = graph
    missing = [f"{m} imports {t}" for m, targets in imports.items() for t, _ in targets if t not in modules]
    assert missing == []


def test_no_import_runs_up_the_layers(graph):
    _, imports = graph
    bad = [f"{m} ({LAYERS[_layer(m)][0]}) imports {t} ({LAYERS[_layer(t)][0]})"
           for m, targets in imports.items() for t, _ in targets if _layer(t) > _layer(m)]
    assert bad == []


def test_no_import_cycles(graph):
    modules, imports = graph
    edges = {m: {t for t, _ in targets if t in modules and t != m} for m, targets in imports.items()}
    # a package's __init__ re-exporting its submodules is not a cycle with them
    edges = {m: {t for t in ts if not (m.startswith(t + ".") and t in edges and
                                       Path(modules[t]).name == "__init__.py")} for m, ts in edges.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in sorted(edges.get(m, ())):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)
    assert cycles == []


def test_no_private_names_imported_across_modules(graph):
    _, imports = graph
    bad = [f"{m} imports {name} from {t}" for m, targets in imports.items() for t, name in targets
           if name and name.startswith("_") and not name.startswith("__") and t != m]
    assert bad == []


def test_no_module_is_much_longer_than_500_lines(graph):
    modules, _ = graph
    long = {m: n for m, p in modules.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_only_the_main_process_writes(tmp_path, monkeypatch):
    """Every writer goes through the main-process gate: on another rank nothing is written."""
    from dfkd_meta import dist
    from dfkd_meta.fileio import atomic_path
    from dfkd_meta.sidecar import write_sidecar
    from dfkd_meta.transfer import TransferWriter

    from .sidecar_factory import full_example

    assert dist.rank() == 0 and dist.world_size() == 1 and dist.is_main_process()
    monkeypatch.setattr(dist, "rank", lambda: 1)
    with pytest.raises(RuntimeError, match="only the main process"):
        with atomic_path(tmp_path / "x.txt") as tmp:
            tmp.write_text("x")
    with pytest.raises(RuntimeError, match="only the main process"):
        write_sidecar(full_example(), tmp_path / "s.dfkd.h5")
    with pytest.raises(RuntimeError, match="only the main process"):
        TransferWriter(tmp_path / "t.h5", input_shape=(2,), num_classes=2, temperature=1.0, provenance={},
                       input_domain={"layout": "NC", "norm_mean": [0.0], "norm_std": [1.0]})
    assert list(tmp_path.iterdir()) == []


def test_dist_seams_are_no_ops_in_one_process():
    import torch

    from dfkd_meta import dist

    t = torch.tensor([1.0, 2.0])
    assert dist.all_reduce(t, "mean") is t and t.tolist() == [1.0, 2.0]
    dist.barrier()
    with dist.main_process_first() as main:
        assert main
    with pytest.raises(ValueError, match="all_reduce op"):
        dist.all_reduce(t, "prod")
