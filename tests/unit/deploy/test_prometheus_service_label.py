"""Every `service="..."` a rule or dashboard selects on is a `service` label the scrape configurations give a
target: compose's (deploy/prometheus/prometheus.yml, DNS names of its services), Kubernetes' (prometheus-k8s.yml, the
pods' app.kubernetes.io/name) and the local stack's (file-SD targets, devstack.prometheus.service_label). Without it
a rule matching service="worker" never matches."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from imask.devstack.prometheus import service_label

ROOT = Path(__file__).resolve().parents[3]
PROMETHEUS = ROOT / "deploy" / "prometheus"
MATCHER = re.compile(r'\bservice\s*=\s*"([^"]*)"')


def relabel(labels: dict[str, str], configs: list[dict[str, Any]]) -> dict[str, str] | None:
    """Prometheus' relabelling (replace and keep, the actions these files use); None when the target is dropped."""
    labels = dict(labels)
    for cfg in configs:
        action = cfg.get("action", "replace")
        value = cfg.get("separator", ";").join(labels.get(s, "") for s in cfg.get("source_labels", []))
        match = re.fullmatch(cfg.get("regex", "(.*)"), value)
        if action == "keep":
            if match is None:
                return None
        elif action == "replace":
            if match is not None:
                replacement = re.sub(r"\$\{?(\d+)\}?", lambda m: f"\\{m.group(1)}", cfg.get("replacement", "$1"))
                result = match.expand(replacement)
                if result:
                    labels[cfg["target_label"]] = result
                else:
                    labels.pop(cfg["target_label"], None)
        else:
            raise AssertionError(f"relabel action {action} not simulated")
    return labels


def compose_services() -> dict[str, str]:
    """Compose DNS name -> the service label prometheus.yml gives its targets."""
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    out = {}
    for job in config["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            for name in sd["names"]:
                labels = relabel({"__meta_dns_name": name, "__address__": f"{name}:{sd['port']}"},
                                 job.get("relabel_configs", []))
                assert labels is not None and labels.get("service"), f"{name}: no service label"
                out[name] = labels["service"]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert set(out) <= set(compose), f"names that are no compose service: {set(out) - set(compose)}"
    return out


def k8s_pods() -> list[dict[str, Any]]:
    """Pod templates of deploy/k8s (base and components) annotated for scraping."""
    pods = []
    for path in sorted((ROOT / "deploy" / "k8s").rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            template = (doc or {}).get("spec", {}).get("template") if isinstance(doc, dict) else None
            if template and template.get("metadata", {}).get("annotations", {}).get("prometheus.io/scrape") == "true":
                pods.append(template["metadata"])
    return pods


def k8s_services() -> dict[str, str]:
    """app.kubernetes.io/name -> the service label prometheus-k8s.yml gives the pod's target."""
    config = yaml.safe_load((PROMETHEUS / "prometheus-k8s.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j.get("kubernetes_sd_configs")]
    out = {}
    for meta in k8s_pods():
        name = meta["labels"]["app.kubernetes.io/name"]
        labels = {"__meta_kubernetes_pod_annotation_prometheus_io_scrape": "true",
                  "__meta_kubernetes_pod_annotation_prometheus_io_port": meta["annotations"]["prometheus.io/port"],
                  "__meta_kubernetes_pod_label_app_kubernetes_io_name": name, "__meta_kubernetes_pod_ip": "10.0.0.7",
                  "__meta_kubernetes_namespace": "imask", "__meta_kubernetes_pod_name": f"imask-{name}-0",
                  "__address__": "10.0.0.7"}
        result = relabel(labels, job["relabel_configs"])
        assert result is not None, f"{name}: dropped"
        assert result["__address__"] == f"10.0.0.7:{meta['annotations']['prometheus.io/port']}"
        out[name] = result["service"]
    return out


def selected_services() -> set[str]:
    """service="..." values in the rules and the dashboards' queries."""
    texts = [(PROMETHEUS / "rules.yml").read_text()]
    for path in (ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"):
        texts.append(json.dumps(json.loads(path.read_text())))
    return {m for t in texts for m in MATCHER.findall(t.replace('\\"', '"'))}


def test_compose_targets_carry_their_service_and_workers_share_one() -> None:
    services = compose_services()
    assert services["worker"] == services["worker-gpu"] == "worker"
    assert services["drift"] == "drift" and services["mask-api"] == "mask-api"


def test_k8s_pods_carry_their_service_and_workers_share_one() -> None:
    services = k8s_services()
    assert {"worker", "worker-realtime", "worker-gpu"} <= set(services)
    assert {services[n] for n in ("worker", "worker-realtime", "worker-gpu")} == {"worker"}
    assert services["features-stream"] == "features-stream"


def test_every_selected_service_is_a_label_each_deployment_gives() -> None:
    selected = selected_services()
    assert "worker" in selected  # the rules do select on it
    local = {service_label(p) for p in ("worker-0", "worker-1", "ingest", "recorder", "features-stream", "features",
                                        "alerting")}  # the processes imask run starts
    for where, produced in (("compose", set(compose_services().values())),
                            ("kubernetes", set(k8s_services().values())), ("local stack", local)):
        missing = selected - produced
        assert not missing, f"{where}: service={sorted(missing)} selected but no target carries it"


def test_no_metric_has_a_label_the_scrape_sets() -> None:
    """A metric's own label named like a target label (service, instance, job, namespace, pod) would be renamed
    exported_<name> by Prometheus: queries on it would find nothing."""
    import ast

    from promql import CODE

    target_labels = {"service", "instance", "job", "namespace", "pod"}
    clashes = []
    for root in CODE:
        for path in root.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if not isinstance(node, ast.Call) or len(node.args) < 3:
                    continue
                kind = node.func.id if isinstance(node.func, ast.Name) else (
                    node.func.attr if isinstance(node.func, ast.Attribute) else "")
                name, labels = node.args[0], node.args[2]
                if kind in ("Counter", "Gauge", "Histogram", "Summary") and isinstance(name, ast.Constant) \
                        and isinstance(labels, (ast.List, ast.Tuple)):
                    own = {e.value for e in labels.elts if isinstance(e, ast.Constant)}
                    clashes += [f"{path.name}: {name.value}{{{label}}}" for label in sorted(own & target_labels)]
    assert not clashes, clashes
