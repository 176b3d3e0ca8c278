"""`make deploy-check`: the deployment files validated offline, each check a function that tests can call on a
broken copy.

- kustomize: every overlay of deploy/k8s builds;
- kubernetes: kubernetes-validate's strict schemas (Kubernetes pinned to K8S_VERSION) on each overlay's output, and
  the custom resources (KEDA ScaledObject) against the schemas vendored in deploy/k8s/schemas, strict alike;
- compose: docker-compose.yml against the compose-spec schema check-jsonschema vendors;
- workflows: actionlint and the GitHub workflow schema on .github/workflows/*.yml (skipped when there are none);
- dockerfiles: imask.deploycheck.dockerfile on every Dockerfile.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from imask.deploycheck import dockerfile, tools

REPO_ROOT = Path(__file__).resolve().parents[3]
K8S_VERSION = "1.33.0"
OVERLAYS = ("local", "staging", "production")
CRD_SCHEMAS = {("keda.sh/v1alpha1", "ScaledObject"): "keda.sh-scaledobject-v1alpha1.json"}
DOCKERFILES = ("Dockerfile", "Dockerfile.gpu", "deploy/mlflow/Dockerfile")


@dataclass
class Result:
    name: str
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: bool = False
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems


def _bin(name: str) -> str:
    """A console script of the running environment (check-jsonschema), next to its python."""
    return str(Path(sys.executable).parent / name)


def _run(command: list[str]) -> tuple[int, str]:
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


# ---------------------------------------------------------------------------------------------------- kubernetes
def kustomize_build(overlay: Path, cache: Path) -> list[dict[str, Any]]:
    """The overlay's manifests; raises RuntimeError with kustomize's message when it does not build."""
    code, out = _run([str(tools.ensure(tools.KUSTOMIZE, cache)), "build", str(overlay)])
    if code:
        raise RuntimeError(out)
    return [doc for doc in yaml.safe_load_all(out) if doc]


def _strict(schema: Any) -> Any:
    """A structural schema made strict: objects listing properties accept no others (kubectl --validate=strict)."""
    if isinstance(schema, dict):
        out = {key: _strict(value) for key, value in schema.items()}
        if ("properties" in out and "additionalProperties" not in out
                and not out.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


def crd_schema(api_version: str, kind: str, schemas_dir: Path) -> dict[str, Any] | None:
    name = CRD_SCHEMAS.get((api_version, kind))
    if name is None:
        return None
    schema: dict[str, Any] = _strict(json.loads((schemas_dir / name).read_text()))
    # metadata is the API server's ObjectMeta, checked there; apiVersion and kind must be these.
    schema["properties"]["metadata"] = {"type": "object"}
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata", "spec"})
    return schema


def validate_manifests(docs: Iterable[dict[str, Any]], schemas_dir: Path, version: str = K8S_VERSION) -> list[str]:
    """Problems of each manifest: built-in kinds against kubernetes-validate's strict schemas of `version`, the
    vendored custom resources against their schemas."""
    import kubernetes_validate

    problems = []
    for doc in docs:
        api_version, kind = doc.get("apiVersion", ""), doc.get("kind", "")
        name = f"{kind}/{doc.get('metadata', {}).get('name', '?')}"
        schema = crd_schema(api_version, kind, schemas_dir)
        if schema is not None:
            validator = jsonschema.Draft7Validator(schema)
            problems += [f"{name}: {'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
                         for e in validator.iter_errors(doc)]
            continue
        try:
            kubernetes_validate.validate(copy.deepcopy(doc), version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(f"{name}: no schema for {api_version} {kind} (Kubernetes {version}, or vendor its CRD "
                            "schema into deploy/k8s/schemas)")
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(map(str, exc.path)) or "(root)"
            problems.append(f"{name}: {path}: {exc.message}")
    return problems


def check_kubernetes(k8s_dir: Path, cache: Path, overlays: Iterable[str] = OVERLAYS) -> Result:
    result = Result("kubernetes")
    for overlay in overlays:
        try:
            docs = kustomize_build(k8s_dir / "overlays" / overlay, cache)
        except RuntimeError as exc:
            result.problems.append(f"{overlay}: kustomize build failed: {exc}")
            continue
        problems = validate_manifests(docs, k8s_dir / "schemas")
        result.problems += [f"{overlay}: {p}" for p in problems]
        result.notes.append(f"{overlay}: {len(docs)} manifests")
    return result


# ------------------------------------------------------------------------------------------------------- compose
def check_compose(path: Path) -> Result:
    result = Result("compose")
    code, out = _run([_bin("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)])
    if code:
        result.problems.append(out)
    return result


# ----------------------------------------------------------------------------------------------------- workflows
def check_workflows(workflows_dir: Path, cache: Path) -> Result:
    result = Result("workflows")
    files = sorted([*workflows_dir.glob("*.yml"), *workflows_dir.glob("*.yaml")]) if workflows_dir.is_dir() else []
    if not files:
        result.skipped = True
        result.notes.append(f"no workflows in {workflows_dir}: skipped")
        return result
    code, out = _run([str(tools.ensure(tools.ACTIONLINT, cache)), "-no-color", *map(str, files)])
    if code:
        result.problems.append(f"actionlint: {out}")
    code, out = _run([_bin("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", *map(str, files)])
    if code:
        result.problems.append(out)
    result.notes.append(f"{len(files)} workflows")
    return result


# --------------------------------------------------------------------------------------------------- dockerfiles
def check_dockerfiles(paths: Iterable[Path]) -> Result:
    result = Result("dockerfiles")
    for path in paths:
        result.problems += dockerfile.lint(path)
    return result


# ---------------------------------------------------------------------------------------------------------- main
def run_all(root: Path = REPO_ROOT, cache: Path | None = None) -> list[Result]:
    cache = cache or root / ".cache" / "tools"
    checks: list[tuple[str, Callable[[], Result]]] = [
        ("dockerfiles", lambda: check_dockerfiles(root / p for p in DOCKERFILES)),
        ("compose", lambda: check_compose(root / "docker-compose.yml")),
        ("kubernetes", lambda: check_kubernetes(root / "deploy" / "k8s", cache)),
        ("workflows", lambda: check_workflows(root / ".github" / "workflows", cache)),
    ]
    results = []
    for _name, check in checks:
        started = time.perf_counter()
        result = check()
        result.seconds = time.perf_counter() - started
        results.append(result)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m imask.deploycheck", description=__doc__.splitlines()[0])
    parser.add_argument("--install-tools", action="store_true", help="only install the Go tools into the cache")
    args = parser.parse_args(argv)
    cache = REPO_ROOT / ".cache" / "tools"
    if args.install_tools:
        for tool in tools.TOOLS:
            print(f"{tool.name} {tool.version}: {tools.ensure(tool, cache)}")
        return 0
    failed = False
    for result in run_all(cache=cache):
        status = "skipped" if result.skipped else "ok" if result.ok else "FAILED"
        notes = f" ({'; '.join(result.notes)})" if result.notes else ""
        print(f"deploy-check {result.name}: {status} in {result.seconds:.1f} s{notes}")
        for problem in result.problems:
            print(f"  {problem}")
        failed |= not result.ok
    return 1 if failed else 0
