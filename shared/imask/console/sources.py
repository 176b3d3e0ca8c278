"""The services the console reads and changes, each behind a small client: the ingest's admin API (JSON over
HTTP), the router's ExperimentService and the FeatureService (gRPC, with their API keys), Alertmanager's API v2,
the model registry (MLflow). A source that does not answer is shown as such on its page (`Unavailable`); the
console itself stays up."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import yaml
from google.protobuf.json_format import MessageToDict
from prometheus_client.parser import text_string_to_metric_families

from imask.alerting.deliveries import read_inbox, report
from imask.features.client import FeatureClient
from imask.ops.grpc_auth import client_channel
from imask.ops.http_json import call
from imask.v1 import experiment_service_pb2 as epb
from imask.v1 import experiment_service_pb2_grpc as epb_grpc


class Unavailable(RuntimeError):
    """A source did not answer, or refused; the message says which and why (shown on the page)."""


def _as_dict(message: Any) -> dict[str, Any]:
    return dict(MessageToDict(message, preserving_proto_field_name=True))


def http_json(base: str, method: str, path: str, body: Any = None, token: str = "",
              timeout: float = 5.0) -> tuple[int, Any]:
    """One JSON call (imask.ops.http_json); a source that does not answer, or a bad URL, is `Unavailable`."""
    try:
        return call(base, method, path, body, token, timeout)
    except ValueError as exc:
        raise Unavailable(str(exc)) from None
    except OSError as exc:  # refused, unreachable, timed out
        raise Unavailable(f"{base} does not answer: {getattr(exc, 'reason', exc)}") from None


class IngestAdmin:
    """The ingest's admin API (/cameras): its admin listener, IMASK_INGEST_ADMIN_HOST/PORT, with its token."""

    def __init__(self, url: str, token: str = "") -> None:
        self.url = url
        self.token = token

    def _call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return http_json(self.url, method, path, body, self.token)

    def cameras(self) -> list[dict[str, Any]]:
        code, answer = self._call("GET", "/cameras")
        if code != 200:
            raise Unavailable(f"ingest admin API {self.url}: {code} {answer}")
        return list(answer.get("cameras", []))

    def camera(self, camera_id: str) -> dict[str, Any] | None:
        code, answer = self._call("GET", f"/cameras/{camera_id}")
        if code == 404:
            return None
        if code != 200:
            raise Unavailable(f"ingest admin API {self.url}: {code} {answer}")
        return dict(answer)

    def add(self, fields: dict[str, Any]) -> tuple[int, Any]:
        return self._call("POST", "/cameras", fields)

    def remove(self, camera_id: str) -> tuple[int, Any]:
        return self._call("DELETE", f"/cameras/{camera_id}")


class Experiments:
    """The router's ExperimentService."""

    def __init__(self, address: str, api_key: str = "", timeout_s: float = 10.0) -> None:
        self.address = address
        self.channel = client_channel(address, None, None, None)
        self.stub = epb_grpc.ExperimentServiceStub(self.channel)  # type: ignore[no-untyped-call]
        self.metadata = [("authorization", f"Bearer {api_key}")] if api_key else []
        self.timeout_s = timeout_s

    def _call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        try:
            return getattr(self.stub, method)(request, timeout=timeout or self.timeout_s, metadata=self.metadata)
        except grpc.RpcError as exc:
            raise Unavailable(f"router {self.address}: {exc.code().name}: {exc.details()}") from None

    def summaries(self) -> list[dict[str, Any]]:
        """Every experiment's ExperimentResults as a dict, newest first."""
        listed = self._call("List", epb.ExperimentRef())
        found = []
        for status in listed.experiments:
            found.append(_as_dict(self._call("Results", epb.ExperimentRef(name=status.spec.name), 30)))
        return list(reversed(found))

    def change(self, action: str, name: str, reason: str) -> dict[str, Any]:
        method = {"promote": "Promote", "rollback": "Rollback"}[action]
        return _as_dict(self._call(method, epb.ChangeRequest(name=name, reason=reason), 60))

    def close(self) -> None:
        self.channel.close()


class Features:
    """The FeatureService (`imask features`): one camera's operators features."""

    def __init__(self, address: str, api_key: str = "") -> None:
        self.address = address
        self.client = FeatureClient(address, api_key=api_key or None, timeout_s=3.0)

    def camera(self, camera_id: str) -> dict[str, Any]:
        try:
            reply = self.client.get([camera_id])
        except grpc.RpcError as exc:
            raise Unavailable(f"features service {self.address}: {exc.code().name}: {exc.details()}") from None
        return _as_dict(reply.cameras[0]) if reply.cameras else {}

    def close(self) -> None:
        self.client.close()


class Alertmanager:
    """Alertmanager's API v2 (open alerts and the receivers their routes chose), its own delivery counters per
    integration (what it sent and what failed, from its /metrics), and, where an alert inbox keeps the notifications
    (the local stack's), which alert each receiver confirmed getting."""

    def __init__(self, url: str, inbox_dir: Path | None = None) -> None:
        self.url = url
        self.inbox_dir = inbox_dir

    def alerts(self) -> list[dict[str, Any]]:
        code, answer = http_json(self.url, "GET", "/api/v2/alerts")
        if code != 200 or not isinstance(answer, list):
            raise Unavailable(f"Alertmanager {self.url}: {code} {answer}")
        return answer

    def deliveries(self) -> dict[str, dict[str, float]]:
        """Per integration (webhook, slack, email): notifications sent and failed since Alertmanager started."""
        try:
            with urllib.request.urlopen(self.url.rstrip("/") + "/metrics", timeout=5.0) as resp:  # nosec B310
                text = resp.read().decode()
        except (OSError, ValueError) as exc:
            raise Unavailable(f"Alertmanager {self.url}/metrics: {getattr(exc, 'reason', exc)}") from None
        # Alertmanager counts every integration it knows; the page lists those its receivers use.
        code, status = http_json(self.url, "GET", "/api/v2/status")
        original = status.get("config", {}).get("original", "") if code == 200 and isinstance(status, dict) else ""
        receivers = (yaml.safe_load(original) or {}).get("receivers", []) if original else []
        used = {key.removesuffix("_configs") for r in receivers if isinstance(r, dict) for key in r
                if key.endswith("_configs")}
        counts: dict[str, dict[str, float]] = {name: {"sent": 0.0, "failed": 0.0} for name in used}
        wanted = {"alertmanager_notifications": "sent", "alertmanager_notifications_failed": "failed"}
        for family in text_string_to_metric_families(text):
            for sample in family.samples if family.name in wanted else ():
                if sample.name.endswith("_total") and sample.labels.get("integration") in counts:
                    row = counts.setdefault(sample.labels["integration"], {"sent": 0.0, "failed": 0.0})
                    row[wanted[family.name]] += sample.value
        return counts

    def confirmed(self, since: float = 0.0) -> dict[tuple[str, str], dict[str, list[str]]]:
        """(alertname, camera) -> receiver -> the statuses (firing, resolved) the inbox got; {} without one."""
        if self.inbox_dir is None:
            return {}
        rows = report([], read_inbox(self.inbox_dir, since), since)
        return {(row["alertname"], row["camera"]): row["delivered"] for row in rows}


class Models:
    """The model registry: versions and their evaluations, cached for `cache_s` (each evaluation is an MLflow
    artifact download)."""

    def __init__(self, uri: str, name: str, cache_s: float = 30.0) -> None:
        self.uri = uri
        self.name = name
        self.cache_s = cache_s
        self._cached: tuple[float, list[dict[str, Any]], dict[str, dict[str, dict[str, Any]]]] | None = None

    def read(self) -> tuple[list[dict[str, Any]], dict[str, dict[str, dict[str, Any]]]]:
        if self._cached and time.monotonic() - self._cached[0] < self.cache_s:
            return self._cached[1], self._cached[2]
        try:
            from imask.registry.refs import ModelRef
            from imask.registry.store import Registry

            registry = Registry(self.uri)
            versions = [v.as_dict() for v in registry.versions(self.name)]
            evaluations = {v["version"]: registry.evaluations(ModelRef(self.name, version=v["version"]))
                           for v in versions}
        except Exception as exc:  # MLflow away or refusing: the page says so
            raise Unavailable(f"model registry {self.uri}: {type(exc).__name__}: {str(exc)[:200]}") from None
        self._cached = (time.monotonic(), versions, evaluations)
        return versions, evaluations

    def forget(self) -> None:
        self._cached = None


def first_error(errors: Sequence[str]) -> str:
    return errors[0] if errors else ""
