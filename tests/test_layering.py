"""The package's layering: no import cycles, terminal helpers below the domain, commands on top.

Imports are read from the source with ``ast``: an import inside a function counts (it is a
dependency too), one under ``if TYPE_CHECKING:`` never runs and does not.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "n2n_gym"


def package_modules(package: Path) -> dict[str, Path]:
    """Dotted name -> source file of every module of ``package`` (a package is its __init__)."""
    found = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imported_modules(module: str, source: str, modules: Mapping[str, Path]) -> set[str]:
    """The modules of ``modules`` that ``module`` (whose code is ``source``) imports."""
    tree = ast.parse(source)
    type_checking_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for statement in node.body
        for inner in ast.walk(statement)
    }
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in type_checking_only:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            origin = node.module or ""
            if node.level:  # relative: from the module's own package upwards
                parts = module.split(".")
                base = parts if modules[module].name == "__init__.py" else parts[:-1]
                base = base[: len(base) - node.level + 1]
                origin = ".".join([*base, *([node.module] if node.module else [])])
            names.add(origin)
            names.update(f"{origin}.{alias.name}" for alias in node.names)
    found = set()
    for name in names:
        while name and name not in modules:  # `from pkg.mod import function` -> pkg.mod
            name = name.rpartition(".")[0]
        if name and name != module:
            found.add(name)
    return found


def import_cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other, directly or through others."""
    reach = {}
    for start in graph:
        seen, todo = set(), list(graph[start])
        while todo:
            node = todo.pop()
            if node not in seen:
                seen.add(node)
                todo.extend(graph.get(node, ()))
        reach[start] = seen
    cycles = {
        tuple(sorted(other for other in graph if other in reach[m] and m in reach[other]))
        for m in graph
        if m in reach[m]
    }
    return sorted(list(cycle) for cycle in cycles)


MODULES = package_modules(PACKAGE)
GRAPH = {name: imported_modules(name, path.read_text(), MODULES) for name, path in MODULES.items()}


def test_the_package_has_no_import_cycle():
    assert len(MODULES) > 40 and sum(map(len, GRAPH.values())) > 100  # the reading works
    assert import_cycles(GRAPH) == []


def test_a_cycle_is_found_however_it_is_written():
    modules = {name: Path(f"{name.replace('.', '/')}.py") for name in ("p.a", "p.b", "p.c")}
    modules["p"] = Path("p/__init__.py")
    a = "from p.b import thing\n"
    b = "def later():\n    from .c import other\n"  # inside a function, relative
    c = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from p.b import thing\n"
    graph = {
        name: imported_modules(name, code, modules)
        for name, code in (("p.a", a), ("p.b", b), ("p.c", c), ("p", ""))
    }
    assert graph == {"p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": set(), "p": set()}
    assert import_cycles(graph) == []
    graph["p.c"] = imported_modules("p.c", "import p.a\n", modules)
    assert import_cycles(graph) == [["p.a", "p.b", "p.c"]]


def test_terminal_helpers_import_no_domain_module_and_commands_sit_on_top():
    assert GRAPH["n2n_gym.cli"] == set()
    commands = {name for name in MODULES if name.startswith("n2n_gym.commands")}
    below = {name: GRAPH[name] & commands for name in MODULES if name not in commands}
    assert {name: found for name, found in below.items() if found} == {}
    # The teachers package does not import its own command line (only `python -m` runs it).
    users = {name for name, found in GRAPH.items() if "n2n_gym.teachers.cli" in found}
    assert users <= {"n2n_gym.teachers.__main__"}
