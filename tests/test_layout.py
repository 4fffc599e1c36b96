"""The rules of the house that code review forgets: no import cycle, dialects stay in connectors,
small modules.

Read from the source with ``ast`` (nothing is imported), so a violation names
the file and line.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "domicile"
MAX_LINES = 600
DIALECT_NAMES = {"sqlite", "postgresql", "mysql", "mariadb"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _top_level_imports(path: Path, modules: dict[str, Path], name: str) -> set[str]:
    """Modules of domicile imported when *path* is imported (not in functions or TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If) and _is_type_checking(node):
                continue
            if isinstance(node, ast.If | ast.Try):
                visit(node.body)
                visit(getattr(node, "orelse", []))
                for h in getattr(node, "handlers", []):
                    visit(h.body)
                continue
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("domicile"):
                        found.add(a.name)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = package.split(".")
                    pkg = pkg[: len(pkg) - node.level + 1]
                    base = ".".join([*pkg, base] if base else pkg)
                if not base.startswith("domicile"):
                    continue
                for a in node.names:
                    full = f"{base}.{a.name}"
                    found.add(full if full in modules else base)

    visit(tree.body)
    return {m for m in found if m in modules and m != name}


def test_no_import_cycle():
    modules = _modules()
    graph = {n: _top_level_imports(p, modules, n) for n, p in modules.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                cycle = [*stack[stack.index(m) :], m]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if m not in state:
                dfs(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            dfs(n)


def test_no_dialect_name_compared_outside_connectors():
    offenders = []
    for path in SRC.rglob("*.py"):
        if "connectors" in path.relative_to(SRC).parts:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                for part in [node.left, *node.comparators]:
                    values = []
                    if isinstance(part, ast.Constant):
                        values = [part.value]
                    elif isinstance(part, ast.Tuple | ast.List | ast.Set):
                        values = [e.value for e in part.elts if isinstance(e, ast.Constant)]
                    if any(v in DIALECT_NAMES for v in values):
                        offenders.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert offenders == [], offenders


def test_modules_are_small():
    big = {
        str(p.relative_to(SRC)): n
        for p in SRC.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert big == {}, big
