"""The FeatureService's logic, apart from its gRPC wiring (services/features): a GetFeatures request -> the reply.

Reads go straight to Feast's Redis layout (`redis_read.RedisFeatureReader`: one pipelined round trip per call however
many cameras), or through Feast's online API (`store.FeatureReader`, `get_online_features`) with read path "feast".
Freshness is judged here from the newest window's end (`stale_after_s`), never assumed: Feast returns whatever Redis
holds, however old. Each view in the answer carries its name and a version: a fingerprint of its
definition (keys, features and their types), equal wherever the definition is.

A request is refused before any read when it asks for no camera, too many, a malformed camera id, an unknown
feature service, a variant the service does not key by (or none where it does), or a camera the caller's key is not
bound to. Feast unreadable (Redis away) is `FeaturesUnavailable`: the gRPC wiring answers UNAVAILABLE and reports
not ready until a read succeeds again.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import grpc
from prometheus_client import Counter, Histogram

from imask.features.redis_read import RedisFeatureReader, Stamps
from imask.features.repo import FeastSettings
from imask.features.schema import SERVICES, View
from imask.features.store import CameraFeatures, FeatureReader, Key, open_store
from imask.features.windows import FACE_SIZE_EDGES, SCORE_EDGES
from imask.frames.ids import is_camera_id
from imask.ops.grpc_auth import Client
from imask.v1 import feature_service_pb2 as fpb

if TYPE_CHECKING:
    from feast import FeatureStore

DEFAULT_SERVICE = "operators"
MAX_BUILT = 200_000  # cached camera answers (about 4 KB each for the operators' service) before the cache starts over
WARM_UP_CAMERA = "~warm-up"  # never a camera id: reads nothing, but opens the registry and Redis connections

REQUESTS = Counter("imask_feature_requests_total", "GetFeatures calls by feature service and status code",
                   ["feature_service", "code"])
READ_SECONDS = Histogram("imask_feature_read_seconds", "One GetFeatures read of Feast's online store (all its "
                         "cameras)", buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5))
SERVED = Counter("imask_feature_cameras_served_total", "Cameras answered, by freshness (fresh, stale, missing)",
                 ["feature_service", "freshness"])
FRESHNESS = ("fresh", "stale", "missing")  # SERVED's freshness values
HISTOGRAM_EDGES: dict[str, tuple[float, ...]] = {"score_hist": SCORE_EDGES, "face_size_hist": FACE_SIZE_EDGES}


class RequestError(Exception):
    """A request refused before any read; `code` is the gRPC status it is answered with."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class FeaturesUnavailable(Exception):
    """Feast's online store could not be read (Redis away)."""


def view_version(view: View) -> str:
    """A view's version: 12 hex digits of sha256 over its name, keys, window, and features with their types."""
    text = "|".join([view.name, ",".join(view.keys), f"{view.size_s}/{view.step_s}",
                     *(f"{f.name}:{f.kind}" for f in view.features)])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def to_value(name: str, value: Any) -> fpb.FeatureValue | None:
    """A feature's value as the reply carries it (None: no value)."""
    if value is None:
        return None
    if isinstance(value, str):
        return fpb.FeatureValue(text=value)
    if isinstance(value, (list, tuple)):
        edges = HISTOGRAM_EDGES.get(name, ())
        return fpb.FeatureValue(histogram=fpb.Histogram(edges=edges, counts=[int(c) for c in value]))
    return fpb.FeatureValue(number=float(value))


def from_value(value: fpb.FeatureValue) -> Any:
    """Back to Python: a float, a str, or a list of counts (histograms)."""
    kind = value.WhichOneof("value")
    if kind == "number":
        return value.number
    if kind == "text":
        return value.text
    if kind == "histogram":
        return list(value.histogram.counts)
    return None


def camera_reply(features: CameraFeatures, versions: dict[str, str]) -> fpb.CameraFeatures:
    out = fpb.CameraFeatures(camera_id=features.camera_id, variant=features.variant or "",
                             found=features.window_end_ms is not None, window_end_ms=features.window_end_ms or 0,
                             age_s=features.age_s or 0.0, fresh=features.fresh)
    for view_name, values in features.values.items():
        end = values.get("window_end_ms")
        view = out.views.add(name=view_name, version=versions[view_name], found=end is not None,
                             window_end_ms=int(end or 0))
        if end is None:
            continue
        for name, value in values.items():
            converted = to_value(name, value)
            if converted is not None:
                view.values[name].CopyFrom(converted)
    return out


def fail_fast(store: FeatureStore) -> None:
    """Feast's Redis client retries a failed command 3 times with backoff up to 10 s (redis-py's default): with
    Redis away a read would hang for seconds. One immediate retry instead (a connection Redis dropped on restart is
    reopened), then the error."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    online = store._get_provider().online_store  # Feast has no public handle on its Redis client
    get_client = getattr(online, "_get_client", None)
    if get_client is not None:
        get_client(store.config.online_store).set_retry(Retry(NoBackoff(), 1))


Reader = FeatureReader | RedisFeatureReader
READ_PATHS = ("redis", "feast")


class FeatureQuery:
    """Answers GetFeatures: one reader per feature service, opened once. `read_path` "redis" (the default) reads
    Feast's Redis layout directly (`RedisFeatureReader`); "feast" goes through Feast's SDK (`FeatureReader`, the
    Feast store opened once). Both give the same values (tests/integration/test_features_service.py)."""

    def __init__(self, settings: FeastSettings, stale_after_s: float = 35.0, max_cameras: int = 1000,
                 read_path: str = "redis") -> None:
        if read_path not in READ_PATHS:
            raise ValueError(f"read_path must be one of {READ_PATHS}, got {read_path!r}")
        self.settings = settings
        self.stale_after_s = stale_after_s
        self.max_cameras = max_cameras
        # The SDK path's Feast store, opened once; None: the Redis layout is read directly.
        self.store: FeatureStore | None = None
        if read_path == "feast":
            self.store = open_store(settings)
            fail_fast(self.store)
        self.versions = {view.name: view_version(view) for parts in SERVICES.values() for view, _ in parts}
        self._readers: dict[str, Reader] = {}
        # (service, key) -> (the stamps its rows had, the camera's answer built from them): see _answer_from_cache.
        self._built: dict[tuple[str, Key], tuple[Stamps, fpb.CameraFeatures]] = {}
        self._lock = threading.Lock()
        self.healthy = True  # the last read succeeded (or none was tried)

    def reader(self, service: str) -> Reader:
        with self._lock:
            if service not in self._readers:
                if service not in SERVICES:
                    raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                       f"no feature service {service!r}; there are {sorted(SERVICES)}")
                self._readers[service] = (
                    FeatureReader(self.settings, service, self.stale_after_s, self.store) if self.store is not None
                    else RedisFeatureReader(self.settings, service, self.stale_after_s))
            return self._readers[service]

    def warm_up(self) -> None:
        """Open every service's reader and read once (the first read loads the registry and Redis connections)."""
        for service in SERVICES:
            reader = self.reader(service)
            self._read(reader, [(WARM_UP_CAMERA, "~") if reader.by_variant else WARM_UP_CAMERA])

    def probe(self) -> bool:
        """Whether the online store reads now (updates `healthy`); readiness polls it."""
        try:
            self._read(self.reader(DEFAULT_SERVICE), [WARM_UP_CAMERA])
        except FeaturesUnavailable:
            return False
        return True

    def keys(self, request: fpb.GetFeaturesRequest, caller: Client | None) -> tuple[Reader, list[Key]]:
        """The reader and entity keys of a request, or RequestError."""
        cameras = list(request.cameras)
        if not cameras:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "no camera asked for")
        if len(cameras) > self.max_cameras:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"{len(cameras)} cameras in one call; at most {self.max_cameras}")
        bad = [c for c in cameras if not is_camera_id(c)]
        if bad:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"not a camera id: {bad[0]!r}")
        if caller is not None:
            denied = [c for c in cameras if not caller.may_read(c)]
            if denied:
                raise RequestError(grpc.StatusCode.PERMISSION_DENIED,
                                   f"key of {caller.client_id!r} may not read camera {denied[0]!r}")
        reader = self.reader(request.feature_service or DEFAULT_SERVICE)
        has_variant = request.HasField("variant")
        if reader.by_variant and not has_variant:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"feature service {reader.name!r} is keyed by camera and variant: "
                               "name the variant")
        if not reader.by_variant and has_variant:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"feature service {reader.name!r} is keyed by camera alone: no variant")
        keys: list[Key] = [(c, request.variant) for c in cameras] if reader.by_variant else list(cameras)
        return reader, keys

    def _answer_from_cache(self, reader: RedisFeatureReader, keys: Sequence[Key], now: float,
                           reply: fpb.GetFeaturesReply) -> None:
        """Fill `reply` from the built answers of earlier calls, re-reading only the cameras whose rows changed.

        A camera's rows change once per window close (every 10 s), while callers read far more often, and building a
        camera's answer (decoding ~120 values, then ~120 reply values) costs more than reading it. So the stamps (each
        view's event time, one small HMGET per camera) are read first; a camera whose stamps equal those its cached
        answer was built from is answered from that, with its age and freshness judged now. Redis away fails the
        stamps read: nothing is answered from the cache then."""
        answers: dict[Key, fpb.CameraFeatures] = {}
        try:
            for key, stamp in zip(keys, reader.stamps(keys), strict=True):
                cached = self._built.get((reader.name, key))
                if cached is not None and cached[0] == stamp:
                    answers[key] = cached[1]
            changed = list(dict.fromkeys(key for key in keys if key not in answers))
            built = reader.read_stamped(changed, now) if changed else []
        except Exception as exc:  # Redis away: not the request's fault
            self.healthy = False
            raise FeaturesUnavailable(f"feature store unreadable: {exc!r}") from exc
        self.healthy = True
        if len(self._built) + len(changed) > MAX_BUILT:
            self._built.clear()  # (other threads hold their answers in their own dict)
        for key, (features, stamp) in zip(changed, built, strict=True):
            answers[key] = camera_reply(features, self.versions)
            self._built[(reader.name, key)] = (stamp, answers[key])
        for key in keys:
            camera = reply.cameras.add()
            camera.CopyFrom(answers[key])
            if camera.found:
                camera.age_s = now - camera.window_end_ms / 1000
                camera.fresh = camera.age_s <= self.stale_after_s

    def _read(self, reader: Reader, keys: Sequence[Key], now: float | None = None) -> dict[Key, CameraFeatures]:
        try:
            answer = reader.read(keys, now)
        except Exception as exc:  # Redis away, registry unreadable: not the request's fault
            self.healthy = False
            raise FeaturesUnavailable(f"feature store unreadable: {exc!r}") from exc
        self.healthy = True
        return answer

    def get(self, request: fpb.GetFeaturesRequest, caller: Client | None = None,
            now: float | None = None) -> fpb.GetFeaturesReply:
        reader, keys = self.keys(request, caller)
        now = time.time() if now is None else now
        t0 = time.perf_counter()
        reply = fpb.GetFeaturesReply(feature_service=reader.name, stale_after_s=self.stale_after_s,
                                     now_ms=int(now * 1000))
        if isinstance(reader, RedisFeatureReader):
            self._answer_from_cache(reader, keys, now, reply)
        else:
            answer = self._read(reader, keys, now)
            reply.cameras.extend(camera_reply(answer[key], self.versions) for key in keys)
        READ_SECONDS.observe(time.perf_counter() - t0)
        fresh = sum(1 for c in reply.cameras if c.fresh)
        missing = sum(1 for c in reply.cameras if not c.found)
        name = reader.name
        SERVED.labels(name, "fresh").inc(fresh)
        SERVED.labels(name, "stale").inc(len(reply.cameras) - fresh - missing)
        SERVED.labels(name, "missing").inc(missing)
        return reply


def values_of(camera: fpb.CameraFeatures) -> dict[str, dict[str, Any]]:
    """A reply's camera as {view: {feature: value}} (histograms as lists of counts), views without a row empty."""
    return {view.name: {name: from_value(value) for name, value in view.values.items()} for view in camera.views}
