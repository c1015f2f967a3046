"""The floors of docs' DESIGN §2 and STYLE "Floors", checked from the code's own imports.

gateway_site/lib/ is the ground floor, the apps stand on it, the rest of gateway_site/ is
the roof. An arrow that runs back up is a design bug even when a function-local import
hides it, so every `import` and `from ... import` counts wherever it is written (function
bodies and `if TYPE_CHECKING:` blocks included), and so do references by string, which
are imports that Django or Celery perform for the code: ORM references ("budgets.Consumer"
in a ForeignKey, apps.get_model("budgets", "Consumer")) and dotted paths of our modules
(include("proxy.urls"), "gateway_site.status.stamp"). Being lazy, those close no import
cycle. Migrations are history and are not read.
"""
from __future__ import annotations

import ast
import re
from collections import defaultdict
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gateway_site", "proxy", "budgets", "audit")
APPS = ("proxy", "budgets", "audit")
LIB = "gateway_site.lib"
MAX_LINES = 600
# "<app>.<Model>": Django's lazy model reference (app label, then a class name).
MODEL_REFERENCE = re.compile(rf"^({'|'.join(APPS)})\.([A-Z][A-Za-z0-9_]*)$")
# A dotted path that starts with one of our packages: a module, or a name in one.
DOTTED_PATH = re.compile(rf"^({'|'.join(PACKAGES)})(\.[A-Za-z_][A-Za-z0-9_]*)+$")


@dataclass(frozen=True)
class Edge:
    source: str  # module name
    path: str  # file, relative to the repository
    line: int
    target: str  # a module of the project
    kind: str = "import"  # or "model" (an ORM reference by string), "path" (a dotted path in a string)

    def __str__(self) -> str:
        via = {"import": "", "model": " (model reference)", "path": " (dotted path in a string)"}[self.kind]
        return f"{self.path}:{self.line} → {self.target}{via}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def source_files() -> dict[str, Path]:
    """Module name → file, for every module of the four packages but their migrations."""
    files = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).parts
            if "migrations" in parts or "tests" in parts or path.name.startswith("test_"):
                continue
            files[_module_name(path)] = path
    return files


def _is_package(module: str) -> bool:
    return source_files()[module].name == "__init__.py"


def _resolve(name: str) -> str | None:
    """The project module that `name` (a dotted import path) lands in: its longest existing prefix."""
    modules = source_files()
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def _imported_names(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """Dotted names an import statement loads; `from pkg import name` is `pkg.name` when that is a module."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        package = module.split(".") if _is_package(module) else module.split(".")[:-1]
        base = package[: len(package) - (node.level - 1)]
        origin = ".".join([*base, *([node.module] if node.module else [])])
    else:
        origin = node.module or ""
    names = []
    for alias in node.names:
        submodule = f"{origin}.{alias.name}"
        names.append(submodule if alias.name != "*" and submodule in source_files() else origin)
    return names


def _model_reference(node: ast.AST) -> str | None:
    """The app label of an ORM reference by string, if `node` is one."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        match = MODEL_REFERENCE.match(node.value)
        return match.group(1) if match else None
    # apps.get_model("budgets", "Consumer") / get_model("budgets", "Consumer")
    if isinstance(node, ast.Call) and len(node.args) >= 2:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        first = node.args[0]
        if name == "get_model" and isinstance(first, ast.Constant) and first.value in APPS:
            return first.value
    return None


@cache
def edges() -> tuple[Edge, ...]:
    found: list[Edge] = []
    for module, path in source_files().items():
        relative = str(path.relative_to(ROOT))
        tree = ast.parse(path.read_text(), filename=relative)
        # A Celery task's `name=` is the name queued messages know it by (kept when a task
        # moves, so work already queued still runs), not a path anything is loaded from.
        task_names = {id(k.value) for n in ast.walk(tree) if isinstance(n, ast.Call)
                      for k in n.keywords if k.arg == "name" and isinstance(k.value, ast.Constant)}
        for node in ast.walk(tree):
            if id(node) in task_names:
                continue
            if isinstance(node, ast.Import | ast.ImportFrom):
                for name in _imported_names(module, node):
                    target = _resolve(name)
                    if target is not None and target != module:
                        found.append(Edge(module, relative, node.lineno, target))
                continue
            app = _model_reference(node)
            if app is not None and _resolve(f"{app}.models"):
                found.append(Edge(module, relative, node.lineno, f"{app}.models", kind="model"))
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and DOTTED_PATH.match(node.value):
                target = _resolve(node.value)
                # A module below a package: "audit.export_auditevent" is a permission, not a path.
                if target is not None and "." in target and target != module:
                    found.append(Edge(module, relative, node.lineno, target, kind="path"))
    return tuple(dict.fromkeys(found))  # one per line and target: `from m import a, b` is one arrow


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(f"{package}.")


def _violations(source_in: str, forbidden) -> list[Edge]:
    return [e for e in edges() if _inside(e.source, source_in) and forbidden(e.target)]


def _report(rule: str, violations: list[Edge]) -> str:
    return f"{rule}: {len(violations)} violation(s)\n" + "\n".join(f"  {v}" for v in violations)


def test_the_scan_sees_the_whole_project():
    """Guards the other tests against passing by reading nothing."""
    modules = source_files()
    assert {"gateway_site.settings", LIB, "proxy.views", "budgets.models", "audit.models"} <= modules.keys()
    for app in APPS:  # each app stands on the ground floor
        assert any(_inside(e.source, app) and _inside(e.target, LIB) for e in edges()), app
    assert any(_inside(e.source, "gateway_site") and _inside(e.target, "proxy") for e in edges())


def test_no_app_imports_the_roof():
    violations = [
        e for app in APPS for e in _violations(app, lambda t: _inside(t, "gateway_site") and not _inside(t, LIB))
    ]
    assert not violations, _report("an app imports gateway_site outside gateway_site.lib", violations)


def test_the_ground_floor_imports_no_app_and_nothing_else_of_gateway_site():
    violations = _violations(LIB, lambda t: not _inside(t, LIB))
    assert not violations, _report("gateway_site.lib imports above itself", violations)


def test_budgets_never_imports_proxy():
    violations = _violations("budgets", lambda t: _inside(t, "proxy"))
    assert not violations, _report("budgets imports proxy", violations)


def test_audit_never_imports_proxy_or_budgets():
    violations = _violations("audit", lambda t: _inside(t, "proxy") or _inside(t, "budgets"))
    assert not violations, _report("audit imports proxy or budgets", violations)


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; components of more than one module, each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        components.append(sorted(component))
    return components


def test_no_two_modules_import_each_other():
    """No import cycle, however long. A package's __init__ that imports its own submodules is
    no cycle by itself: only explicit imports are edges, so it closes one only when a submodule
    imports the package back."""
    graph: dict[str, set[str]] = defaultdict(set)
    for module in source_files():
        graph[module]
    imports = [e for e in edges() if e.kind == "import"]
    for e in imports:
        graph[e.source].add(e.target)
    cycles = _strongly_connected(graph)
    lines = []
    for component in cycles:
        members = set(component)
        lines.append(" ↔ ".join(component))
        lines += [f"    {e}" for e in imports if e.source in members and e.target in members]
    assert not cycles, f"{len(cycles)} import cycle(s)\n" + "\n".join(f"  {line}" for line in lines)


def test_no_module_passes_600_lines():
    too_long = []
    for path in source_files().values():
        lines = len(path.read_text().splitlines())
        if lines > MAX_LINES:
            too_long.append(f"{path.relative_to(ROOT)}: {lines} lines")
    assert not too_long, f"modules over {MAX_LINES} lines (split by subject):\n" + "\n".join(
        f"  {line}" for line in too_long)
