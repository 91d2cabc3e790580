"""No import cycles between the modules of infra_pl (and its callbacks, installed as infra_pl.callbacks).

The graph is read from the source with ``ast``, not by importing: an edge ``a -> b`` for every
``import`` / ``from ... import`` in ``a`` that names ``b`` (``from pkg import sub`` names the
submodule ``pkg.sub``; ``from pkg import name`` names ``pkg``), and one to every package above
``b`` that ``a`` is not inside: importing ``pkg.sub.b`` from outside runs ``pkg/sub/__init__.py``
first, which may import ``a`` back (a cycle that bites only when ``a`` is imported first).
Module-level imports are what runs when ``a`` is imported, including those in ``try``/``if``
blocks and class bodies; imports under ``if TYPE_CHECKING:`` never run and are left out. An import inside a function runs later, which is
how a cycle gets dodged rather than broken, so those are checked too: one that closes a cycle must
be listed in ``LOCAL_CYCLES_ALLOWED`` with its reason.
"""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"infra_pl": ROOT / "infra_pl", "infra_pl.callbacks": ROOT / "callbacks"}

# Function-local imports that close a cycle, kept on purpose (edge: importer -> imported module or
# package; a package covers its submodules).
LOCAL_CYCLES_ALLOWED = {
    # `infra-pl curate`'s command line builds a datamodule, whose training mix uses infra_pl.curate.
    ("infra_pl.curate", "infra_pl.data.datamodule"): "the curate CLI entry point lives next to the curation code",
    # A lazy re-export for old imports; cli_app imports Lightning (seconds), errors must stay light.
    ("infra_pl.errors", "infra_pl.cli_app"): "errors.InfraArgumentParser, resolved on first use",
    # The planner uses infra_pl.ekfac.modules and infra_pl.influence.tokens, and importing those runs
    # the ekfac / influence package __init__s, which import ekfac.fit -> ekfac.driver. Breaking this
    # needs a lighter ekfac/__init__ or those helpers in a leaf module.
    ("infra_pl.ekfac.driver", "infra_pl.planner"): "partition planning in FactorFit._planned_groups",
    ("infra_pl.ekfac.options", "infra_pl.planner"): "FactorOptions.budget_bytes / planner_settings",
}


def find_modules(packages: dict[str, Path]) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file under each package directory."""
    modules = {}
    for package, directory in packages.items():
        for path in sorted(directory.rglob("*.py")):
            parts = list(path.relative_to(directory).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([package, *parts])] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _targets(module: str, node: ast.Import | ast.ImportFrom, modules: dict[str, Path]) -> set[str]:
    """The project modules an import statement in ``module`` runs: the nearest known one for each name,
    and the packages above it that ``module`` is not inside (importing ``pkg.sub.x`` from outside
    ``pkg.sub`` runs ``pkg/sub/__init__.py`` first)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        if node.level:  # relative: from the package of ``module``
            base = module.split(".") if modules[module].name == "__init__.py" else module.split(".")[:-1]
            base = base[: len(base) - node.level + 1]
            package = ".".join(base + ([node.module] if node.module else []))
        else:
            package = node.module or ""
        names = [f"{package}.{alias.name}" if f"{package}.{alias.name}" in modules else package for alias in node.names]
    found = set()
    for name in names:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if not name or name == module:
            continue
        found.add(name)
        package = name.rpartition(".")[0]
        while package and package != module and not module.startswith(package + "."):
            found.add(package)
            package = package.rpartition(".")[0]
    return found


def import_edges(modules: dict[str, Path]) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module-level edges, function-local edges) of every module."""
    top: dict[str, set[str]] = {m: set() for m in modules}
    local: dict[str, set[str]] = {m: set() for m in modules}

    def walk(module: str, body: list[ast.stmt], in_function: bool) -> None:
        for node in body:
            if isinstance(node, ast.If) and _is_type_checking(node.test):
                walk(module, node.orelse, in_function)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                (local if in_function else top)[module].update(_targets(module, node, modules))
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                walk(module, node.body, True)
            else:  # blocks (if/try/with/for/class bodies) run where they stand
                for block in ("body", "orelse", "finalbody", "handlers", "cases"):
                    children = getattr(node, block, None)
                    if isinstance(children, list):
                        walk(module, [c for c in children if isinstance(c, ast.AST)], in_function)

    for module, path in modules.items():
        walk(module, ast.parse(path.read_text(encoding="utf-8"), str(path)).body, False)
    return top, local


def _path(graph: dict[str, set[str]], start: str, goal: str) -> list[str] | None:
    """A shortest path start -> ... -> goal (breadth first), or None."""
    previous: dict[str, str | None] = {start: None}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for nxt in sorted(graph[node]):
            if nxt == goal:
                path = [nxt, node]
                while previous[path[-1]] is not None:
                    path.append(previous[path[-1]])  # type: ignore[arg-type]
                return path[::-1]
            if nxt not in previous:
                previous[nxt] = node
                queue.append(nxt)
    return None


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One shortest cycle per module that lies on one, deduplicated (each cycle starts at its least module)."""
    found = set()
    for module in graph:
        path = _path(graph, module, module)
        if path is not None:
            ring = path[:-1]
            k = ring.index(min(ring))
            found.add(tuple(ring[k:] + ring[:k]))
    return [[*ring, ring[0]] for ring in sorted(found)]


def local_cycle_closers(top: dict[str, set[str]], local: dict[str, set[str]]) -> dict[tuple[str, str], list[str]]:
    """Function-local edges a -> b (not also module-level) where b leads back to a: edge -> the cycle."""
    both = {m: top[m] | local[m] for m in top}
    closers = {}
    for a in sorted(top):
        for b in sorted(local[a] - top[a]):
            back = _path(both, b, a) if b != a else None
            if back is not None:
                closers[(a, b)] = [a, *back]
    return closers


def _show(rings: list[list[str]]) -> str:
    return "\n".join(" -> ".join(ring) for ring in rings)


# ------------------------------------------------------------------------------------------------ tests


def test_the_graph_sees_cycles_local_imports_and_type_checking(tmp_path):
    """The checker itself: a module-level cycle is found, a function-local one is told apart, TYPE_CHECKING is not an edge."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from pkg.sub.c import C\n")
    (pkg / "a.py").write_text("try:\n    from pkg import b\nexcept ImportError:\n    b = None\n")
    (pkg / "b.py").write_text("from . import a\n")
    (pkg / "sub" / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.sub.d import D\n"
        "class C:\n    import pkg.a\n    def f(self):\n        from pkg.sub import d\n"
    )
    (pkg / "sub" / "d.py").write_text("from ..sub import C\n")
    # f imports a leaf of package g, whose __init__ imports h, which imports f: a cycle only through g
    (pkg / "g").mkdir()
    (pkg / "f.py").write_text("import pkg.g.leaf\n")
    (pkg / "g" / "__init__.py").write_text("from pkg.g.h import H\n")
    (pkg / "g" / "h.py").write_text("from pkg import f\nH = 1\n")
    (pkg / "g" / "leaf.py").write_text("")
    modules = find_modules({"pkg": pkg})
    assert set(modules) == {"pkg", "pkg.a", "pkg.b", "pkg.sub", "pkg.sub.c", "pkg.sub.d", "pkg.f", "pkg.g", "pkg.g.h", "pkg.g.leaf"}
    top, local = import_edges(modules)
    assert top["pkg.a"] == {"pkg.b"} and top["pkg.b"] == {"pkg.a"}
    assert top["pkg.sub.c"] == {"pkg.a"}  # class body: module level; TYPE_CHECKING: none
    assert local["pkg.sub.c"] == {"pkg.sub.d"}
    assert top["pkg.sub.d"] == {"pkg.sub"} and top["pkg.sub"] == {"pkg.sub.c"}  # inside pkg.sub: no package edge
    assert top["pkg.f"] == {"pkg.g.leaf", "pkg.g"} and top["pkg.g"] == {"pkg.g.h"}
    assert cycles(top) == [["pkg.a", "pkg.b", "pkg.a"], ["pkg.f", "pkg.g", "pkg.g.h", "pkg.f"]]
    assert local_cycle_closers(top, local) == {("pkg.sub.c", "pkg.sub.d"): ["pkg.sub.c", "pkg.sub.d", "pkg.sub", "pkg.sub.c"]}


def test_project_modules_are_all_seen():
    modules = find_modules(PACKAGES)
    for name in ("infra_pl", "infra_pl.data.sources", "infra_pl.ekfac.storage", "infra_pl.callbacks.ekfac_factors"):
        assert name in modules
    top, _ = import_edges(modules)
    assert "infra_pl.ekfac.storage" in top["infra_pl.ekfac.factors"]
    assert "infra_pl.data.adapter_base" in top["infra_pl.data.sources"]


def test_no_module_level_import_cycles():
    top, _ = import_edges(find_modules(PACKAGES))
    found = cycles(top)
    assert not found, "module-level import cycles (break them; a function-local import only hides one):\n" + _show(found)


def test_no_function_local_import_closes_a_cycle():
    top, local = import_edges(find_modules(PACKAGES))
    closers = local_cycle_closers(top, local)
    def allowed(importer: str, imported: str) -> bool:
        return any(a == importer and (imported == b or imported.startswith(b + ".")) for a, b in LOCAL_CYCLES_ALLOWED)

    unexplained = {edge: ring for edge, ring in closers.items() if not allowed(*edge)}
    assert not unexplained, (
        "function-local imports that dodge an import cycle (break the cycle, or list the edge in "
        "LOCAL_CYCLES_ALLOWED with the reason):\n" + _show(list(unexplained.values()))
    )
