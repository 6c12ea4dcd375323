"""The walls and the shape of the code, checked on every run (read from the source, not run).

- Layers: ``integrations`` never imports Prefect, ``tasks``, ``flows``, ``deployments`` or
  ``lab``; ``lab`` never imports ``integrations`` (a simulator sharing code with the client it
  tests proves nothing); ``tasks`` and ``flows`` never import ``lab``; ``tasks`` never imports
  ``flows``; nothing but ``deployments``, ``bench`` and the tests imports ``deployments``.
- No import cycle between packages or sub-packages (``metalflow.integrations.maas`` ->
  ``metalflow.integrations.cloudstack`` -> ... -> ``metalflow.integrations.maas``), counting
  the imports inside functions too: a hidden import is still a dependency.
- No module-level mutable state in ``integrations``, ``tasks`` and ``flows`` (no module-level
  dict/list/set or object built at import, no ``global``, no ``lru_cache`` on a module
  function): what a process keeps between runs is a part of ``integrations.runtime.Runtime``.
- Every package folder is in pyproject's package list (one ``metalflow`` namespace).
"""

from __future__ import annotations

import ast
import tomllib
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FOLDERS = ("integrations", "tasks", "flows", "deployments", "lab", "bench")


def _modules() -> dict[str, Path]:
    out = {}
    for folder in FOLDERS:
        for path in (REPO / folder).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out["metalflow." + ".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(module: str, path: Path) -> set[str]:
    """Every module ``module`` imports, at any depth of its code (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names.add(base)
            names |= {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES}
    return names


IMPORTS = {m: _imports(m, p) for m, p in MODULES.items()}


def _layer(module: str) -> str:
    return module.split(".")[1] if module.startswith("metalflow.") else module.split(".")[0]


FORBIDDEN = {
    "integrations": ("prefect", "metalflow.tasks", "metalflow.flows", "metalflow.deployments", "metalflow.lab"),
    "lab": ("metalflow.integrations", "metalflow.tasks", "metalflow.flows", "metalflow.deployments"),
    "tasks": ("metalflow.lab", "metalflow.flows", "metalflow.deployments"),
    "flows": ("metalflow.lab", "metalflow.deployments"),
}
BARE = ("flows", "tasks", "integrations", "lab", "bench", "deployments")


def test_every_layer_keeps_to_its_own_imports():
    bad = []
    for module, names in sorted(IMPORTS.items()):
        for name in sorted(names):
            if name.split(".")[0] in BARE:
                bad.append(f"{module} imports {name} (say metalflow.{name}: one installed namespace)")
            for wall in FORBIDDEN.get(_layer(module), ()):
                if name == wall or name.startswith(wall + "."):
                    bad.append(f"{module} imports {name}")
    assert bad == []


def _unit(module: str) -> str:
    """The package or sub-package a module belongs to: ``metalflow.integrations.maas.client``
    -> ``metalflow.integrations.maas``; ``metalflow.flows.provision`` -> ``metalflow.flows``."""
    parts = module.split(".")
    if parts[1] in ("integrations", "lab") and len(parts) > 2:
        candidate = ".".join(parts[:3])
        if (REPO / parts[1] / parts[2]).is_dir():
            return candidate
        return ".".join(parts[:2])
    return ".".join(parts[:2])


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one member (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_between_packages_or_sub_packages():
    graph: dict[str, set[str]] = defaultdict(set)
    why: dict[tuple[str, str], str] = {}
    for module, names in IMPORTS.items():
        for name in names:
            if name in MODULES and _unit(name) != _unit(module):
                graph[_unit(module)].add(_unit(name))
                why.setdefault((_unit(module), _unit(name)), f"{module} -> {name}")
    cycles = _cycles(graph)
    explained = [[why[(a, b)] for a in comp for b in comp if (a, b) in why] for comp in cycles]
    assert cycles == [], explained


#: Module-level calls that build nothing mutable (types, loggers, compiled patterns, ...).
IMMUTABLE_CALLS = frozenset(
    (
        "TypeVar ParamSpec NewType getLogger compile frozenset tuple namedtuple NamedTuple field "
        "MappingProxyType Path timedelta Decimal object Struct cast TypeAdapter str int float "
        # a frozen dataclass; a context variable is per context, not per process
        "Backoff ContextVar"
    ).split()
)


def _call_name(node: ast.Call) -> str:
    f = node.func
    root = f
    while isinstance(root, ast.Attribute):
        root = root.value.func if isinstance(root.value, ast.Call) else root.value
    if isinstance(root, ast.Name) and root.id == "Path":
        return "Path"  # Path(__file__).resolve().with_name(...): a path, not state
    if isinstance(f, ast.Name):
        return f.id
    if isinstance(f, ast.Attribute):
        return f.attr
    return ""


def _state(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Global):
            found.append(f"line {node.lineno}: global {', '.join(node.names)}")
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [t.id for t in targets if isinstance(t, ast.Name)]
            if names == ["__all__"]:
                continue
            v = node.value
            mutable = isinstance(v, (ast.Dict, ast.List, ast.Set, ast.DictComp, ast.ListComp, ast.SetComp))
            if isinstance(v, ast.Call) and _call_name(v) not in IMMUTABLE_CALLS:
                mutable = True
            if mutable:
                found.append(
                    f"line {node.lineno}: {', '.join(names) or ast.unparse(targets[0])} = {ast.unparse(v)[:60]}"
                )
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for d in node.decorator_list:
                name = ast.unparse(d)
                if "lru_cache" in name or name in ("cache", "functools.cache"):
                    found.append(f"line {node.lineno}: @{name} on {node.name}")
    return found


def test_no_module_level_state_in_integrations_tasks_and_flows():
    bad = {}
    for module, path in sorted(MODULES.items()):
        if _layer(module) not in ("integrations", "tasks", "flows"):
            continue
        state = _state(path)
        if state:
            bad[str(path.relative_to(REPO))] = state
    assert bad == {}


def test_every_package_folder_is_in_the_installed_namespace():
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    found = {m for m, p in MODULES.items() if p.name == "__init__.py"}
    assert found == listed, (
        f"missing from pyproject: {sorted(found - listed)}; listed but gone: {sorted(listed - found)}"
    )
    assert {k: v for k, v in cfg["package-dir"].items()} == {f"metalflow.{f}": f for f in FOLDERS}
