"""celebhpo's import graph, built with `ast` from the source (nothing is imported), against
the layout of shared/DESIGN.md: imports run one way, cli/demo/report -> hpo / export /
inference -> tracking / training / data -> config / objectives / errors / _io / _typed.

Every import is an arrow: at module level, inside a function, under TYPE_CHECKING; relative
ones and `from celebhpo import x` are resolved to the module they name. A part is a
subpackage (celebhpo.hpo) or a top-level module (celebhpo.config). The last tests run the
same checks on a small package made in tmp_path, so a check that cannot fail would show.
"""

from __future__ import annotations

import ast
from pathlib import Path

import celebhpo

PACKAGE = Path(celebhpo.__file__).parent

# the layers, lowest first: a part may import its own layer or one below (never one above);
# "celebhpo" is the package's __init__ (the version)
LAYERS = [
    {"celebhpo", "errors", "_typed", "_io", "stopping", "objectives", "archs", "config"},
    {"data", "training", "tracking"},
    {"hpo", "export", "inference"},
    {"report", "cli_options", "cli_launch", "cli_study", "demo", "cli", "__main__"},
]
PRESENTATION = "celebhpo.report"
MAY_PRESENT = {"celebhpo.cli", "celebhpo.cli_study", "celebhpo.demo"}  # the only modules that turn results into text
MLFLOW_HOME = "celebhpo.tracking"


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path) -> dict[str, Path]:
    """Module name -> file, for every .py file of the package at `root`."""
    return {module_name(root, f): f for f in sorted(root.rglob("*.py"))}


def imported_names(name: str, path: Path) -> set[str]:
    """Every dotted name `path` imports, anywhere in it; relative imports made absolute, and
    `from a import b` given as `a.b` (the caller takes the longest prefix that is a module:
    `a.b` when b is a submodule, else `a`)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def import_graph(root: Path) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module -> the package's modules it imports, module -> the other top-level packages it
    imports). A name that is not a module counts as its longest prefix that is; a module's
    own ancestors (its packages' __init__, which Python runs first anyway) are left out."""
    mods = modules(root)
    graph: dict[str, set[str]] = {}
    external: dict[str, set[str]] = {}
    for name, path in mods.items():
        graph[name], external[name] = set(), set()
        for dotted in imported_names(name, path):
            top = dotted.split(".")[0]
            if top != root.name:
                external[name].add(top)
                continue
            target = dotted
            while target not in mods:
                target = target.rpartition(".")[0]
            if target != name and not name.startswith(target + "."):
                graph[name].add(target)
    return graph, external


def part_of(module: str) -> str:
    return ".".join(module.split(".")[:2])


def part_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    parts: dict[str, set[str]] = {part_of(m): set() for m in graph}
    for m, deps in graph.items():
        parts[part_of(m)].update(part_of(d) for d in deps if part_of(d) != part_of(m))
    return parts


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def upward(graph: dict[str, set[str]], layers: list[set[str]]) -> list[str]:
    """`a imports b` for each import from a part to a part in a higher layer; a part in no
    layer is reported too (every part needs a place)."""
    package = next(iter(graph)).split(".")[0]
    rank = {(package if p == package else f"{package}.{p}"): i
            for i, layer in enumerate(layers) for p in layer}
    bad = [f"{p} is in no layer: add it to LAYERS" for p in sorted(part_graph(graph))
           if p not in rank]
    for m, deps in sorted(graph.items()):
        for d in sorted(deps):
            if rank.get(part_of(m), -1) < rank.get(part_of(d), -1):
                bad.append(f"{m} imports {d}")
    return bad


def importers(graph: dict[str, set[str]], target: str) -> set[str]:
    return {m for m, deps in graph.items() if target in deps}


# -- celebhpo ----------------------------------------------------------------------------------
GRAPH, EXTERNAL = import_graph(PACKAGE)


def test_no_cycle_between_parts():
    assert cycles(part_graph(GRAPH)) == []


def test_no_cycle_between_modules():
    assert cycles(GRAPH) == []


def test_imports_point_down_the_layers():
    assert upward(GRAPH, LAYERS) == []


def test_only_cli_and_demo_import_report():
    assert importers(GRAPH, PRESENTATION) <= MAY_PRESENT


def test_mlflow_is_imported_only_under_tracking():
    outside = {m for m, tops in EXTERNAL.items()
               if "mlflow" in tops and part_of(m) != MLFLOW_HOME}
    assert sorted(outside) == []


# -- the checks themselves, on a package made here ----------------------------------------------
def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for rel, text in {"__init__.py": "", **files}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_the_graph_counts_every_kind_of_import(tmp_path):
    root = _package(tmp_path, {
        "low.py": "import os\n",
        "top.py": "from pkg import low\nfrom pkg.sub.deep import thing\n",
        "sub/__init__.py": "from .deep import thing\n",
        "sub/deep.py": "def f():\n    from .. import low\n    import mlflow.entities\n",
        "typed.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                    "    from pkg.top import x\n",
        "rel.py": "from . import low\nfrom .sub import deep\nimport pkg.sub.deep as d\n",
    })
    graph, external = import_graph(root)
    assert graph["pkg.top"] == {"pkg.low", "pkg.sub.deep"}
    assert graph["pkg.sub"] == {"pkg.sub.deep"}
    assert graph["pkg.sub.deep"] == {"pkg.low"}  # inside a function, relative, two levels up
    assert graph["pkg.typed"] == {"pkg.top"}  # under TYPE_CHECKING
    assert graph["pkg.rel"] == {"pkg.low", "pkg.sub.deep"}
    assert external["pkg.sub.deep"] == {"mlflow"} and external["pkg.low"] == {"os"}


def test_the_checks_catch_cycles_upward_imports_and_stray_imports(tmp_path):
    root = _package(tmp_path, {
        "base.py": "def f():\n    from pkg.mid import a\n",  # up, and a cycle base <-> mid
        "mid/__init__.py": "",
        "mid/a.py": "from pkg import base\n",
        "mid/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                    "    from pkg.show import text\n",
        "show.py": "from pkg.mid import b\nimport mlflow\n",
        "stray.py": "",
    })
    graph, external = import_graph(root)
    layers = [{"pkg", "base"}, {"mid"}, {"show"}]
    assert cycles(part_graph(graph)) == [["pkg.base", "pkg.mid", "pkg.show"]]
    assert cycles(graph) == [["pkg.base", "pkg.mid.a"], ["pkg.mid.b", "pkg.show"]]
    assert upward(graph, layers) == ["pkg.stray is in no layer: add it to LAYERS",
                                     "pkg.base imports pkg.mid.a",
                                     "pkg.mid.b imports pkg.show"]
    assert importers(graph, "pkg.show") == {"pkg.mid.b"}
    assert {m for m, tops in external.items() if "mlflow" in tops} == {"pkg.show"}
