"""The import structure of DESIGN.md: no import cycle, and the library never imports the app layer.

Every module of the package is read with ``ast``, imports inside functions included (a lazy
import is still a dependency), and relative imports are resolved to module names.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import optlab

PACKAGE = Path(optlab.__file__).parent
APP_ONLY = ("hydra", "omegaconf", "mlflow")


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _imports(module: str, path: Path, modules) -> set[str]:
    """Every module name ``module`` imports (absolute, as written or resolved from relative form).

    ``from package import name`` imports the module ``package.name`` when there is one (the
    package's own ``__init__`` runs for any of its submodules, as for every import), else ``package``.
    """
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            target = node.module if not node.level else ".".join(p for p in (base, node.module) if p)
            for alias in node.names:
                names.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target)
    return names


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: {n for n in _imports(m, p, modules) if n in modules and n != m} for m, p in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_of_optlab_imports_one_that_imports_it_back():
    graph = _graph()
    assert "optlab.plugins" in graph and "optlab.registry" in graph["optlab.plugins"]  # the graph sees imports
    assert _cycles(graph) == []


def _is_app(module: str, imports: set[str]) -> bool:
    """The app layer, and the ``python -m`` entry points that only hand over to it."""
    if module == "optlab.app" or module.startswith("optlab.app."):
        return True
    # (and ``optlab.commands``, whose ``check_package`` each calls first)
    return bool(imports) and all(n in ("sys", "optlab.commands") or n.startswith("optlab.app") for n in imports)


def test_the_library_never_imports_the_app_layer_hydra_or_mlflow():
    modules = _modules()
    offenders = []
    for module, path in modules.items():
        imports = _imports(module, path, modules)
        if _is_app(module, imports):
            continue
        for name in imports:
            if name.startswith("optlab.app") or name.split(".")[0] in APP_ONLY:
                offenders.append(f"{module} imports {name}")
    assert offenders == []


def test_importing_the_library_loads_no_app_dependency():
    code = (
        "import sys, optlab, optlab.optimizers, optlab.schedules, optlab.callbacks, optlab.problems, "
        "optlab.trainer, optlab.plugins, optlab.testing, optlab.bench\n"
        "optlab.optimizers.get('adam'); optlab.plugins.report()\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {APP_ONLY!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"
