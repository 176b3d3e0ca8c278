"""The library's layout holds: services and the runtime packages never reach dev tooling or load tools.

Static: every `import` in a module (top level or inside functions) is followed through the project's own modules,
so a lazy import counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

from imask.ops.settings import REPO_ROOT

LIBRARY = REPO_ROOT / "shared"
DEV_ONLY = ("imask.devstack", "imask.loadtest", "imask.cli", "imask.evaluation")
RUNTIME_PACKAGES = ("imask.engine", "imask.streaming", "imask.pipeline", "imask.ops", "imask.cameras", "imask.registry",
                    "imask.maskapi", "imask.media", "imask.sdk", "imask.recording")


def module_file(name: str) -> Path | None:
    root = REPO_ROOT if name.startswith("services") else LIBRARY
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}  # `from pkg import module`
    return {name for name in found if name.split(".")[0] in ("imask", "services") and module_file(name)}


def reachable(start: str) -> dict[str, str]:
    """Every project module `start` imports, directly or not, each with the module that imported it."""
    seen: dict[str, str] = {start: ""}
    todo = [start]
    while todo:
        name = todo.pop()
        path = module_file(name)
        if path is None:
            continue
        for dep in imports_of(path):
            if dep not in seen:
                seen[dep] = name
                todo.append(dep)
    return seen


def dev_only_reached(start: str) -> list[str]:
    graph = reachable(start)
    return sorted(f"{dep} (via {via})" for dep, via in graph.items() if dep.startswith(DEV_ONLY))


def test_services_never_import_dev_tooling_or_load_tools() -> None:
    services = sorted(p.parent.name for p in (REPO_ROOT / "services").glob("*/service.py"))
    assert {"worker", "ingest", "recorder", "mask_api"} <= set(services)
    for service in services:
        assert dev_only_reached(f"services.{service}.service") == [], service


def test_runtime_packages_never_import_dev_tooling_or_load_tools() -> None:
    for package in RUNTIME_PACKAGES:
        path = module_file(package)
        assert path is not None, package
        modules = [package] if path.name != "__init__.py" else [
            f"{package}.{p.stem}" for p in path.parent.glob("*.py") if p.stem != "__init__"]
        for module in modules:
            assert dev_only_reached(module) == [], module


def test_the_check_sees_a_lazy_import() -> None:
    """The walker must find imports inside functions (the CLI imports services lazily), or the checks above could
    pass on a broken layout."""
    assert "imask.devstack.protogen" in reachable("imask.cli.main")
    assert "services.worker.service" in reachable("imask.cli.main")
