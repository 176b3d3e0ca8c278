"""Compose, Kubernetes and Prometheus files stay consistent with the code (no Docker engine here: static checks)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from imask.cli.main import build_parser
from imask.devstack.settings import REPO_ROOT
from imask.ops.settings import check_environment

SERVICE_COMMANDS = {"worker", "ingest", "recorder", "mask-api", "router"}


def _yaml_docs(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    return doc


def test_compose_services_use_real_commands_and_known_settings() -> None:
    services = _compose()["services"]
    parser = build_parser()
    imask_services = {name: svc for name, svc in services.items() if "build" in svc}
    assert set(imask_services) == SERVICE_COMMANDS
    for name, svc in imask_services.items():
        parser.parse_args(svc["command"])  # exits (fails the test) on an unknown command or flag
        check_environment({k: str(v) for k, v in svc["environment"].items()})
        assert "healthcheck" in svc, f"{name} has no healthcheck"
    for name, svc in services.items():
        for dep, cond in svc.get("depends_on", {}).items():
            assert dep in services and cond["condition"] == "service_healthy", f"{name} -> {dep}"


def test_compose_keeps_the_camera_admin_api_off_the_network() -> None:
    """Metrics are exposed to Prometheus; the camera admin API has its own listener, loopback and unpublished."""
    ingest = _compose()["services"]["ingest"]
    env = ingest["environment"]
    assert env["IMASK_INGEST_OPS_HOST"] == "0.0.0.0"
    assert env["IMASK_INGEST_ADMIN_HOST"] in {"127.0.0.1", "::1", "localhost"}
    assert env["IMASK_INGEST_ADMIN_PORT"] != env["IMASK_INGEST_OPS_PORT"]
    published = " ".join(str(p) for p in ingest.get("ports", []))
    assert env["IMASK_INGEST_ADMIN_PORT"] not in published


def test_k8s_manifests_parse_and_use_known_settings() -> None:
    docs = [doc for path in sorted((REPO_ROOT / "deploy" / "k8s").glob("*.yaml")) for doc in _yaml_docs(path)]
    kinds = {doc["kind"] for doc in docs}
    assert {"Deployment", "ConfigMap", "ScaledObject"} <= kinds
    for doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= set(doc)
        if doc["kind"] == "ConfigMap":
            check_environment(doc["data"])
        if doc["kind"] == "Deployment":
            pod = doc["spec"]["template"]["spec"]
            assert pod["terminationGracePeriodSeconds"] >= 30
            for container in pod["containers"]:
                if "args" not in container:  # not one of ours (the registry's MLflow server)
                    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
                    continue
                build_parser().parse_args(container["args"])
                check_environment({e["name"]: "x" for e in container.get("env", [])})
                assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"


# Metrics the rules watch that a service still to come exports (the drift monitor; rules.yml documents the names).
PLANNED_METRICS = {"imask_drift_breach"}


def test_alert_rules_reference_metrics_the_services_export() -> None:
    from imask.alerting import metrics as alerting_metrics
    from imask.features import stream
    from imask.ops import metrics

    exported = set(PLANNED_METRICS)
    for module in (metrics, alerting_metrics, stream):
        for value in vars(module).values():
            name = getattr(value, "_name", None)
            if isinstance(name, str):
                exported |= {name, f"{name}_total", f"{name}_bucket", f"{name}_count", f"{name}_sum"}
    rules = yaml.safe_load((REPO_ROOT / "deploy" / "prometheus" / "rules.yml").read_text())
    used = set()
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert rule.get("alert") or rule.get("record"), rule
            if "alert" in rule:
                assert rule["expr"] and rule["labels"]["severity"] in {"page", "ticket", "none"}
            used |= set(re.findall(r"\bimask_[a-z_]+", rule["expr"]))
    assert used and used <= exported, used - exported


@pytest.mark.parametrize("name", ["README.md", "docs/ARCHITECTURE.md", "Makefile", "docker-compose.yml",
                                  "Dockerfile", ".ci/run"])
def test_required_files_exist(name: str) -> None:
    assert (REPO_ROOT / name).is_file()


def test_example_cameras_file_is_valid() -> None:
    from imask.cameras.config import load_cameras_file
    from imask.ops.settings import CameraDefaults

    cameras = load_cameras_file(REPO_ROOT / "deploy" / "cameras.yaml", CameraDefaults())
    assert [c.camera_id for c in cameras] == ["sample"] and cameras[0].fps == 15 and cameras[0].loop


def test_image_can_run_every_service() -> None:
    """What the image installs is enough for ingest (PyYAML for cameras files), and the recordings volume is
    writable by the user it runs as; ingest has time to drain."""
    import tomllib

    deps = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.lower().startswith("pyyaml") for d in deps)
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    user = dockerfile.split("USER ")[-1].split()[0]
    assert f"--uid {user}" in dockerfile and "chown imask /recordings" in dockerfile
    services = _compose()["services"]
    assert services["recorder"]["command"][-1] == "/recordings"
    assert int(services["ingest"]["stop_grace_period"].rstrip("s")) >= 90
