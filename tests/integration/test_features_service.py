"""The FeatureService (`imask features`) over real gRPC on loopback, against the real Redis and the session's Feast
project (`feast_repo`): values equal what was pushed (through the stream's own push, `store.push_rows`) and what
Feast's SDK reads (the service reads Feast's Redis layout directly; a test compares the two readers on every
feature service), 100 cameras in one call, API keys (none, wrong, revoked, bound to a camera), health and
reflection without a key, stale reported stale, and a Redis restart (a Redis of the test's own): not ready and
UNAVAILABLE while down, nothing served as fresh after it, features back after the next push."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import subprocess_env
from imask.devstack import redis as redis_server
from imask.devstack import stack
from imask.devstack.procs import ServiceProcess, spawn, stop_all
from imask.devstack.settings import StackSettings
from imask.features import repo
from imask.features.client import FeatureClient
from imask.features.redis_read import RedisFeatureReader
from imask.features.repo import FeastSettings
from imask.features.schema import SERVICES, VARIANT_VIEW_60S, VIEW_10S, VIEW_60S, View, feast_row
from imask.features.serving import values_of, view_version
from imask.features.store import FeatureReader, open_store, push_rows, utcnow
from imask.features.windows import add, feature_row, new_accumulator, observe_meta
from imask.loadtest.features import meta_record
from imask.ops.grpc_auth import hash_key
from imask.v1 import frames_pb2 as pb
from streams import spawn_tracked

pytestmark = [pytest.mark.redis]

OPS_KEY, BOUND_KEY, REVOKED_KEY = "imk_ops_test", "imk_bound_test", "imk_revoked_test"


def window_rows(cameras: list[str], end_ms: int, seed: int = 0) -> dict[View, list[dict[str, Any]]]:
    """Each camera's row of the 10 s and 60 s windows ending at end_ms, from frames.meta records as the stream
    folds them (windows.feature_row of the records' accumulator)."""
    out: dict[View, list[dict[str, Any]]] = {VIEW_10S: [], VIEW_60S: []}
    for i, camera in enumerate(cameras):
        for view in (VIEW_10S, VIEW_60S):
            acc = new_accumulator()
            start = end_ms - view.size_s * 1000
            for n in range(10 + (i + seed) % 7):
                record = meta_record(camera, n + seed, start + n * 100)
                add(acc, observe_meta(pb.FrameMeta.FromString(record.value), start + n * 100))
            out[view].append(feast_row(camera, start, end_ms, feature_row(acc, view.size_s), utcnow()))
    return out


def push(feast: FeastSettings, rows: dict[View, list[dict[str, Any]]]) -> None:
    store = open_store(feast)
    for view, view_rows in rows.items():
        push_rows(store, feast.data_dir, view, view_rows)


def now_end_ms() -> int:
    return int(time.time()) // 10 * 10_000


def start_service(name: str, feast: FeastSettings, tmp_path: Path, tracked: bool = True,
                  ) -> tuple[ServiceProcess, str]:
    """The service on its own keys file; `tracked`: stopped after the test (the autouse fixture), else by the
    caller (a module's service outlives its tests)."""
    keys = tmp_path / f"{name}-keys.json"
    keys.write_text(json.dumps({"clients": {
        "ops": {"sha256": hash_key(OPS_KEY)},
        "lobby": {"sha256": hash_key(BOUND_KEY), "cameras": ["lobby-1"]},
        "gone": {"sha256": hash_key(REVOKED_KEY), "revoked": True}}}))
    env = {**subprocess_env(), "IMASK_REDIS_URL": feast.redis_url, "IMASK_FEATURES_FEAST_DIR": str(feast.data_dir),
           "IMASK_FEATURES_FEAST_PROJECT": feast.project, "IMASK_FEATURES_PORT": "0",
           "IMASK_API_KEYS_FILE": str(keys), "IMASK_FEATURES_DRAIN_DELAY_S": "0"}
    svc = (spawn_tracked if tracked else spawn)(name, ["features"], tmp_path / "logs", env)
    svc.wait_ready(120)
    return svc, f"127.0.0.1:{json.loads(svc.get('/readyz')[1])['grpc_port']}"


@pytest.fixture(scope="module")
def served(feast_repo: FeastSettings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    svc, target = start_service("features", feast_repo, tmp_path_factory.mktemp("features"), tracked=False)
    try:
        yield target
    finally:
        stop_all([svc])


@pytest.fixture
def client(served: str) -> Iterator[FeatureClient]:
    c = FeatureClient(served, OPS_KEY)
    yield c
    c.close()


def assert_values(camera: Any, rows: dict[View, dict[str, Any]]) -> None:
    got = values_of(camera)
    for view, row in rows.items():
        for name in (f.name for f in view.features):
            assert got[view.name][name] == row[name], (camera.camera_id, view.name, name)


def code_of(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()  # type: ignore[no-any-return]


def test_values_equal_what_was_pushed_and_what_feast_reads(client: FeatureClient, feast_repo: FeastSettings,
                                                           ) -> None:
    cameras = [f"fs-{uuid.uuid4().hex[:6]}-{i}" for i in range(3)]
    end = now_end_ms()
    rows = window_rows(cameras, end)
    push(feast_repo, rows)
    reply = client.get(cameras)
    assert reply.feature_service == "operators"
    assert [c.camera_id for c in reply.cameras] == cameras
    sdk = FeatureReader(feast_repo, "operators").read(cameras)
    for i, camera in enumerate(reply.cameras):
        assert camera.found and camera.fresh and camera.window_end_ms == end
        assert 0 <= camera.age_s < 35
        assert {v.name: v.version for v in camera.views} == {VIEW_10S.name: view_version(VIEW_10S),
                                                              VIEW_60S.name: view_version(VIEW_60S)}
        assert_values(camera, {view: rows[view][i] for view in rows})
        assert values_of(camera) == {view: {k: (float(v) if isinstance(v, int) else v)
                                            for k, v in values.items() if v is not None}
                                     for view, values in sdk[camera.camera_id].values.items()}
        hist = next(v for v in camera.views if v.name == VIEW_10S.name).values["face_size_hist"].histogram
        assert len(hist.edges) == len(hist.counts) + 1


def test_redis_layout_reader_reads_what_feast_reads_on_every_feature_service(feast_repo: FeastSettings) -> None:
    cameras = [f"fr-{uuid.uuid4().hex[:6]}-{i}" for i in range(4)]
    end = now_end_ms()
    rows = window_rows(cameras[:3], end)  # the fourth camera has no row: every value None, not found
    push(feast_repo, rows)
    variant_rows = []
    for i, camera in enumerate(cameras[:2]):  # per camera and variant: two cameras on "default"
        acc = new_accumulator()
        for n in range(5 + i):
            add(acc, observe_meta(pb.FrameMeta.FromString(meta_record(camera, n, end - 60_000 + n * 100).value),
                                  end - 60_000 + n * 100))
        variant_rows.append(feast_row(camera, end - 60_000, end, feature_row(acc, 60), utcnow(), variant="default"))
    push_rows(open_store(feast_repo), feast_repo.data_dir, VARIANT_VIEW_60S, variant_rows)
    now = time.time()
    for service in SERVICES:
        direct, sdk = RedisFeatureReader(feast_repo, service), FeatureReader(feast_repo, service)
        keys: list[Any] = [(c, "default") for c in cameras] if direct.by_variant else list(cameras)
        got, expected = direct.read(keys, now), sdk.read(keys, now)
        assert got == expected, service
        found = [key for key in keys if got[key].window_end_ms is not None]
        assert found == keys[:2 if direct.by_variant else 3], service
        direct.close()


def test_answers_follow_each_new_window_and_age_between_them(client: FeatureClient, feast_repo: FeastSettings) -> None:
    """The service answers a camera from the answer it built for the camera's rows as they were, until a newer window
    lands: the next call then has the new window's values; its age is judged at every call."""
    camera = f"fc-{uuid.uuid4().hex[:6]}"
    end = now_end_ms() - 20_000
    first = window_rows([camera], end, seed=1)
    push(feast_repo, first)
    a, b = client.get([camera]).cameras[0], client.get([camera]).cameras[0]
    assert a.window_end_ms == b.window_end_ms == end and b.age_s > a.age_s
    assert_values(b, {view: first[view][0] for view in first})
    second = window_rows([camera], end + 10_000, seed=4)
    assert second[VIEW_10S][0]["frames_in"] != first[VIEW_10S][0]["frames_in"]  # the check below can tell them apart
    push(feast_repo, second)
    c = client.get([camera]).cameras[0]
    assert c.window_end_ms == end + 10_000 and c.age_s < b.age_s
    assert_values(c, {view: second[view][0] for view in second})


def test_100_cameras_in_one_call_and_unknown_and_stale(client: FeatureClient, feast_repo: FeastSettings) -> None:
    prefix = f"fs-{uuid.uuid4().hex[:6]}"
    cameras = [f"{prefix}-{i}" for i in range(100)]
    end = now_end_ms()
    stale_end = end - 300_000
    push(feast_repo, window_rows(cameras[:99], end))
    push(feast_repo, window_rows(cameras[99:], stale_end))  # a camera whose last window closed 5 minutes ago
    asked = [*cameras, f"{prefix}-never"]
    t0 = time.perf_counter()
    reply = client.get(asked)
    took = time.perf_counter() - t0
    assert [c.camera_id for c in reply.cameras] == asked
    assert all(c.found and c.fresh for c in reply.cameras[:99])
    stale = reply.cameras[99]
    assert stale.found and not stale.fresh and stale.window_end_ms == stale_end and stale.age_s > 290
    assert values_of(stale)[VIEW_10S.name]["frames_out"] > 0  # stale values are returned, marked so
    never = reply.cameras[100]
    assert not never.found and not never.fresh and never.window_end_ms == 0
    assert all(not v.found and not v.values for v in never.views)
    print(f"101 cameras in one call: {took * 1e3:.1f} ms (first call of this size)")


def test_router_service_keyed_by_variant_and_bad_requests(client: FeatureClient) -> None:
    reply = client.get(["lobby-1"], "router", variant="default")
    assert reply.feature_service == "router" and reply.cameras[0].variant == "default"
    assert code_of(lambda: client.get(["lobby-1"], "router")) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: client.get(["lobby-1"], variant="default")) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: client.get(["lobby-1"], "nope")) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: client.get([])) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: client.get(["bad id/with slash"])) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: client.get(["c"] * 1001)) == grpc.StatusCode.INVALID_ARGUMENT


def test_api_keys_health_and_reflection(served: str) -> None:
    def call(key: str | None, cameras: list[str]) -> Any:
        c = FeatureClient(served, key)
        try:
            return c.get(cameras)
        finally:
            c.close()

    assert code_of(lambda: call(None, ["lobby-1"])) == grpc.StatusCode.UNAUTHENTICATED
    assert code_of(lambda: call("imk_wrong", ["lobby-1"])) == grpc.StatusCode.UNAUTHENTICATED
    assert code_of(lambda: call(REVOKED_KEY, ["lobby-1"])) == grpc.StatusCode.PERMISSION_DENIED
    assert code_of(lambda: call(BOUND_KEY, ["lobby-1", "dock-2"])) == grpc.StatusCode.PERMISSION_DENIED
    assert call(BOUND_KEY, ["lobby-1"]).cameras[0].camera_id == "lobby-1"
    assert call(OPS_KEY, ["dock-2"]).cameras[0].camera_id == "dock-2"

    channel = grpc.insecure_channel(served)
    try:
        stub = health_pb2_grpc.HealthStub(channel)  # type: ignore[no-untyped-call]
        for name in ("", "imask.v1.FeatureService"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

        refl = reflection_pb2_grpc.ServerReflectionStub(channel)  # type: ignore[no-untyped-call]
        answer = next(iter(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
            list_services="")]), timeout=5)))
        assert "imask.v1.FeatureService" in {s.name for s in answer.list_services_response.service}
    finally:
        channel.close()


def test_redis_restart_unavailable_then_back_after_next_push(tmp_path: Path) -> None:
    """A Redis of the test's own (restarting the stack's would disturb other tests)."""
    private = StackSettings.on_free_ports(tmp_path / "stack")
    stack.up(private, servers=[redis_server.SERVER])
    try:
        feast = FeastSettings(project=f"imask_test_{uuid.uuid4().hex[:8]}", data_dir=tmp_path / "feast",
                              redis_url=private.redis_url)
        repo.apply(feast)
        svc, target = start_service("features-own-redis", feast, tmp_path)
        cameras = ["cam-a", "cam-b"]
        rows = window_rows(cameras, now_end_ms())
        push(feast, rows)
        client = FeatureClient(target, OPS_KEY)
        assert all(c.fresh for c in client.get(cameras).cameras)

        stack.down(private, servers=[redis_server.SERVER])
        assert code_of(lambda: client.get(cameras)) == grpc.StatusCode.UNAVAILABLE
        deadline = time.monotonic() + 15
        while svc.ready():
            assert time.monotonic() < deadline, "still ready with its Redis down"
            time.sleep(0.2)

        stack.up(private, servers=[redis_server.SERVER])  # empty: an in-memory Redis lost everything
        svc.wait_ready(30)
        after = client.get(cameras)
        assert all(not c.found and not c.fresh for c in after.cameras)  # nothing old served, nothing as fresh
        later = window_rows(cameras, now_end_ms() + 10_000, seed=3)
        push(feast, later)
        back = client.get(cameras)
        for i, camera in enumerate(back.cameras):
            assert camera.found and camera.fresh
            assert_values(camera, {view: later[view][i] for view in later})
        client.close()
        svc.proc.terminate()
        assert svc.proc.wait(30) == 0
        repo.teardown(feast)
    finally:
        stack.down(private, servers=[redis_server.SERVER])
