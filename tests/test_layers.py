"""The package layers import one way: core <- domains <- platform <- adapters <- orchestration <- cli."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "mdctr"
ORDER = ["core", "domains", "platform", "adapters", "orchestration", "cli"]


def _imported_layers(path: Path) -> set[str]:
    layers = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "mdctr" and len(parts) > 1 and parts[1] in ORDER:
                layers.add(parts[1])
    return layers


@pytest.mark.parametrize("layer", ORDER)
def test_a_layer_imports_only_itself_and_the_layers_below(layer):
    allowed = set(ORDER[: ORDER.index(layer) + 1])
    bad = {str(p.relative_to(ROOT)): sorted(_imported_layers(p) - allowed)
           for p in (ROOT / layer).rglob("*.py") if _imported_layers(p) - allowed}
    assert bad == {}, f"{layer} imports layers above it: {bad}"


def test_nothing_imports_the_tests():
    offenders = [str(p) for p in ROOT.rglob("*.py") if "tests" in {n.split(".")[0] for n in _all_imports(p)}]
    assert offenders == []


def _all_imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out
