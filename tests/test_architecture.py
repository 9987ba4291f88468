"""The rules of the house, read from the source (DESIGN.md, docs/architecture.md).

- floors only import downward; families never import one another;
- no import cycle, counting imports inside functions;
- no module over 700 lines;
- one fx ``Tracer`` subclass and one ``TorchFunctionMode`` subclass in the whole package;
- no forward hooks registered by the families (the calibration engine and the tracer do that).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "torchcompress"
PKG = "torchcompress"

# The floors, lowest first. A module may import its own floor and any lower one. The first
# component under the package decides the floor; unknown components fail the test (add them here).
FLOORS: list[set[str]] = [
    # 0: ground (pure helpers, no torchcompress machinery besides each other)
    {"_version", "errors", "registry", "config", "select", "state", "batches", "progress", "costs"},
    # 1: the shared model of layers and forms
    {"layers", "forms"},
    # 2: shared machinery
    {"tracing", "calibration", "io", "profiling", "fusion", "train", "data", "models", "testing"},
    # 3: the families (side by side, never importing one another)
    {"quant", "sparsity", "lowrank", "distill"},
    # 4: the face
    {"recipe", "report", "cli", "demo", "__main__", "__init__"},
]
FAMILIES = FLOORS[3]
MAX_LINES = 700

# Violations that the shared-foundations work is removing. A violation not listed here fails; a
# listed one that no longer occurs fails too (take it off the list). Empty when the house is in order.
PENDING: set[str] = set()


def _check(kind: str, found: list[str]) -> None:
    """Fail on violations of ``kind`` that are not pending, and on pending ones that are fixed."""
    found_keys = {f"{kind}: {f}" if kind not in ("tracers", "recorders") else kind for f in found}
    pending = {p for p in PENDING if p == kind or p.startswith(kind + ":")}
    new = sorted(found_keys - pending)
    fixed = sorted(pending - found_keys)
    assert not new, f"{kind} violations:\n" + "\n".join(new)
    assert not fixed, "fixed (remove from PENDING in this file):\n" + "\n".join(fixed)


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join([PKG, *parts])] = path
    return out


def _resolve(module: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not is_pkg:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Every torchcompress module each module imports (module level and inside functions)."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_pkg = path.name == "__init__.py"
        deps: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, is_pkg, node)
                # ``from . import sub`` imports the submodule; ``from .mod import name`` the module
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                    for a in node.names
                ]
            elif (
                isinstance(node, ast.Call)
                and ast.unparse(node.func).split(".")[-1] in ("import_module", "__import__")
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                # importlib.import_module("torchcompress.x") with a literal name is an import too
                targets = [node.args[0].value]
            else:
                continue
            for t in targets:
                # the longest known module prefix of the target
                parts = t.split(".")
                while parts and ".".join(parts) not in modules:
                    parts.pop()
                if parts and ".".join(parts).startswith(PKG + "."):
                    dep = ".".join(parts)
                    if dep != name and dep != PKG:
                        deps.add(dep)
        graph[name] = deps
    return graph


def _is_type_checking_only(name: str) -> bool:
    return name == PKG  # the lazy __init__ only names things under TYPE_CHECKING


def _floor(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    for i, floor in enumerate(FLOORS):
        if top in floor:
            return i
    raise AssertionError(f"{module}: its top-level component {top!r} is on no floor (FLOORS)")


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _named_modules(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Modules named by a string literal (``"torchcompress.quant"``): dynamic imports by name."""
    out: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        out[name] = {
            node.value
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and node.value in modules
            and node.value not in (name, PKG)
        }
    return out


MODULES = _modules()
GRAPH = _imports(MODULES)
NAMED = _named_modules(MODULES)


def test_every_module_is_on_a_floor() -> None:
    for m in MODULES:
        _floor(m)


def test_floors_only_import_downward() -> None:
    bad = []
    for m, deps in GRAPH.items():
        if _is_type_checking_only(m):
            continue
        for d in deps | NAMED[m]:
            if _floor(d) > _floor(m):
                bad.append(f"{m} -> {d}")
    _check("floor", bad)


def test_families_never_import_each_other() -> None:
    bad = [
        f"{m} -> {d}"
        for m, deps in GRAPH.items()
        for d in deps
        if _top(m) in FAMILIES and _top(d) in FAMILIES and _top(m) != _top(d)
    ]
    _check("family", bad)


def test_no_import_cycles_counting_function_level_imports() -> None:
    # Tarjan's strongly connected components
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in GRAPH.get(v, ()):
            if _is_type_checking_only(w):
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    import sys

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
    for v in GRAPH:
        if v not in index and not _is_type_checking_only(v):
            visit(v)
    # a package importing its own submodules (re-exports) is not a cycle unless a submodule
    # imports the package back; those show up as components containing the package itself
    _check("cycle", [" <-> ".join(c) for c in cycles])


def test_module_size() -> None:
    big = [m for m, p in MODULES.items() if len(p.read_text().splitlines()) > MAX_LINES]
    _check("size", big)


def _class_bases(tree: ast.AST) -> list[tuple[str, list[str]]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            out.append((node.name, [ast.unparse(b) for b in node.bases]))
    return out


def test_one_tracer_and_one_recorder() -> None:
    tracers, recorders = [], []
    for m, path in MODULES.items():
        for cls, bases in _class_bases(ast.parse(path.read_text())):
            if any(b.split(".")[-1] == "Tracer" for b in bases):
                tracers.append(f"{m}.{cls}")
            if any(b.split(".")[-1] == "TorchFunctionMode" for b in bases):
                recorders.append(f"{m}.{cls}")
    _check("tracers", ["x"] if len(tracers) > 1 else [])
    _check("recorders", ["x"] if len(recorders) > 1 else [])
    assert len(tracers) <= 1 or "tracers" in PENDING, f"fx Tracer subclasses: {tracers}"


def test_tracer_and_recorder_live_in_tracing() -> None:
    outside = []
    for m, path in MODULES.items():
        if m == f"{PKG}.tracing" or m.startswith(f"{PKG}.tracing."):
            continue
        for cls, bases in _class_bases(ast.parse(path.read_text())):
            if any(b.split(".")[-1] in ("Tracer", "TorchFunctionMode") for b in bases):
                outside.append(f"{m}.{cls}")
    assert not outside, f"use torchcompress.tracing instead: {outside}"


def test_families_register_no_forward_hooks() -> None:
    bad = []
    for m, path in MODULES.items():
        if _top(m) not in FAMILIES:
            continue
        text = path.read_text()
        for hook in ("register_forward_hook", "register_forward_pre_hook"):
            if hook in text and m not in bad:
                bad.append(m)
    # families register no hooks themselves: torchcompress.calibration and tracing do
    _check("hooks", bad)
