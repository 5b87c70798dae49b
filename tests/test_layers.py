"""Floors: every edrules module imports only its own floor or lower ones, and no modules import
each other in a loop. Read from the source with `ast`, module- and function-level imports alike."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "edrules"

# Lowest first. A module is on the floor of its longest prefix in FLOOR_OF; a new package must
# be placed here before its first test run.
FLOORS = ("facts", "ingest / auth", "rules", "backends", "workbench / runtime / server / support", "demo / cli")
FLOOR_OF = {
    "edrules": 0, "edrules.facts": 0, "edrules.domains": 0, "edrules.errors": 0, "edrules.catalog": 0,
    "edrules.schema": 0,
    "edrules.ingest": 1, "edrules.auth": 1, "edrules.synth": 1,
    "edrules.rules": 2, "edrules.pack": 2,
    "edrules.backends": 3,
    "edrules.workbench": 4, "edrules.runtime": 4, "edrules.server": 4, "edrules.support": 4,
    "edrules.spark": 4,
    "edrules.demo": 5, "edrules.cli": 5,
}

# The gateway's side: loaded by the milter, so no analyst stack at import time.
GATEWAY = ("edrules.runtime", "edrules.backends.runtime", "edrules.rules")
HEAVY = ("pandas", "duckdb")


@dataclass(frozen=True, slots=True)
class Import:
    source: str  # importing module
    target: str  # imported module (an edrules module) or top-level package name (third party)
    path: Path
    line: int
    text: str
    module_level: bool

    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}: {self.text}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _known(name: str) -> str:
    """The edrules module that `import name` runs last: the longest existing prefix."""
    while name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


@cache
def imports_of(module: str) -> tuple[Import, ...]:
    """Every import the module runs: at module level or inside functions, but not the ones
    under `if TYPE_CHECKING:` (those never run)."""
    path = MODULES[module]
    source = path.read_text(encoding="utf-8")
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[Import] = []

    def add(target: str, node: ast.stmt, module_level: bool) -> None:
        text = ast.get_source_segment(source, node) or ast.unparse(node)
        found.append(Import(module, target, path, node.lineno, " ".join(text.split()), module_level))

    def visit(node: ast.AST, module_level: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for stmt in child.orelse:
                    visit(stmt, module_level)
                continue
            inner = module_level and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    top = alias.name.split(".")[0]
                    add(_known(alias.name) if top == "edrules" else top, child, module_level)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                if base.split(".")[0] != "edrules":
                    add(base.split(".")[0], child, module_level)
                    continue
                for alias in child.names:  # `from edrules.x import y` may name the module x.y
                    sub = f"{base}.{alias.name}"
                    add(sub if sub in MODULES else _known(base), child, module_level)
            else:
                visit(child, inner)

    visit(ast.parse(source, filename=str(path)), True)
    return tuple(dict.fromkeys(found))  # `from m import a, b` is one import of m


def floor_of(module: str) -> int:
    name = module
    while name and name not in FLOOR_OF:
        name = name.rpartition(".")[0]
    assert name, f"{module} is on no floor: add its package to FLOOR_OF in {Path(__file__).name}"
    return FLOOR_OF[name]


def edrules_imports() -> list[Import]:
    return [i for m in MODULES for i in imports_of(m) if i.target in MODULES and i.target != i.source]


def test_every_module_of_edrules_is_on_a_floor():
    unplaced = []
    for module in MODULES:
        try:
            floor_of(module)
        except AssertionError as exc:
            unplaced.append(str(exc))
    assert not unplaced, "\n".join(unplaced)


def test_no_module_imports_a_higher_floor():
    upward = [f"{i.where()}\n    {i.source} (floor {FLOORS[floor_of(i.source)]}) imports "
              f"{i.target} (floor {FLOORS[floor_of(i.target)]})"
              for i in edrules_imports() if floor_of(i.target) > floor_of(i.source)]
    assert not upward, "imports that point up:\n" + "\n".join(upward)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_no_modules_import_each_other_in_a_loop():
    imports = edrules_imports()
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for i in imports:
        edges[i.source].add(i.target)
    report = []
    for component in _cycles(edges):
        members = set(component)
        report.append("cycle: " + ", ".join(component))
        report += [f"  {i.where()}" for i in imports if i.source in members and i.target in members]
    assert not report, "\n".join(report)


def test_the_loop_finder_finds_a_loop():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def _module_level_closure(module: str) -> dict[str, Import]:
    """What importing `module` runs: its module-level imports, and theirs, with the first
    import statement through which each was reached."""
    reached: dict[str, Import] = {}
    todo = [module]
    while todo:
        for i in imports_of(todo.pop()):
            if i.module_level and i.target not in reached:
                reached[i.target] = i
                if i.target in MODULES:
                    todo.append(i.target)
    return reached


def _chain(module: str, target: str, reached: dict[str, Import]) -> list[str]:
    lines = []
    while target != module:
        i = reached[target]
        lines.append(i.where())
        target = i.source
    return lines[::-1]


def test_the_gateway_side_imports_no_pandas_or_duckdb_at_module_level():
    gateway = [m for m in MODULES if any(m == g or m.startswith(g + ".") for g in GATEWAY)]
    assert "edrules.backends.runtime" in gateway and "edrules.runtime.milter" in gateway
    bad = []
    for module in gateway:
        reached = _module_level_closure(module)
        for heavy in HEAVY:
            if heavy in reached:
                bad.append(f"{module} imports {heavy}:\n    " + "\n    ".join(_chain(module, heavy, reached)))
    assert not bad, "\n".join(bad)
