"""The drift service's state in the fleet's Redis, under a prefix of its own (IMASK_DRIFT_PREFIX, `imask:drift`):

  <prefix>:ref:<camera>        hash variant -> Reference (JSON with windows, time range, digest)
  <prefix>:refs_version        bumped on every change, so a running service reloads what the CLI changed
  <prefix>:regression          hash "<camera>|<variant>" -> open variant_regression flag (JSON); the router reads it

Redis rather than files in the stack's state dir: the service, the CLI and the router may run on different hosts (a
pod has no shared disk), references must survive a restart of the service, and the router already reads Redis.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import redis

from imask.drift.window import Reference

DEFAULT_PREFIX = "imask:drift"


@dataclass(frozen=True)
class RegressionFlag:
    camera_id: str
    variant: str
    baseline: str
    since_ms: int
    detail: str


class DriftStore:
    def __init__(self, url: str, prefix: str = DEFAULT_PREFIX, client: Any = None) -> None:
        self.prefix = prefix
        self.client: Any = client or redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)

    def _ref_key(self, camera_id: str) -> str:
        return f"{self.prefix}:ref:{camera_id}"

    # -- references --------------------------------------------------------------------------------------------
    def save_reference(self, reference: Reference) -> None:
        with self.client.pipeline() as pipe:
            pipe.hset(self._ref_key(reference.camera_id), reference.variant, json.dumps(reference.to_dict()))
            pipe.incr(f"{self.prefix}:refs_version")
            pipe.execute()

    def references(self, camera_id: str | None = None) -> list[Reference]:
        keys = [self._ref_key(camera_id)] if camera_id else list(self.client.scan_iter(match=self._ref_key("*")))
        out = []
        for key in keys:
            for raw in self.client.hgetall(key).values():
                out.append(Reference.from_dict(json.loads(raw)))
        return sorted(out, key=lambda r: (r.camera_id, r.variant))

    def delete_references(self, camera_id: str, variant: str | None = None) -> int:
        key = self._ref_key(camera_id)
        removed = int(self.client.hdel(key, variant)) if variant else int(self.client.hlen(key))
        if not variant:
            self.client.delete(key)
        self.client.incr(f"{self.prefix}:refs_version")
        return removed

    def version(self) -> int:
        return int(self.client.get(f"{self.prefix}:refs_version") or 0)

    # -- regression flags --------------------------------------------------------------------------------------
    def flag_regression(self, flag: RegressionFlag) -> None:
        self.client.hset(f"{self.prefix}:regression", f"{flag.camera_id}|{flag.variant}",
                         json.dumps(flag.__dict__))

    def clear_regression(self, camera_id: str, variant: str) -> None:
        self.client.hdel(f"{self.prefix}:regression", f"{camera_id}|{variant}")

    def regressions(self, variant: str | None = None, since_ms: int = 0) -> list[RegressionFlag]:
        flags = [RegressionFlag(**json.loads(raw)) for raw in self.client.hgetall(f"{self.prefix}:regression").values()]
        return sorted((f for f in flags if (variant is None or f.variant == variant) and f.since_ms >= since_ms),
                      key=lambda f: f.camera_id)
