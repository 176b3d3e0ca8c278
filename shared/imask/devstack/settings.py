"""Ports and paths of the local stack (:class:`StackSettings`, ``IMASK_STACK_*``) and of each Kafka node."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from imask.devstack.supervisor import StackError, port_bindable

REPO_ROOT = Path(__file__).resolve().parents[3]
"""Repository root (``shared/imask/devstack/settings.py`` -> ``parents[3]``); anchors the default paths."""

_Port = Annotated[int, Field(ge=1, le=65535)]


class StackSettings(BaseSettings):
    """Ports and paths of the local stack, overridable with ``IMASK_STACK_*`` env variables.

    Ports are configurable so the stack can coexist with another Kafka/Redis on the machine.
    With ``kafka_brokers`` = N, node ``i`` (0-based) listens on ``kafka_port + 2i`` and
    ``kafka_controller_port + 2i``: the defaults give 9092/9093, 9094/9095, 9096/9097.
    """

    model_config = SettingsConfigDict(env_prefix="IMASK_STACK_", extra="forbid")

    state_dir: Path = Field(
        default_factory=lambda: REPO_ROOT / ".stack",
        description="Folder holding jars, Kafka data, logs and pid files.",
    )
    kafka_port: _Port = 9092
    kafka_controller_port: _Port = 9093
    kafka_brokers: Annotated[int, Field(ge=1, le=9)] = 1
    kafka_libs: Path | None = Field(
        None, description="Folder of the Kafka jars (default <state_dir>/kafka/libs): another stack's, to share one "
        "download"
    )
    redis_port: _Port = 6390
    mlflow_port: _Port = 5590
    mlflow: bool = Field(True, description="Also run the MLflow tracking server (model registry); throwaway "
                         "stacks for broker faults leave it out")
    alerting: bool = Field(True, description="Also run Prometheus, Alertmanager and the alert inbox; throwaway "
                           "stacks leave them out")
    prometheus_port: _Port = 9490
    alertmanager_port: _Port = 9493
    alert_inbox_port: _Port = 9495
    alert_smtp_port: _Port = 9525
    alert_http_base: str = Field("", description="Base URL of the webhook receivers (default: the alert inbox)")
    alert_slack_url: str = Field("", description="Slack incoming-webhook URL (default: the alert inbox's /slack)")
    alert_smarthost: str = Field("", description="SMTP host:port of the mail receivers (default: the alert inbox)")
    alert_webhook_token: str = Field("local", description="Bearer token the webhook receivers get")
    console: bool = Field(True, description="Also run the operators' console (`imask console`); throwaway stacks "
                          "leave it out")
    console_port: _Port = 8470
    run_ingest_admin_port: _Port = Field(9401, description="Camera admin API port of the ingest `imask run` starts "
                                         "(the stack's console lists its cameras there); another free one when taken")
    kafka_version: Annotated[str, Field(pattern=r"^\d+\.\d+\.\d+$")] = "4.1.1"
    kafka_heap: Annotated[str, Field(pattern=r"^\d+[kKmMgG]$")] = "512m"
    start_timeout_s: Annotated[float, Field(gt=0)] = 90.0

    @model_validator(mode="after")
    def _distinct_ports(self) -> StackSettings:
        """Kafka cannot share a port between its listeners; catch that before a JVM start."""
        ports = self.ports
        if len(set(ports)) != len(ports):
            raise ValueError(
                f"kafka_port, kafka_controller_port and redis_port must differ (with {self.kafka_brokers} brokers "
                f"node i uses kafka_port + 2i and kafka_controller_port + 2i), got {ports}"
            )
        if max(ports) > 65535:
            raise ValueError(f"ports beyond 65535: {ports}")
        return self

    @classmethod
    def on_free_ports(cls, state_dir: Path, brokers: int = 1, **fields: object) -> StackSettings:
        """Settings of a throwaway stack (tests, fault scenarios) in ``state_dir`` on ports nobody uses now: never
        the shared default stack's."""
        fields.setdefault("mlflow", False)
        fields.setdefault("alerting", False)
        fields.setdefault("console", False)
        for _ in range(200):
            base = secrets.randbelow(20000) + 30000
            candidate = cls(state_dir=state_dir, kafka_brokers=brokers, kafka_port=base,
                            kafka_controller_port=base + 1, redis_port=base + 2 * brokers,
                            mlflow_port=base + 2 * brokers + 1, **fields)  # type: ignore[arg-type]
            if all(port_bindable(port) for port in candidate.ports):
                return candidate
        raise StackError("no free block of ports found for a throwaway stack")

    @property
    def ports(self) -> list[int]:
        """Every port this stack listens on (a new server adds its own here)."""
        return [*self.broker_ports, *self.controller_ports, self.redis_port, *self.mlflow_ports, *self.alerting_ports,
                *([self.console_port] if self.console else [])]

    @property
    def alerting_ports(self) -> list[int]:
        return [self.prometheus_port, self.alertmanager_port, self.alert_inbox_port, self.alert_smtp_port] \
            if self.alerting else []

    @property
    def alertmanager_url(self) -> str:
        return f"http://127.0.0.1:{self.alertmanager_port}"

    @property
    def prometheus_dir(self) -> Path:
        return self.state_dir / "prometheus"

    @property
    def prometheus_targets_dir(self) -> Path:
        """File service discovery: one JSON file per running service (`imask run`, `imask scale`)."""
        return self.prometheus_dir / "targets"

    @property
    def alertmanager_dir(self) -> Path:
        return self.state_dir / "alertmanager"

    @property
    def alert_inbox_dir(self) -> Path:
        return self.state_dir / "alert-inbox"

    @property
    def console_dir(self) -> Path:
        return self.state_dir / "console"

    @property
    def console_token_file(self) -> Path:
        return self.console_dir / "token"

    @property
    def mlflow_ports(self) -> list[int]:
        return [self.mlflow_port] if self.mlflow else []

    @property
    def mlflow_uri(self) -> str:
        """MLflow tracking (and registry) URI of this stack's server."""
        return f"http://127.0.0.1:{self.mlflow_port}"

    @property
    def mlflow_dir(self) -> Path:
        return self.state_dir / "mlflow"

    @property
    def broker_ports(self) -> list[int]:
        return [self.kafka_port + 2 * i for i in range(self.kafka_brokers)]

    @property
    def controller_ports(self) -> list[int]:
        return [self.kafka_controller_port + 2 * i for i in range(self.kafka_brokers)]

    @property
    def bootstrap_servers(self) -> str:
        """Kafka ``bootstrap.servers`` value for clients of this stack (every broker, so any one may be down)."""
        return ",".join(f"127.0.0.1:{port}" for port in self.broker_ports)

    @property
    def redis_url(self) -> str:
        """Redis URL (database 0) for clients of this stack."""
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def replication_factor(self) -> int:
        """Replication factor of topics on this cluster: 3 (or N when fewer)."""
        return min(3, self.kafka_brokers)

    @property
    def min_insync_replicas(self) -> int:
        """Brokers' default ``min.insync.replicas``: 2 from three brokers on (one may die), else 1."""
        return 2 if self.kafka_brokers >= 3 else 1

    @property
    def kafka_dir(self) -> Path:
        return self.state_dir / "kafka"

    @property
    def cluster_dir(self) -> Path:
        """Cluster id and nodes: ``kafka/`` itself for one broker (the historical layout), else ``kafka/cluster-N``."""
        return self.kafka_dir if self.kafka_brokers == 1 else self.kafka_dir / f"cluster-{self.kafka_brokers}"

    @property
    def kafka_libs_dir(self) -> Path:
        return self.kafka_libs if self.kafka_libs is not None else self.kafka_dir / "libs"

    @property
    def brokers(self) -> list[BrokerNode]:
        return [self.broker(i) for i in range(self.kafka_brokers)]

    def broker(self, index: int) -> BrokerNode:
        """Node ``index`` (0-based; its KRaft node id is ``index + 1``)."""
        if not 0 <= index < self.kafka_brokers:
            raise StackError(f"no broker {index}: this stack has {self.kafka_brokers} (0..{self.kafka_brokers - 1})")
        node_dir = self.kafka_dir if self.kafka_brokers == 1 else self.cluster_dir / f"node-{index + 1}"
        return BrokerNode(index, index + 1, self.broker_ports[index], self.controller_ports[index], node_dir)

    @property
    def redis_dir(self) -> Path:
        return self.state_dir / "redis"


@dataclass(frozen=True)
class BrokerNode:
    """One Kafka node (broker and controller) of the stack, with its own files."""

    index: int
    node_id: int
    port: int
    controller_port: int
    dir: Path

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    @property
    def logs_dir(self) -> Path:
        return self.dir / "logs"

    @property
    def properties(self) -> Path:
        return self.dir / "server.properties"

    @property
    def pid_file(self) -> Path:
        return self.dir / "kafka.pid"

    @property
    def console_log(self) -> Path:
        return self.dir / "kafka.out"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"
