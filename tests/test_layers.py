"""The package's layers stay one-way (issue #12): no import cycles, no upward imports.

Every ``import`` in m2mgw is read, those under ``TYPE_CHECKING`` and inside functions
included: an annotation that needs a higher layer is a dependency all the same.
"""

from __future__ import annotations

import ast
from pathlib import Path

import m2mgw

ROOT = Path(m2mgw.__file__).parent

#: Lowest first. A module may import from its own layer or a lower one.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("m2mgw.protocol",),
    ("m2mgw.config", "m2mgw.limits", "m2mgw.logsetup", "m2mgw.systemd"),
    ("m2mgw.core",),
    ("m2mgw.transport", "m2mgw.sms", "m2mgw.app"),
    ("m2mgw.web", "m2mgw.metrics", "m2mgw.retention"),
    ("m2mgw.service",),
    ("m2mgw.tap", "m2mgw.tools"),
)
#: Modules of the same layer that must not know each other: each bearer and the
#: application interface meet only in the core.
PEERS = ("m2mgw.transport", "m2mgw.sms", "m2mgw.app")
#: Code that must stay pure (sans-I/O): no Twisted at all.
PURE = ("m2mgw.protocol",)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            found.add(name)
            # ``from m2mgw.core import engine`` imports the module m2mgw.core.engine.
            found.update(f"{name}.{alias.name}" for alias in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(path): path for path in ROOT.rglob("*.py")}
    return {
        name: {target for target in _imports(path) if target in modules and target != name}
        for name, path in modules.items()
    }


def _layer(module: str) -> int:
    for rank, names in enumerate(LAYERS):
        if any(module == n or module.startswith(n + ".") for n in names):
            return rank
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def _top(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_every_module_has_a_layer() -> None:
    for module in _graph():
        if module != "m2mgw":
            _layer(module)


def test_no_upward_imports() -> None:
    upward = sorted(
        f"{source} -> {target}"
        for source, targets in _graph().items()
        if source != "m2mgw"
        for target in targets
        if target != "m2mgw" and _layer(target) > _layer(source)
    )
    assert upward == []


def test_peers_do_not_import_each_other() -> None:
    crossing = sorted(
        f"{source} -> {target}"
        for source, targets in _graph().items()
        for target in targets
        if _top(source) in PEERS and _top(target) in PEERS and _top(source) != _top(target)
    )
    assert crossing == []


def test_only_tap_imports_the_service_assembly() -> None:
    importers = sorted(
        source for source, targets in _graph().items()
        if "m2mgw.service" in targets and source != "m2mgw.tap"
    )
    assert importers == []


def test_pure_layers_import_no_twisted() -> None:
    impure = sorted(
        f"{_module_name(path)} -> {name}"
        for package in PURE
        for path in (ROOT.parent / package.replace(".", "/")).rglob("*.py")
        for name in _imports(path)
        if name.split(".")[0] in ("twisted", "zope")
    )
    assert impure == []


def test_no_import_cycles() -> None:
    graph = _graph()
    # Package __init__ modules import their own submodules to present one surface;
    # an edge from a submodule up to its own package's __init__ is what makes a cycle.
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert cycles == []


def test_no_module_is_a_long_room() -> None:
    """About 800 lines at most (the tag table is data, not code, and may grow)."""
    long = sorted(
        f"{_module_name(path)}: {lines}"
        for path in ROOT.rglob("*.py")
        if (lines := len(path.read_text().splitlines())) > 850
    )
    assert long == []
