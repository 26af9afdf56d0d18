"""The engine's layout holds: no module imports another that imports it back (directly or through others), in the
library or in the SDK; `Request` depends on nothing else of the engine; no engine file grows past ~300 lines."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"lighthouse": ROOT / "lighthouse", "lighthouse_client": ROOT / "clients/python/lighthouse_client"}
MAX_ENGINE_FILE_LINES = 310  # "about 300"


def _module_name(package: str, path: Path) -> str:
    parts = path.relative_to(PACKAGES[package]).with_suffix("").parts
    return ".".join((package, *parts)).removesuffix(".__init__")


def _resolve(package: str, module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")[: -node.level] if not module.endswith("__init__") else module.split(".")
    return ".".join(base + ([node.module] if node.module else []))


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def import_graph(package: str, *, annotations: bool = True) -> dict[str, set[str]]:
    """module -> the package's modules it imports (anywhere in it, functions included; with `annotations=False`,
    not those under `if TYPE_CHECKING:`). `from pkg import name` counts pkg.name when that is a module, else pkg."""
    files = {_module_name(package, p): p for p in PACKAGES[package].rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text())
        skip = set() if annotations else {id(n) for top in ast.walk(tree) if _type_checking_only(top)
                                          for n in ast.walk(top)}
        deps: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                where = _resolve(package, module + (".__init__" if is_package else ""), node)
                deps |= {f"{where}.{a.name}" if f"{where}.{a.name}" in files else where for a in node.names}
        graph[module] = {d for d in deps if d in files and d != module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles: strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _without_package_inits(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """A package's __init__ re-exporting its submodules is not a circle with them (Python loads the package first)."""
    return {m: {d for d in deps if not (m.startswith(d + ".") and d in graph)} for m, deps in graph.items()}


@pytest.mark.parametrize("package", ["lighthouse", "lighthouse_client"])
def test_no_module_imports_one_that_imports_it_back(package):
    """Annotation-only imports count too: a circle through them is still two modules that need each other."""
    graph = _without_package_inits(import_graph(package.split(".")[0]))
    graph = {m: {d for d in deps if d.startswith(package)} for m, deps in graph.items() if m.startswith(package)}
    assert cycles(graph) == []


def test_the_circle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_a_request_imports_nothing_else_of_the_engine():
    code = ("import sys, lighthouse.engine.request as r; "
            "print(sorted(m for m in sys.modules if m.startswith('lighthouse.engine.') and m != r.__name__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    # importing a submodule runs lighthouse/engine/__init__.py first; its own imports are the package's, not request's
    package_init = {"lighthouse.engine.config", "lighthouse.engine.errors", "lighthouse.engine.options",
                    "lighthouse.engine.sampling"}
    assert set(eval(out.stdout)) <= package_init
    assert import_graph("lighthouse", annotations=False)["lighthouse.engine.request"] == set()


def test_no_engine_file_is_much_over_300_lines():
    sizes = {p.relative_to(ROOT).as_posix(): len(p.read_text().splitlines())
             for p in (ROOT / "lighthouse/engine").rglob("*.py")}
    assert {p: n for p, n in sizes.items() if n > MAX_ENGINE_FILE_LINES} == {}
