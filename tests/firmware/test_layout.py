"""The device runtime's layout (docs/architecture.md): no module imports one
that imports it back, even through others or on demand inside a function,
and none reaches into another module's private names."""

from __future__ import annotations

import ast
from pathlib import Path

from gateway.paths import firmware_dir

PB = firmware_dir() / "pb"

# a method that copies another object of its own class (sha512.copy)
# (a name that holds an instance or the base of the class the code is in)
SAME_CLASS = {("pb.ota.sha512", "other"), ("pb.net.tls", "Plain")}


def _name(path: Path) -> str:
    parts = list(path.relative_to(PB.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in PB.rglob("*.py")}


def _imports(name: str, tree: ast.AST) -> set[str]:
    """The runtime modules name imports, at the top or inside a function."""
    package = name if MODULES[name].name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                full = target + "." + alias.name
                out.add(full if full in MODULES else target)
        elif isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
    return {m for m in out if m in MODULES and m != name}


def _graph() -> dict[str, set[str]]:
    return {name: _imports(name, ast.parse(path.read_text())) for name, path in MODULES.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of graph, or None."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        for dep in sorted(graph[node]):
            found = visit(dep, [*path, node])
            if found:
                return found
        done.add(node)
        return None

    for start in sorted(graph):
        found = visit(start, [])
        if found:
            return found
    return None


def test_the_runtime_has_no_import_cycles() -> None:
    graph = _graph()
    assert "pb.ota.download" in graph["pb.ota.session"]  # (the graph is read as meant)
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_one() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def _private_uses(name: str, tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            found += [f"imports {a.name}" for a in node.names if _private(a.name)]
        elif isinstance(node, ast.Attribute) and _private(node.attr):
            owner = node.value.id if isinstance(node.value, ast.Name) else None
            if owner not in ("self", "cls") and (name, owner) not in SAME_CLASS:
                found.append(ast.unparse(node))
    return found


def _private(attr: str) -> bool:
    return attr.startswith("_") and not attr.startswith("__")


def test_no_module_uses_another_ones_private_names() -> None:
    used = {}
    for name, path in MODULES.items():
        found = _private_uses(name, ast.parse(path.read_text()))
        if found:
            used[name] = found
    assert used == {}
    assert _private_uses("pb.x", ast.parse("from .y import _z\nhost._save()\nself._ok = 1")) == [
        "imports _z",
        "host._save",
    ]
