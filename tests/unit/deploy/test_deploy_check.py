"""make deploy-check's validators: each catches a deliberately broken copy of a file, and the real files pass."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from imask.deploycheck import checks, dockerfile
from imask.deploycheck.checks import REPO_ROOT

CACHE = REPO_ROOT / ".cache" / "tools"
needs_go = pytest.mark.skipif(shutil.which("go") is None and not (CACHE / "kustomize@v5.7.1").is_dir(),
                              reason="needs `go` to install kustomize (make deploy-check installs it)")


def test_the_real_files_pass() -> None:
    assert checks.check_dockerfiles(REPO_ROOT / p for p in checks.DOCKERFILES).ok
    assert checks.check_compose(REPO_ROOT / "docker-compose.yml").ok


@needs_go
def test_the_real_overlays_pass() -> None:
    result = checks.check_kubernetes(REPO_ROOT / "deploy" / "k8s", CACHE)
    assert result.ok, result.problems


@needs_go
def test_kustomize_catches_an_overlay_that_does_not_build(tmp_path: Path) -> None:
    shutil.copytree(REPO_ROOT / "deploy" / "k8s", tmp_path / "k8s")
    (tmp_path / "k8s" / "base" / "hpa.yaml").unlink()  # the base lists it as a resource
    result = checks.check_kubernetes(tmp_path / "k8s", CACHE, overlays=["local"])
    assert not result.ok and "kustomize build failed" in result.problems[0]


@pytest.fixture(scope="module")
def local_docs() -> list[dict[str, Any]]:
    if shutil.which("go") is None and not (CACHE / "kustomize@v5.7.1").is_dir():
        pytest.skip("needs `go` to install kustomize")
    return checks.kustomize_build(REPO_ROOT / "deploy" / "k8s" / "overlays" / "local", CACHE)


def _first(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind)


def test_kubernetes_validate_catches_unknown_and_mistyped_fields(local_docs: list[dict[str, Any]]) -> None:
    schemas = REPO_ROOT / "deploy" / "k8s" / "schemas"
    docs = copy.deepcopy(local_docs)
    deployment = _first(docs, "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["prot"] = "ops"
    _first(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] = [1]
    problems = checks.validate_manifests(docs, schemas)
    assert any("'prot' was unexpected" in p for p in problems), problems
    assert any("PodDisruptionBudget" in p and "maxUnavailable" in p for p in problems), problems


def test_keda_schema_catches_a_broken_scaled_object(local_docs: list[dict[str, Any]]) -> None:
    schemas = REPO_ROOT / "deploy" / "k8s" / "schemas"
    scaled = copy.deepcopy(_first(local_docs, "ScaledObject"))
    assert checks.validate_manifests([scaled], schemas) == []
    scaled["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 50  # KEDA's metadata values are strings
    scaled["spec"]["maxReplicas"] = 4  # an HPA field, not a ScaledObject one
    problems = checks.validate_manifests([scaled], schemas)
    assert any("lagThreshold" in p and "not of type 'string'" in p for p in problems), problems
    assert any("'maxReplicas' was unexpected" in p for p in problems), problems
    del scaled["spec"]["scaleTargetRef"]
    assert any("scaleTargetRef" in p for p in checks.validate_manifests([scaled], schemas))


def test_a_kind_without_a_schema_is_refused() -> None:
    doc = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "metadata": {"name": "x"}, "spec": {}}
    assert "no schema" in checks.validate_manifests([doc], REPO_ROOT / "deploy" / "k8s" / "schemas")[0]


def test_compose_schema_catches_a_broken_file(tmp_path: Path) -> None:
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    compose["services"]["worker"]["stop_grace_period"] = {"seconds": 60}
    compose["services"]["redis"]["healtcheck"] = compose["services"]["redis"].pop("healthcheck")
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(compose))
    problems = "\n".join(checks.check_compose(path).problems)
    assert "stop_grace_period" in problems and "healtcheck" in problems


GOOD_WORKFLOW = """name: ci
on: [push]
jobs:
  test:
    runs-on: ubuntu-24.04
    steps:
      - uses: actions/checkout@v4
      - run: make test
"""


@needs_go
def test_workflow_checks_catch_a_broken_workflow(tmp_path: Path) -> None:
    workflows = tmp_path / ".github" / "workflows"
    assert checks.check_workflows(workflows, CACHE).skipped  # none yet: skipped, not failed
    workflows.mkdir(parents=True)
    (workflows / "ci.yml").write_text(GOOD_WORKFLOW)
    assert checks.check_workflows(workflows, CACHE).ok
    # actionlint: an expression on an unknown context; the schema: a job without runs-on.
    (workflows / "ci.yml").write_text(GOOD_WORKFLOW.replace("make test", "echo ${{ secretz.TOKEN }}")
                                      .replace("    runs-on: ubuntu-24.04\n", ""))
    problems = "\n".join(checks.check_workflows(workflows, CACHE).problems)
    assert "actionlint" in problems and "secretz" in problems
    assert "runs-on" in problems


def test_dockerfile_rules_catch_each_broken_file(tmp_path: Path) -> None:
    real = (REPO_ROOT / "Dockerfile").read_text()
    assert dockerfile.lint(REPO_ROOT / "Dockerfile") == []
    cases = {
        "base image not pinned": real.replace("python:3.11.14-slim-bookworm", "python:3.11-slim", 1)
                                     .replace("FROM ${PYTHON_IMAGE} AS build", "FROM python AS build"),
        "the latest tag": real.replace("python:3.11.14-slim-bookworm", "python:latest"),
        "no USER": real.replace("USER 10001:10001\n", ""),
        "runs as root": real.replace("USER 10001:10001", "USER root"),
        "ADD from a URL": real.replace("COPY protos protos", "ADD https://example.com/protos.tar.gz protos"),
        "not pinned (name==version": real.replace("-c requirements.lock '.[detectors]'", "onnxruntime '.[detectors]'"),
    }
    for expected, text in cases.items():
        path = tmp_path / "Dockerfile"
        path.write_text(text)
        problems = dockerfile.lint(path)
        assert any(expected in p for p in problems), (expected, problems)
