"""The layering (docs/ARCHITECTURE.md): `schemas` <- `streams` <- `sinks` <- `ops`.

An import only ever points to its own layer or one below, and no modules import each other
in a circle. A plain AST walk over every module, lazy imports inside functions included.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAYERS = {"schemas": 0, "streams": 1, "sinks": 2, "ops": 3}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of a project module in `path`."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        out += [(node.lineno, name) for name in names if name.split(".")[0] in LAYERS]
    return out


def graph() -> tuple[dict[str, set[str]], dict[str, list[tuple[int, str]]]]:
    modules = {module_name(p): p for layer in LAYERS for p in (ROOT / layer).rglob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in modules}
    raw: dict[str, list[tuple[int, str]]] = {}
    for name, path in modules.items():
        raw[name] = project_imports(path)
        for _line, target in raw[name]:
            if target in modules and target != name:
                edges[name].add(target)
    return edges, raw


def upward_imports(raw: dict[str, list[tuple[int, str]]]) -> list[str]:
    found = []
    for name, imports in raw.items():
        for line, target in imports:
            if LAYERS[target.split(".")[0]] > LAYERS[name.split(".")[0]]:
                found.append(f"{name.replace('.', '/')}.py:{line} imports {target}")
    return sorted(set(found))


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_every_import_points_to_its_own_layer_or_below() -> None:
    assert upward_imports(graph()[1]) == []


def test_no_modules_import_each_other_in_a_circle() -> None:
    assert circles(graph()[0]) == []


def test_the_check_sees_an_upward_import_and_a_circle(tmp_path: Path) -> None:
    """The checks above could fail: they find what they look for, lazy imports included."""
    sample = tmp_path / "sample.py"
    sample.write_text("import json\nfrom schemas.money import usd_to_nanos\n\ndef f():\n    from ops.cli import main\n")
    imports = project_imports(sample)
    assert imports == [(2, "schemas.money"), (2, "schemas.money.usd_to_nanos"), (5, "ops.cli"), (5, "ops.cli.main")]
    assert upward_imports({"streams.sample": imports}) == ["streams/sample.py:5 imports ops.cli",
                                                         "streams/sample.py:5 imports ops.cli.main"]
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
