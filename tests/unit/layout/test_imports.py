"""The library's layout holds: no import circles; the worker alone uses pipeline/; services and the runtime packages
never reach dev tooling or load tools; services leave Kafka's client to the streaming package.

Static: every `import` in a module (top level, inside functions or under TYPE_CHECKING) counts, so a lazy import
cannot hide a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

from imask.devstack.settings import REPO_ROOT

LIBRARY = REPO_ROOT / "shared"
DEV_ONLY = ("imask.devstack", "imask.loadtest", "imask.cli", "imask.evaluation")
RUNTIME_PACKAGES = ("imask.engine", "imask.streaming", "imask.pipeline", "imask.ops", "imask.cameras", "imask.registry",
                    "imask.maskapi", "imask.media", "imask.sdk", "imask.recording", "imask.frames", "imask.routing",
                    "imask.features", "imask.alerting")


def module_file(name: str) -> Path | None:
    root = REPO_ROOT if name.startswith("services") else LIBRARY
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def all_imports_of(path: Path) -> set[str]:
    """Every module name a file imports, third-party ones too."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}  # `from pkg import module`
    return found


def imports_of(path: Path) -> set[str]:
    return {name for name in all_imports_of(path) if name.split(".")[0] in ("imask", "services") and module_file(name)}


def library_modules() -> dict[str, Path]:
    """Every module of the library but the generated protobuf code, by dotted name."""
    modules = {}
    for path in (LIBRARY / "imask").rglob("*.py"):
        parts = path.relative_to(LIBRARY).with_suffix("").parts
        if parts[:2] == ("imask", "v1"):
            continue
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for dep in graph.get(node, set()):
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return circles


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


def test_the_library_has_no_import_circles() -> None:
    modules = library_modules()
    graph = {name: {dep for dep in imports_of(path) if dep in modules and dep != name}
             for name, path in modules.items()}
    assert len(graph) > 80 and sum(map(len, graph.values())) > 200  # the walker saw the library
    assert import_circles(graph) == []


def test_the_circle_check_finds_circles() -> None:
    assert import_circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_circles({"a": {"b"}, "b": set()}) == []


def test_only_the_worker_imports_pipeline() -> None:
    """pipeline/ is the worker's frame processing; the contract others share lives in frames/. (Benchmarks in load/
    measure the worker's parts and may import it.)"""
    def uses_pipeline(path: Path) -> bool:
        return any(dep.startswith("imask.pipeline") for dep in imports_of(path))

    importers = {name for name, path in library_modules().items()
                 if not name.startswith("imask.pipeline") and uses_pipeline(path)}
    importers |= {f"services.{path.parent.name}.{path.stem}" for path in (REPO_ROOT / "services").glob("*/*.py")
                  if uses_pipeline(path)}
    assert importers == {"services.worker.service"}


def test_no_service_imports_a_kafka_client() -> None:
    """Consumers, producers and their offsets live in imask.streaming (the features stream's Quix application in
    imask.features); a service wires them."""
    kafka_clients = ("confluent_kafka", "kafka", "quixstreams")
    for path in sorted((REPO_ROOT / "services").glob("*/*.py")):
        clients = {name for name in all_imports_of(path) if name.split(".")[0] in kafka_clients}
        assert clients == set(), path
