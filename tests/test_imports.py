"""Dependencies point one way: the package's modules, read as text (ast), import each other without a cycle.

Counted: the imports a module runs when it is imported (its top level, `try` blocks and `if`s, not `if
TYPE_CHECKING`), which is what makes an import cycle fail or half-initialise a module. Imports inside functions
are lazy on purpose (torch kept out of light commands) and are not counted, except where a cycle was untangled by
moving code to where it belongs: those pairs must not come back even as a local import."""

import ast
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
# (importer, imported) that must not appear at any level: resolved by where the code lives, not by a local import.
NEVER = [("curvedit.translation", "curvedit.api")]


def package_modules() -> dict[str, Path]:
    """Every module of the installed package, by name, from pyproject's package-dir and packages."""
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = setup["package-dir"]
    modules = {}
    for package in setup["packages"]:
        base = max((p for p in dirs if package == p or package.startswith(p + ".")), key=len)
        folder = ROOT / dirs[base] / package[len(base):].lstrip(".").replace(".", "/")
        for path in folder.glob("*.py"):
            modules[package if path.name == "__init__.py" else f"{package}.{path.stem}"] = path
    return modules


def _runs_at_import(tree: ast.Module) -> list[ast.stmt]:
    found = []

    def visit(body):
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found.append(node)
            elif isinstance(node, ast.If):
                if "TYPE_CHECKING" not in ast.unparse(node.test):
                    visit(node.body)
                    visit(node.orelse)
            elif isinstance(node, ast.Try):
                for part in (node.body, *(h.body for h in node.handlers), node.orelse, node.finalbody):
                    visit(part)

    visit(tree.body)
    return found


def imported(name: str, path: Path, modules: dict, everywhere: bool = False) -> set[str]:
    """The package modules ``name`` imports (when it is imported; ``everywhere``: functions' imports too)."""
    tree = ast.parse(path.read_text())
    nodes = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))] if everywhere \
        else _runs_at_import(tree)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        out |= {t for t in targets if t in modules and t != name}
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return found


def test_the_walker_sees_the_whole_package_and_finds_a_cycle():
    modules = package_modules()
    assert {"curvedit.api", "curvedit.service.server", "curvedit.kernels.edit", "curvedit.v1.latent_edit_pb2",
            "curvedit.service.studio"} <= set(modules)
    assert "curvedit.bundle" in imported("curvedit.api", modules["curvedit.api"], modules)
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_in_the_package():
    modules = package_modules()
    graph = {name: imported(name, path, modules) for name, path in modules.items()}
    assert cycles(graph) == []


def test_untangled_pairs_stay_untangled():
    modules = package_modules()
    for importer, target in NEVER:
        assert target not in imported(importer, modules[importer], modules, everywhere=True), \
            f"{importer} imports {target} again (even locally): they were a cycle"
