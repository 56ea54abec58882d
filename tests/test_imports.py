"""Dependencies point one way: the package's modules, read as text (ast), import each other without a cycle.

Counted: every import a module holds — at its top level, in ``try`` blocks and ``if``s, and inside functions and
classes too — except those under ``if TYPE_CHECKING`` (annotations only; they never run). A function-level import
is still how a light process stays light (the server's front ends load neither torch nor triton), but it is a
dependency all the same: one that closes a cycle means two modules need each other, which is untangled by moving
the code to where it belongs (a shared helper into a lower module, a registry instead of a back-reference, a
function passed in), not by hiding the import. Imports by string (``importlib``) are not seen; none close a cycle.
The modules are every package pyproject lists (``[tool.setuptools]`` ``packages`` under ``package-dir``), so a new
package is covered once it is listed there."""

import ast
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


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


def _import_nodes(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement in ``tree``, at any depth, except under ``if TYPE_CHECKING`` (its ``else`` runs)."""
    found = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
        else:
            for child in ast.iter_child_nodes(node):
                visit(child)

    visit(tree)
    return found


def imported(name: str, path: Path, modules: dict) -> set[str]:
    """The package modules ``name`` (the module at ``path``) imports anywhere in it (see the module docstring)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in _import_nodes(ast.parse(path.read_text())):
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


def loop_through(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """One import loop inside a strongly connected ``component``: its first module, the shortest way back to it."""
    start, inside = component[0], set(component)
    paths, queue = {start: [start]}, [start]
    for v in queue:
        for w in sorted(graph[v] & inside):
            if w == start:
                return [*paths[v], start]
            if w not in paths:
                paths[w] = [*paths[v], w]
                queue.append(w)
    raise AssertionError(f"{component} is not strongly connected")


def describe(component: list[str], graph: dict[str, set[str]]) -> str:
    inside = set(component)
    edges = "; ".join(f"{m} → {', '.join(sorted(graph[m] & inside))}" for m in component)
    return f"{' → '.join(loop_through(component, graph))}  (all of its imports: {edges})"


def test_the_walker_sees_the_whole_package_and_finds_a_cycle():
    modules = package_modules()
    assert {"curvedit.api", "curvedit.service.server", "curvedit.kernels.edit", "curvedit.v1.latent_edit_pb2",
            "curvedit.service.studio"} <= set(modules)
    assert "curvedit.bundle" in imported("curvedit.api", modules["curvedit.api"], modules)
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert loop_through(["a", "b", "c"], graph) == ["a", "b", "c", "a"]


def test_the_walker_counts_imports_in_functions_and_not_those_for_type_checking(tmp_path):
    modules = {f"pkg.{m}": tmp_path / f"{m}.py" for m in ("a", "lazy", "typed", "fallback", "nested")}
    (tmp_path / "a.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from pkg import typed\nelse:\n    from pkg import fallback\n"
        "def f():\n    from pkg.lazy import thing\n"
        "class C:\n    def g(self):\n        try:\n            import pkg.nested\n        except ImportError:\n"
        "            pass\n")
    assert imported("pkg.a", tmp_path / "a.py", modules) == {"pkg.lazy", "pkg.fallback", "pkg.nested"}


def test_no_import_cycle_in_the_package():
    """Function-level imports included: ``curvedit.translation`` ↔ ``curvedit.api``, the model families ↔ their
    training modules and the rest that were untangled stay untangled."""
    modules = package_modules()
    graph = {name: imported(name, path, modules) for name, path in modules.items()}
    found = cycles(graph)
    assert not found, "import cycles (move the shared code down, do not hide the import in a function):\n" + \
        "\n".join(describe(component, graph) for component in found)
