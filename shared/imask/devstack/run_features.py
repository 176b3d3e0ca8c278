"""`imask run`'s camera features: the features stream and the FeatureService with the run's services (unless the
stack already runs them), and the summary's last table, per camera, read back through the FeatureService.

The stream is the fleet's (group imask-features, project imask on the stack's Redis, state in .stack): started only
when that group has no member; the FeatureService on its default port is used when it answers, else one is started
on a free port. After the pipeline ends, the stream's idle ticks close each camera's last window; the table waits
(bounded) until every camera's newest window covers the run's end, and shows the 60 s window's figures.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import grpc

from imask.devstack.procs import ServiceProcess, spawn, stop_all
from imask.devstack.settings import StackSettings
from imask.features.client import DEFAULT_TARGET, FeatureClient
from imask.features.schema import VIEW_60S
from imask.features.serving import values_of

log = logging.getLogger(__name__)

GROUP = "imask-features"
COLUMNS = (("fps in", "fps_in", "{:.1f}"), ("fps out", "fps_out", "{:.1f}"), ("faces mean", "faces_mean", "{:.2f}"),
           ("faces p95", "faces_p95", "{:.0f}"), ("fail-closed", "fail_closed_rate", "{:.1%}"),
           ("p99 e2e ms", "end_to_end_ms_p99", "{:.0f}"), ("luma", "luma_mean", "{:.0f}"),
           ("sharpness", "sharpness", "{:.0f}"))


def _group_active(bootstrap: str) -> bool:
    from confluent_kafka.admin import AdminClient

    try:
        described = AdminClient({"bootstrap.servers": bootstrap}).describe_consumer_groups([GROUP])
        return bool(described[GROUP].result(timeout=10).members)
    except Exception:  # unknown group, broker slow: start our own
        return False


def _answers(target: str) -> bool:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    channel = grpc.insecure_channel(target)
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
    except grpc.RpcError:
        return False
    finally:
        channel.close()


class RunFeatures:
    def __init__(self, s: StackSettings, logs: Path, env: dict[str, str]) -> None:
        self.env = {**env, "IMASK_REDIS_URL": s.redis_url,
                    "IMASK_FEATURES_STREAM_FEAST_DIR": str(s.state_dir / "feast"),
                    "IMASK_FEATURES_STREAM_STATE_DIR": str(s.state_dir / "features-state"),
                    "IMASK_FEATURES_FEAST_DIR": str(s.state_dir / "feast"), "IMASK_AUTH": "none",
                    "IMASK_FEATURES_PORT": "0"}
        self.bootstrap = s.bootstrap_servers
        self.logs = logs
        self.started: list[ServiceProcess] = []
        self.target = os.environ.get("IMASK_CLIENT_FEATURES", DEFAULT_TARGET)

    def start(self) -> list[ServiceProcess]:
        """The stream and the service when not running already; returns those started (ready)."""
        if not _group_active(self.bootstrap):
            self.started.append(spawn("features-stream", ["features-stream"], self.logs, self.env))
        if not _answers(self.target):
            self.started.append(spawn("features", ["features"], self.logs, self.env))
        for svc in self.started:
            svc.wait_ready(120)
            if svc.name == "features":
                import json

                self.target = f"127.0.0.1:{json.loads(svc.get('/readyz')[1])['grpc_port']}"
        return self.started

    def read(self, cameras: list[str], until_ms: int, timeout: float = 40.0) -> dict[str, Any]:
        """Each camera's features once its newest window ends at or after until_ms (or at the timeout)."""
        client = FeatureClient(self.target)
        deadline = time.monotonic() + timeout
        try:
            while True:
                reply = client.get(cameras)
                if all(c.window_end_ms >= until_ms for c in reply.cameras) or time.monotonic() > deadline:
                    break
                time.sleep(1.0)
        except grpc.RpcError as exc:
            return {"error": f"{exc.code().name}: {exc.details()}"}
        finally:
            client.close()
        return {c.camera_id: {"found": c.found, "fresh": c.fresh, "age_s": round(c.age_s, 1),
                              "window_end_ms": c.window_end_ms, "versions": {v.name: v.version for v in c.views},
                              **{k: v for k, v in values_of(c).get(VIEW_60S.name, {}).items()
                                 if not isinstance(v, list)}} for c in reply.cameras}

    def stop(self) -> dict[str, int]:
        return stop_all(self.started)


def table(features: Any) -> list[str]:
    """The per-camera feature table of the summary (the 60 s window ending last)."""
    if "error" in features:
        return [f"  features         not read: {features['error']}"]
    header = ["camera", *(name for name, _, _ in COLUMNS), "age s"]
    rows = []
    for camera, row in features.items():
        if not row["found"]:
            rows.append([camera, *("-" for _ in COLUMNS), "none"])
            continue
        cells = [fmt.format(row[key]) if row.get(key) is not None else "-" for _, key, fmt in COLUMNS]
        rows.append([camera, *cells, f"{row['age_s']:.0f}{'' if row['fresh'] else ' stale'}"])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [f"  camera features (FeatureService, {VIEW_60S.name}):"]
    lines += ["    " + "  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in
                                enumerate(zip(r, widths, strict=True))) for r in [header, *rows]]
    return lines
