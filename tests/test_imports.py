"""Every looplm module imports, and looplm's modules import each other without a cycle.

The import graph is read from the source with `ast`: every `import looplm...` / `from looplm... import`
(and relative imports), at module level *and* inside functions, since a function-level import that
closes a circle is still a circle in the design (the two modules cannot be understood or changed one
without the other). Imports under `if TYPE_CHECKING:` are left out (they never run). An edge goes to
the module actually named: `from looplm.train import grpo` is an edge to `looplm.train.grpo` when that
is a module, else to the package `looplm.train`. A cycle is reported as the path of module names.

Simplification: importing `looplm.a.b` also runs `looplm/a/__init__.py`; that implicit edge to the
parent package is not counted (a package importing its own submodules is the normal layout).
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "looplm"


def module_files(root: Path, package: str) -> dict[str, Path]:
    """{dotted module name: file} for every .py file of `package` under `root`."""
    out = {}
    for f in sorted((root / package).rglob("*.py")):
        parts = list(f.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Import nodes of a module, skipping the bodies of `if TYPE_CHECKING:` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """{module: the modules of `package` it imports}, self-imports dropped."""
    mods = module_files(root, package)

    def owner(name: str) -> str | None:  # the longest prefix of `name` that is a module of ours
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        except SyntaxError as e:
            raise AssertionError(f"{path}:{e.lineno}: cannot parse: {e.msg}") from e
        edges: set[str] = set()
        for node in _imports(tree):
            if isinstance(node, ast.Import):
                edges |= {owner(a.name) for a in node.names if a.name.split(".")[0] == package}
                continue
            if node.level:  # relative: resolve against this module's package
                base = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != package:
                continue
            for a in node.names:
                full = f"{target}.{a.name}"
                edges.add(full if full in mods else owner(target))
        edges.discard(None)
        edges.discard(mod)
        graph[mod] = edges
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a closed path a -> ... -> a) per strongly connected component of size > 1,
    found with an iterative depth-first search (deterministic: nodes and edges in sorted order)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    x = stack.pop()
                    on_stack.discard(x)
                    comp.append(x)
                    if x == v:
                        break
                if len(comp) > 1:
                    components.append(sorted(comp))
    return [_cycle_in(graph, set(c)) for c in components]


def _cycle_in(graph: dict[str, set[str]], comp: set[str]) -> list[str]:
    """A shortest closed path through the first node of a strongly connected component (breadth-first)."""
    first = min(comp)
    prev: dict[str, str] = {first: ""}
    frontier = [first]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & comp):
                if w == first:  # v -> first closes the circle: walk back from v to first
                    path = [v]
                    while path[-1] != first:
                        path.append(prev[path[-1]])
                    return path[::-1] + [first]
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {first} in {sorted(comp)}")


MODULES = sorted(module_files(ROOT, PACKAGE))


@pytest.mark.parametrize("name", MODULES)
def test_every_module_imports(name):
    importlib.import_module(name)


def test_no_import_cycle_among_looplm_modules():
    cycles = find_cycles(import_graph(ROOT, PACKAGE))
    assert not cycles, "import cycles among looplm's modules (move the shared definition into a module " \
                       "both can import, or pass it in as an argument):\n" + \
                       "\n".join("  " + " -> ".join(c) for c in cycles)


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


def test_cycle_finder_sees_function_level_relative_and_package_imports(tmp_path):
    """The checker itself: a two-module circle closed by a function-level import, a three-module
    circle through a relative import and a package `__init__`, a TYPE_CHECKING-only import (no edge)."""
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from pkg import b\n",
        "pkg/b.py": "def f():\n    import pkg.a\n",
        "pkg/sub/__init__.py": "from .x import X\n",
        "pkg/sub/x.py": "from ..c import C\nX = 1\n",
        "pkg/c.py": "from pkg.sub import X\nC = 2\n",
        "pkg/d.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import e\n",
        "pkg/e.py": "from pkg.d import nothing\n",
    })
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg.a"}
    assert graph["pkg.sub.x"] == {"pkg.c"} and graph["pkg.c"] == {"pkg.sub"}
    assert graph["pkg.d"] == set() and graph["pkg.e"] == {"pkg.d"}
    cycles = find_cycles(graph)
    assert ["pkg.a", "pkg.b", "pkg.a"] in cycles
    assert ["pkg.c", "pkg.sub", "pkg.sub.x", "pkg.c"] in cycles
    assert len(cycles) == 2
    _write(tmp_path, {"pkg/b.py": "def f():\n    pass\n"})
    assert find_cycles(import_graph(tmp_path, "pkg")) == [["pkg.c", "pkg.sub", "pkg.sub.x", "pkg.c"]]


# ---------------------------------------------------------------------------------------------- references
MD_REF = re.compile(r"(?<![\w./-])((?:[\w-]+/)*[\w-]+\.md)\b")
SCANNED = ("looplm", "benchmarks", "tests")


def test_code_points_only_at_documents_inside_the_repository():
    """Every markdown file a module, benchmark or test names (`docs/model.md`, `benchmarks/LOG.md`, a bare
    `README.md`) exists in the repository, and nothing names the design notes or paths outside it.
    Lower-case bare names (`report.md`, `alignment_tax.md`) are files the code writes, not references."""
    names = {p.name for p in ROOT.rglob("*.md") if ".git" not in p.parts}
    outside = re.compile(r"/work/|shared/design|\.\./seed")
    bad = []
    for top in SCANNED:
        for f in sorted((ROOT / top).rglob("*.py")):
            if f.resolve() == Path(__file__).resolve():  # its own patterns
                continue
            for i, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
                where = f"{f.relative_to(ROOT)}:{i}"
                if outside.search(line):
                    bad.append(f"{where}: points outside the repository: {line.strip()}")
                for ref in MD_REF.findall(line):
                    if "/" in ref:
                        ok = (ROOT / ref).is_file() or (f.parent / ref).is_file()
                    else:
                        ok = ref in names or ref[0].islower()
                    if not ok:
                        bad.append(f"{where}: names {ref}, which is not in the repository")
    assert not bad, "\n".join(bad)
