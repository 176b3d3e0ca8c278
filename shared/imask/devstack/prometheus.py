"""Prometheus of the local stack (Debian's `prometheus`): scrapes every service listed in
`<state>/prometheus/targets/*.json` (file service discovery, written by `imask run` and `imask scale` through
`register_target`), evaluates deploy/prometheus/rules.yml every 5 s and sends to the stack's Alertmanager. Its
config is generated here."""

from __future__ import annotations

import json
import shutil
import urllib.request
from pathlib import Path
from typing import ClassVar

import yaml

from imask.devstack.server import OneProcessServer
from imask.devstack.settings import REPO_ROOT, StackSettings
from imask.devstack.supervisor import StackError

RULES = REPO_ROOT / "deploy" / "prometheus" / "rules.yml"
HINT = "install Debian's prometheus and prometheus-alertmanager (`make system-deps`, or apt-get install -y " \
       "prometheus prometheus-alertmanager as root)"


def binary(name: str) -> str:
    for candidate in (f"/usr/bin/{name}", shutil.which(name)):
        if candidate and Path(candidate).is_file():
            return candidate
    raise StackError(f"{name} not found: {HINT}")


def ready_at(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as reply:  # nosec B310: http to loopback
            return bool(reply.status == 200)
    except (OSError, ValueError):
        return False


def service_label(process: str) -> str:
    """The `service` label of a process of the stack: its service's name, every worker (worker-0, worker-1, ...)
    `worker`, as deploy/prometheus's compose and Kubernetes configurations label theirs (the rules select on it)."""
    return "worker" if process == "worker" or process.startswith("worker-") else process


def register_target(s: StackSettings, name: str, port: int, service: str) -> None:
    """Let the stack's Prometheus scrape a service's ops port (file service discovery)."""
    s.prometheus_targets_dir.mkdir(parents=True, exist_ok=True)
    path = s.prometheus_targets_dir / f"{name}.json"
    part = path.with_suffix(".part")
    part.write_text(json.dumps([{"targets": [f"127.0.0.1:{port}"], "labels": {"service": service,
                                                                               "instance": name}}]))
    part.rename(path)  # whole files only: Prometheus may read at any time


def unregister_target(s: StackSettings, name: str) -> None:
    (s.prometheus_targets_dir / f"{name}.json").unlink(missing_ok=True)


def target_health(s: StackSettings, timeout: float = 2.0) -> dict[str, str]:
    """Health of the services Prometheus scrapes by instance (up, down, unknown: not scraped yet); {} when
    Prometheus does not answer."""
    url = f"http://127.0.0.1:{s.prometheus_port}/api/v1/targets?state=active"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:  # nosec B310: http to loopback
            targets = json.loads(reply.read())["data"]["activeTargets"]
    except (OSError, ValueError, KeyError):
        return {}
    return {str(t["labels"].get("instance", "")): str(t.get("health", "")) for t in targets
            if t.get("labels", {}).get("job") == "imask"}


class Prometheus(OneProcessServer):
    name: ClassVar[str] = "prometheus"
    marker: ClassVar[str] = "prometheus.yml"
    port_env: ClassVar[str] = "IMASK_STACK_PROMETHEUS_PORT"
    start_timeout_s: ClassVar[float] = 60.0

    def enabled(self, s: StackSettings) -> bool:
        return s.alerting

    def port(self, s: StackSettings) -> int:
        return s.prometheus_port

    def folder(self, s: StackSettings) -> Path:
        return s.prometheus_dir

    def endpoint(self, s: StackSettings) -> str:
        return f"http://127.0.0.1:{s.prometheus_port}"

    def command(self, s: StackSettings) -> list[str]:
        s.prometheus_targets_dir.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": "5s", "evaluation_interval": "5s"},
            "rule_files": [str(RULES)],
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{s.alertmanager_port}"]}]}]},
            "scrape_configs": [
                {"job_name": "imask", "file_sd_configs": [{"files": [str(s.prometheus_targets_dir / "*.json")],
                                                           "refresh_interval": "5s"}]},
                {"job_name": "prometheus", "static_configs": [{"targets": [f"127.0.0.1:{s.prometheus_port}"]}]},
            ],
        }
        path = s.prometheus_dir / "prometheus.yml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return [binary("prometheus"), f"--config.file={path}", f"--storage.tsdb.path={s.prometheus_dir / 'data'}",
                "--storage.tsdb.retention.time=2d", "--rules.alert.resend-delay=15s",
                f"--web.listen-address=127.0.0.1:{s.prometheus_port}"]

    def answering(self, s: StackSettings) -> bool:
        return ready_at(f"{self.endpoint(s)}/-/ready")


SERVER = Prometheus()
