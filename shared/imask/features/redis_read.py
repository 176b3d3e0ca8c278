"""Reading a FeatureService's features straight from Feast's Redis layout: the FeatureService's read path.

Feast's Python read (`get_online_features`) turns every value into Arrow and back and costs tens of milliseconds for
100 cameras (docs/BENCHMARKS.md, `make bench-features`). Its Redis layout is simple and stable: one hash per entity
key (Feast's serialized entity key followed by the project name), one field per feature (murmur3 of
`<view>:<feature>`) holding a serialized ValueProto, and `_ts:<view>` holding the row's event time. This reader
builds the same keys with Feast's own helpers, reads every camera's views in one pipelined round trip (one HMGET per
camera), and decodes the ValueProtos itself. A test reads the same pushed rows both ways and compares them. The event
time fields alone (`stamps`) tell a caller whether a camera's rows changed since it last read them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from imask.features.repo import FeastSettings
from imask.features.schema import JOIN_KEY, SERVICES, VARIANT_KEY, View
from imask.features.store import CameraFeatures, Key, camera_features, entity_pair

Stamps = tuple[bytes | None, ...]
"""A camera's event-time fields (`_ts:<view>`, Feast's serialized Timestamp), one per view: they change exactly when a
newer window row lands (Feast never overwrites a row with one that is not newer), so they version its values."""


def _value_type() -> Any:
    from feast.protos.feast.types.Value_pb2 import Value

    return Value


def decode(raw: bytes | None, value_type: Any = None) -> Any:
    """A stored ValueProto as Python: int, float, str, a list for list values; None for no value (a null Value
    serializes to no bytes at all)."""
    if not raw:
        return None
    value = (value_type or _value_type()).FromString(raw)
    kind = value.WhichOneof("val")
    if kind is None or kind == "null_val":
        return None
    got = getattr(value, kind)
    return list(got.val) if kind.endswith("_list_val") else got


class RedisFeatureReader:
    """Reads one FeatureService (router, drift, operators) for many cameras from Feast's Redis layout; the same
    answer as `store.FeatureReader`, without Feast's read path. Open once, read often."""

    def __init__(self, settings: FeastSettings, service: str = "operators", stale_after_s: float = 35.0,
                 entity_key_serialization_version: int = 3) -> None:
        import redis
        from feast.infra.online_stores.helpers import _mmh3
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        if service not in SERVICES:
            raise ValueError(f"no feature service {service!r}; there are {sorted(SERVICES)}")
        self.name = service
        self.settings = settings
        self.stale_after_s = stale_after_s
        self.key_version = entity_key_serialization_version
        self.parts: list[tuple[View, tuple[str, ...]]] = list(SERVICES[service])
        self.views = [view for view, _ in self.parts]
        self.by_variant = self.views[0].by_variant
        # Per view: the hash fields of its features, then its event time; all views' fields in one list (a camera's
        # views are fields of one Redis hash, read with one HMGET).
        self.all_fields = [field for view, names in self.parts
                           for field in (*(_mmh3(f"{view.name}:{n}") for n in names), f"_ts:{view.name}".encode())]
        self.stamp_fields = [f"_ts:{view.name}".encode() for view in self.views]
        # One immediate retry (a connection Redis dropped on restart is reopened), then the error: never a read
        # that hangs for seconds while Redis is away.
        self.client = redis.Redis.from_url(settings.redis_url, socket_timeout=2.0, socket_connect_timeout=2.0,
                                           retry=Retry(NoBackoff(), 1))
        self._keys: dict[tuple[str, str | None], bytes] = {}

    def redis_key(self, camera: str, variant: str | None) -> bytes:
        """Feast's Redis key of an entity row (cached: cameras repeat)."""
        key = self._keys.get((camera, variant))
        if key is None:
            from feast.infra.online_stores.helpers import _redis_key
            from feast.protos.feast.types.EntityKey_pb2 import EntityKey
            from feast.protos.feast.types.Value_pb2 import Value

            names, values = [JOIN_KEY], [Value(string_val=camera)]
            if self.by_variant:
                names.append(VARIANT_KEY)
                values.append(Value(string_val=variant or ""))
            key = _redis_key(self.settings.project, EntityKey(join_keys=names, entity_values=values),
                             entity_key_serialization_version=self.key_version)
            if len(self._keys) < 100_000:
                self._keys[(camera, variant)] = key
        return key

    def stamps(self, keys: Sequence[Key]) -> list[Stamps]:
        """Each camera's event-time field per view, in one pipelined round trip of small HMGETs."""
        pairs = [self._pair(key) for key in keys]
        with self.client.pipeline(transaction=False) as pipe:
            for camera, variant in pairs:
                pipe.hmget(self.redis_key(camera, variant), self.stamp_fields)  # type: ignore[arg-type]
            return [tuple(reply) for reply in pipe.execute()]

    def read(self, keys: Sequence[Key], now: float | None = None) -> dict[Key, CameraFeatures]:
        return {key: features for key, (features, _) in zip(keys, self.read_stamped(keys, now), strict=True)}

    def read_stamped(self, keys: Sequence[Key], now: float | None = None) -> list[tuple[CameraFeatures, Stamps]]:
        """Each camera's features and the stamps of the rows they came from, in one pipelined round trip (one HMGET
        per camera: a camera's views are fields of one Redis hash)."""
        pairs = [self._pair(key) for key in keys]
        with self.client.pipeline(transaction=False) as pipe:
            for camera, variant in pairs:
                pipe.hmget(self.redis_key(camera, variant), self.all_fields)  # type: ignore[arg-type]
            replies = pipe.execute()
        now = time.time() if now is None else now
        value_type = _value_type()
        out = []
        for (camera, variant), raw in zip(pairs, replies, strict=True):
            values: dict[str, dict[str, Any]] = {}
            stamps = []
            at = 0
            for view, names in self.parts:
                stamp = raw[at + len(names)]
                stamps.append(stamp)
                # A hash without this view's event time has no row of it: every feature None, as Feast answers.
                values[view.name] = {name: decode(raw[at + i], value_type) if stamp is not None else None
                                     for i, name in enumerate(names)}
                at += len(names) + 1
            out.append((camera_features(camera, variant, values, now, self.stale_after_s), tuple(stamps)))
        return out

    def _pair(self, key: Key) -> tuple[str, str | None]:
        return entity_pair(key, self.by_variant, self.name)

    def close(self) -> None:
        self.client.close()
