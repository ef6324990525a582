"""Imports between thermoai's modules: no cycle, and the layer order of DESIGN.md.

DESIGN.md's layers, top to bottom (imports go down, never up or sideways between units)::

    cli
    experiments
    bayes   optim   memory   thermo.circuits
    thermo.linalg   thermo.cost
    thermo.device
    thermo.ou
    tree, types, distributed, philox
    cache

``thermoai.distributed`` (the process group and configuration check that bayes.distributed and
optim.distributed share) and ``thermoai.philox`` (the compiled normal generator of the SGMCMC noise) sit
with tree and types; ``thermoai.cache`` (the cache directory of models and compiled kernels, used by
philox and memory.model) sits below them: they import only torch and the standard library.

Every import counts, at module level or inside a function (a lazy import still makes a cycle). A thermo
module the list does not name (``thermo.planning``, ``thermo.digital``, ...) sits at the level of
``thermo.linalg``/``thermo.cost``, or just below the lowest module that imports it (one imported by
``thermo.device`` sits between device and ou). A package that appears later (``optim``, ``thermo.circuits``)
is checked as soon as its files exist. ``thermoai`` and ``thermoai.thermo`` are namespaces: importing a name
from them counts as importing the module that defines it.

Run as a script (``python tests/test_imports.py``) to print the import graph's problems.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

LAYERS: list[tuple[str, ...]] = [
    ("thermoai.cli", "thermoai.__main__"),
    ("thermoai.experiments",),
    ("thermoai.bayes", "thermoai.optim", "thermoai.memory", "thermoai.thermo.circuits"),
    ("thermoai.thermo.linalg", "thermoai.thermo.cost"),
    ("thermoai.thermo.device",),
    ("thermoai.thermo.ou",),
    ("thermoai.tree", "thermoai.types", "thermoai.distributed", "thermoai.philox"),
    ("thermoai.cache",),
]
# modules DESIGN.md names together as one unit
SAME_UNIT = {"thermoai.__main__": "thermoai.cli", "thermoai.types": "thermoai.tree"}
THERMO_DEFAULT = 3.0  # the level of thermo.linalg / thermo.cost
NAMESPACES = ("thermoai", "thermoai.thermo")
# DESIGN.md: "optim reaches the hardware only through thermo.linalg (a solver backend), never through thermo.ou"
FORBIDDEN = [("thermoai.optim", "thermoai.thermo.ou")]


def module_files(src: Path, package: str = "thermoai") -> dict[str, Path]:
    """Module name -> file, for every ``.py`` below ``src/<package>``."""
    out = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _raw_imports(name: str, path: Path) -> list[tuple[str, str | None, int]]:
    """``(module, imported name or None, line)`` for every import statement of ``path``, anywhere in it."""
    is_package = path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(alias.name, None, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            out += [(base, alias.name, node.lineno) for alias in node.names]
    return out


def import_graph(src: Path, package: str = "thermoai") -> dict[str, dict[str, int]]:
    """``{module: {imported module: line}}`` among the modules of ``package`` (others are left out)."""
    files = module_files(src, package)
    raw = {name: _raw_imports(name, path) for name, path in files.items()}

    def targets(module: str, item: str | None, seen: frozenset = frozenset()) -> list[str]:
        if item is not None and f"{module}.{item}" in files:
            return [f"{module}.{item}"]
        if module not in files:
            return []
        if module in NAMESPACES and module not in seen:
            # a namespace re-exports: the dependency is on the module that defines the name (or, for
            # ``import thermoai.thermo`` or ``*``, on everything the namespace imports)
            found = [t for m, i, _ in raw[module] if item in (None, "*") or i == item
                     for t in targets(m, i, seen | {module})]
            return found
        return [module]

    graph: dict[str, dict[str, int]] = {}
    for name in files:
        edges: dict[str, int] = {}
        for module, item, line in raw[name]:
            for target in targets(module, item):
                if target != name and not (name in NAMESPACES and target.startswith(name + ".")):
                    edges.setdefault(target, line)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph) + 100))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def unit_of(module: str) -> tuple[str | None, float | None]:
    """The DESIGN.md unit a module belongs to and its level (0 = cli), or ``(None, None)`` if unlisted."""
    best: tuple[str | None, float | None] = (None, None)
    for level, units in enumerate(LAYERS):
        for unit in units:
            if (module == unit or module.startswith(unit + ".")) and (best[0] is None or len(unit) > len(best[0])):
                best = (SAME_UNIT.get(unit, unit), float(level))
    return best


def levels(graph: dict[str, dict[str, int]]) -> dict[str, tuple[str, float]]:
    """``{module: (unit, level)}``; an unlisted thermo module is its own unit, placed as the module
    docstring says. Raises ``ValueError`` for a module outside every unit (add it to DESIGN.md and here)."""
    out: dict[str, tuple[str, float]] = {}
    floating = []
    for module in graph:
        unit, level = unit_of(module)
        if unit is not None:
            out[module] = (unit, level)
        elif module in NAMESPACES:
            continue
        elif module.startswith("thermoai.thermo."):
            floating.append(module)
            out[module] = (module, THERMO_DEFAULT)
        else:
            raise ValueError(f"{module} is in no layer of DESIGN.md; place it there and in tests/test_imports.py")
    # below the lowest importer, to a fixed point (a cycle among them is reported by the cycle check)
    for _ in range(len(floating) + 1):
        changed = False
        for module in floating:
            importers = [out[m][1] for m, edges in graph.items() if module in edges and m in out and m != module]
            level = max([THERMO_DEFAULT] + [lvl + 0.5 for lvl in importers if lvl + 0.5 > THERMO_DEFAULT])
            level = min(level, len(LAYERS) - 1.5)  # never at or below tree/types
            if level != out[module][1]:
                out[module] = (module, level)
                changed = True
        if not changed:
            break
    return out


def layer_violations(graph: dict[str, dict[str, int]], files: dict[str, Path] | None = None) -> list[str]:
    """One line per import that goes up or sideways in DESIGN.md's layers, or that DESIGN.md forbids."""
    placed = levels(graph)
    problems = []
    for module, edges in sorted(graph.items()):
        where = files[module] if files else module
        for target, line in sorted(edges.items()):
            for importer, imported in FORBIDDEN:
                if unit_of(module)[0] == importer and (target == imported or target.startswith(imported + ".")):
                    problems.append(f"{where}:{line}: {module} imports {target}, which DESIGN.md forbids")
            if module in NAMESPACES or target in NAMESPACES:
                continue
            (unit, level), (target_unit, target_level) = placed[module], placed[target]
            if unit != target_unit and target_level <= level:
                way = "up" if target_level < level else "sideways"
                problems.append(f"{where}:{line}: {module} (level {level:g}) imports {target} "
                                f"(level {target_level:g}): {way} in DESIGN.md's layers")
    return problems


# ------------------------------------------------------------------------------------------------ tests


def test_no_import_cycle_in_thermoai():
    found = cycles(import_graph(SRC))
    assert not found, "import cycles among thermoai modules: " + "; ".join(" <-> ".join(c) for c in found)


def test_imports_follow_the_layers_of_design_md():
    problems = layer_violations(import_graph(SRC), module_files(SRC))
    assert not problems, "\n".join(problems)


def test_the_layers_name_every_package_of_design_md_that_exists():
    """A layer name that matches no file is allowed only for the packages still being written."""
    files = module_files(SRC)
    later = {"thermoai.optim", "thermoai.thermo.circuits"}
    missing = [u for units in LAYERS for u in units
               if u not in later and not any(m == u or m.startswith(u + ".") for m in files)]
    assert not missing, f"DESIGN.md layers name modules that do not exist: {missing}"


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / "thermoai" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_checker_finds_a_lazy_import_cycle_and_upward_imports(tmp_path):
    """The checks above would fail for the problems they claim to catch."""
    src = _write(tmp_path, {
        "__init__.py": "",
        "tree.py": "from thermoai.thermo import device\n",  # up: tree is the bottom layer
        "memory/__init__.py": "from thermoai.memory.bank import Bank\n",
        "memory/bank.py": "def build():\n    from thermoai.memory.attention import suspended\n",
        "memory/attention.py": "from thermoai.memory.bank import Bank\n",
        "thermo/__init__.py": "from thermoai.thermo.device import Device\n",
        "thermo/device.py": "from thermoai.thermo.helper import h\nfrom .ou import OU\n",
        "thermo/helper.py": "from thermoai.thermo.cost import price\n",  # below device, imports cost: up
        "thermo/cost.py": "",
        "thermo/ou.py": "",
        "thermo/linalg/__init__.py": "from thermoai.thermo import Device\n",  # through the namespace: device
        "optim/solvers.py": "from thermoai.thermo.ou import OU\nfrom thermoai.bayes import x\n",
        "bayes/__init__.py": "",
    })
    graph = import_graph(src)
    assert graph["thermoai.thermo.linalg"] == {"thermoai.thermo.device": 1}
    assert "thermoai.thermo.ou" in graph["thermoai.thermo.device"]  # relative import resolved
    assert cycles(graph) == [["thermoai.memory.attention", "thermoai.memory.bank"]]
    problems = "\n".join(layer_violations(graph))
    assert "thermoai.tree (level 6) imports thermoai.thermo.device (level 4): up" in problems
    assert "thermoai.thermo.helper (level 4.5) imports thermoai.thermo.cost (level 3): up" in problems
    assert "thermoai.optim.solvers imports thermoai.thermo.ou, which DESIGN.md forbids" in problems
    assert "thermoai.optim.solvers (level 2) imports thermoai.bayes (level 2): sideways" in problems
    assert len(problems.splitlines()) == 4, problems


def test_a_module_outside_every_layer_is_reported(tmp_path):
    src = _write(tmp_path, {"__init__.py": "", "utils.py": ""})
    with pytest.raises(ValueError, match="thermoai.utils is in no layer"):
        layer_violations(import_graph(src))


if __name__ == "__main__":
    graph = import_graph(SRC)
    for component in cycles(graph):
        print("cycle:", " <-> ".join(component))
    for problem in layer_violations(graph, module_files(SRC)):
        print(problem)
