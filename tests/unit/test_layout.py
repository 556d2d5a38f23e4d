"""The package's layout: no import circle inside ``resilient/`` (docs/concepts/map.md).

Every import counts, at module level, inside functions and under
``TYPE_CHECKING`` alike: a circle a type checker needs is still a circle a
reader has to hold in their head.
"""

from __future__ import annotations

import ast
from pathlib import Path

import resilient

PACKAGE = Path(resilient.__file__).resolve().parent
ROOT = PACKAGE.parent


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``path`` imports (a name from a package counts as
    the submodule when there is one by that name)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
    return {m for m in found if m in known and m != name}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(path, set(found)) for name, path in found.items()}


def test_no_import_circle_inside_the_package() -> None:
    assert circles(graph()) == []


def test_the_check_finds_a_circle() -> None:
    made = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(made) == [["a", "b", "c"]]


def test_the_graph_sees_every_kind_of_import() -> None:
    g = graph()
    assert "resilient.guard" in g["resilient.breaker"]  # module level
    assert "resilient.guard" in g["resilient._decorators"]  # under TYPE_CHECKING
    assert "resilient.http._shared" in g["resilient.http._pipeline"]
    assert "resilient.http._pipeline" not in g["resilient.http._breaker"]  # the old circle


def test_the_map_names_every_module() -> None:
    """docs/concepts/map.md is kept true: each module of the package is on it."""
    text = (ROOT / "docs" / "concepts" / "map.md").read_text()
    missing = [
        name
        for name, path in modules().items()
        if path.name != "__init__.py" and f"`{path.relative_to(PACKAGE).as_posix()}`" not in text
    ]
    assert missing == []
