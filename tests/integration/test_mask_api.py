"""mask-api on loopback: round trips, streams with persistence, error codes, fuzzing, auth, shared rate limits (and
their fail-open fallback without Redis), health through start and drain, TLS and mTLS."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import detail_ratio
from imask.devstack.procs import ServiceProcess, free_port
from imask.devstack.settings import REPO_ROOT
from imask.engine import FrameInput, MaskingEngine
from imask.evaluation.leakcheck import check_leak
from imask.maskapi.client import MaskClient
from imask.media import encode_jpeg, read_image
from imask.ops.settings import KafkaSettings
from imask.streaming.kafka import TopicReader
from imask.types import Image
from imask.v1 import frames_pb2 as pb
from imask.v1 import mask_service_pb2 as mpb
from streams import moving_face_frames, spawn_tracked

pytestmark = pytest.mark.redis


def start_api(tmp_path: Path, name: str = "api", **env: str) -> tuple[ServiceProcess, int]:
    port = free_port()
    # The result cache is off here: these tests send the same pictures again and mean the engine to answer each
    # time (the cache has its own tests, test_mask_api_http.py).
    settings = {"IMASK_MASK_API_PORT": str(port), "IMASK_AUTH": "none", "IMASK_MASK_API_PUBLISH_META": "false",
                "IMASK_REDIS_URL": "redis://127.0.0.1:6390/0", "IMASK_MASK_API_CACHE_TTL_S": "0", **env}
    svc = spawn_tracked(name, ["mask-api"], tmp_path / "logs", {**os.environ, **settings})
    svc.wait_ready(60)
    return svc, port


def new_key(keys: Path, client: str, revoke: bool = False, cameras: tuple[str, ...] = ()) -> str:
    out = subprocess.run([sys.executable, "-m", "imask.cli.main", "api-key", client, "--file", str(keys),
                          *[arg for camera in cameras for arg in ("--camera", camera)],
                          *(["--revoke"] if revoke else [])], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def code_of(call: object) -> grpc.StatusCode:
    try:
        call()  # type: ignore[operator]
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


@pytest.fixture
def api(stack_up: None, tmp_path: Path) -> Iterator[int]:
    # Requests may ask up to 0.5 here (the default bound is the variant's 0.1): the stream test needs 0.2.
    _, port = start_api(tmp_path, IMASK_MASK_API_THRESHOLD_MAX="0.5")
    yield port


def test_round_trip_matches_the_engine(api: int, engine: MaskingEngine, astronaut_image: Image,
                                       data_dir: Path) -> None:
    client = MaskClient(f"127.0.0.1:{api}")
    images = [astronaut_image, *(read_image(p) for p in sorted((data_dir / "photos").glob("*.jpg")))]
    for i, image in enumerate(images):
        data = encode_jpeg(image, 95)
        reply = client.mask(data)
        local = engine.process([FrameInput(f"rt{i}", 0, cv2.imdecode(np.frombuffer(data, np.uint8), 1))])[0]
        assert not reply.fail_closed and (reply.width, reply.height) == (image.shape[1], image.shape[0])
        assert len(reply.detections) == len(local.faces) >= 1
        remote_boxes = sorted((d.x1, d.y1, d.x2, d.y2) for d in reply.detections)
        assert np.allclose(remote_boxes, sorted(f.box for f in local.faces), atol=1.0)
        masked = cv2.imdecode(np.frombuffer(reply.image, np.uint8), cv2.IMREAD_COLOR)
        for d in reply.detections:  # every face is masked in the returned pixels
            x1, y1, x2, y2 = (int(v) for v in (d.x1, d.y1, d.x2, d.y2))
            cx, cy, hw, hh = (x1 + x2) // 2, (y1 + y2) // 2, max(2, (x2 - x1) // 4), max(2, (y2 - y1) // 4)
            face = (slice(cy - hh, cy + hh), slice(cx - hw, cx + hw))
            assert detail_ratio(masked[face], image[face]) < 0.3
    client.close()


def test_labelled_faces_are_masked_over_grpc(api: int, data_dir: Path) -> None:
    client = MaskClient(f"127.0.0.1:{api}")
    truth = json.loads((data_dir / "photos_gt" / "dlib_faces_gt.json").read_text())
    covered = total = 0
    for name, info in truth.items():
        reply = client.mask((data_dir / "photos_gt" / name).read_bytes(),
                            mpb.MaskOptions(style=mpb.MASK_STYLE_SOLID, shape=mpb.MASK_SHAPE_BOX))
        masked = cv2.imdecode(np.frombuffer(reply.image, np.uint8), cv2.IMREAD_COLOR)
        for face in info["faces"]:
            x, y, w, h = face["box"]
            total += 1
            covered += int(masked[y + h // 2, x + w // 2].max()) < 16  # the centre is under a solid mask
    assert covered / total >= 0.95, f"{covered}/{total}"


def test_stream_replies_in_order_and_keeps_missed_faces_masked(api: int) -> None:
    frames = moving_face_frames(12)
    hidden = 6  # on this frame the head is painted over: the detector cannot see it, the tracker must hold it
    # Hair included: with the face alone painted, the head's outline around a skin-coloured oval scores 0.31 in the
    # close-up pass and 0.12 with ONet, and the large-face check masks it in a lone frame too.
    head = (slice(10, 140), slice(6 * 7 + 105, 6 * 7 + 215))
    frames[hidden][head] = frames[hidden][head].reshape(-1, 3).mean(axis=0).astype(np.uint8)
    client = MaskClient(f"127.0.0.1:{api}")
    # New faces need 0.2 here (the default is 0.1, at which the painted-over head's silhouette still scores 0.12).
    options = mpb.MaskOptions(threshold=0.2)
    requests = iter([mpb.MaskRequest(image=encode_jpeg(f, 95), seq=100 + i, options=options)
                     for i, f in enumerate(frames)])
    replies = list(client.mask_stream(requests, timeout_s=60))
    assert [r.seq for r in replies] == [100 + i for i in range(12)]
    assert all(len(r.detections) >= 1 for r in replies), [len(r.detections) for r in replies]
    # The stream's tracker keeps it masked: its track goes on (held, or continued on a box no new face could start
    # from), while a unary call on the same frame masks nothing new there.
    tracks = {d.track_id for d in replies[hidden - 1].detections}
    kept = [d for d in replies[hidden].detections if d.track_id in tracks]
    assert kept and kept[0].x1 < 6 * 7 + 200 and kept[0].x2 > 6 * 7 + 120
    alone = client.mask(encode_jpeg(frames[hidden], 95), options)
    assert not [d for d in alone.detections if d.x1 < 6 * 7 + 200 and d.x2 > 6 * 7 + 120]
    assert not any(d.held for d in replies[0].detections)
    client.close()


def test_error_codes(api: int, astronaut_image: Image) -> None:
    client = MaskClient(f"127.0.0.1:{api}")
    jpeg = encode_jpeg(astronaut_image, 90)
    huge = bytearray(encode_jpeg(np.zeros((64, 64, 3), np.uint8), 80))
    sof = huge.find(b"\xff\xc0")
    huge[sof + 5:sof + 9] = (20000).to_bytes(2, "big") * 2  # header claims 20000x20000
    cases = {
        "empty": (b"", None),
        "garbage": (os.urandom(500), None),
        "truncated": (jpeg[: len(jpeg) // 2], None),
        "huge dimensions": (bytes(huge), None),
        "mask scale": (jpeg, mpb.MaskOptions(mask_scale=9)),
        "threshold": (jpeg, mpb.MaskOptions(threshold=0.99)),
        "style": (jpeg, mpb.MaskOptions(style=42)),  # type: ignore[arg-type]
    }
    for name, (image, options) in cases.items():
        with pytest.raises(grpc.RpcError) as err:
            client.mask(image, options)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
        assert err.value.details(), name
    stub_call = client.stub.Mask
    code = code_of(lambda: stub_call(mpb.MaskRequest(image=jpeg), timeout=0.0005))
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    reply = client.mask(jpeg, mpb.MaskOptions(detections_only=True))
    assert reply.image == b"" and len(reply.detections) == 1
    client.close()


def test_queue_full_is_resource_exhausted(stack_up: None, tmp_path: Path, astronaut_image: Image) -> None:
    _, port = start_api(tmp_path, IMASK_MASK_API_QUEUE_MAX="1")
    client = MaskClient(f"127.0.0.1:{port}")
    big = encode_jpeg(cv2.resize(astronaut_image, (1920, 1920)), 90)
    futures = [client.stub.Mask.future(mpb.MaskRequest(image=big), timeout=60) for _ in range(12)]
    codes = []
    for future in futures:
        try:
            future.result()
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as exc:
            codes.append(exc.code())
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes and grpc.StatusCode.OK in codes
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
    client.close()


def test_thousand_malformed_requests_never_wedge_the_server(api: int, astronaut_image: Image) -> None:
    rng = np.random.default_rng(7)
    jpeg = encode_jpeg(cv2.resize(astronaut_image, (128, 128)), 85)
    client = MaskClient(f"127.0.0.1:{api}", timeout_s=10)
    codes: dict[str, int] = {}
    checked = 0
    for i in range(1000):
        kind = i % 4
        if kind == 0:
            data = rng.bytes(int(rng.integers(0, 2000)))
        elif kind == 1:
            data = jpeg[: int(rng.integers(0, len(jpeg)))]
        elif kind == 2 and i % 8 == 6:  # crafted but valid: a comment of random bytes before the picture
            comment = rng.bytes(int(rng.integers(0, 200)))
            data = jpeg[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + jpeg[2:]
        elif kind == 2:  # 8 random bytes changed: refused, or (rarely) a picture that still decodes
            mutated = bytearray(jpeg)
            for pos in rng.integers(2, len(jpeg), 8):
                mutated[pos] = int(rng.integers(0, 256))
            data = bytes(mutated)
        else:
            data = b"\xff\xd8" + rng.bytes(64)
        try:
            reply = client.mask(data, mpb.MaskOptions(mask_scale=float(rng.choice([0, 1.2, 5]))))
            code = "OK"
            original = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            if reply.image and original is not None:  # whatever decoded comes back masked or fully obscured
                out = cv2.imdecode(np.frombuffer(reply.image, np.uint8), cv2.IMREAD_COLOR)
                assert check_leak(original, out).reliable_leaks == [], f"request {i}: a face came back"
                checked += 1
        except grpc.RpcError as exc:
            code = exc.code().name
        codes[code] = codes.get(code, 0) + 1
    assert set(codes) <= {"OK", "INVALID_ARGUMENT"}, codes
    assert checked == codes.get("OK", 0) > 0
    assert codes.get("INVALID_ARGUMENT", 0) > 700
    assert len(client.mask(jpeg).detections) == 1  # still serving, same answers
    client.close()


def test_api_keys(stack_up: None, tmp_path: Path, astronaut_image: Image) -> None:
    keys = tmp_path / "keys.json"
    good = new_key(keys, "alice", cameras=("lobby",))
    revoked = new_key(keys, "mallory")
    new_key(keys, "mallory", revoke=True)
    assert good not in keys.read_text()  # only hashes are stored
    _, port = start_api(tmp_path, IMASK_AUTH="api-key", IMASK_API_KEYS_FILE=str(keys))
    jpeg = encode_jpeg(astronaut_image, 90)
    target = f"127.0.0.1:{port}"
    assert code_of(lambda: MaskClient(target).mask(jpeg)) == grpc.StatusCode.UNAUTHENTICATED
    assert code_of(lambda: MaskClient(target, "imk_wrong").mask(jpeg)) == grpc.StatusCode.UNAUTHENTICATED
    assert code_of(lambda: MaskClient(target, revoked).mask(jpeg)) == grpc.StatusCode.PERMISSION_DENIED
    assert len(MaskClient(target, good).mask(jpeg).detections) == 1
    stream = MaskClient(target).mask_stream(iter([mpb.MaskRequest(image=jpeg)]))
    assert code_of(lambda: list(stream)) == grpc.StatusCode.UNAUTHENTICATED
    # A key writes frames.meta only under the camera ids it is bound to.
    assert len(MaskClient(target, good).mask(jpeg, camera_id="lobby").detections) == 1
    assert code_of(lambda: MaskClient(target, good).mask(jpeg, camera_id="dock")) == grpc.StatusCode.PERMISSION_DENIED
    assert code_of(lambda: MaskClient(target, good).mask(jpeg, camera_id="a/b")) == grpc.StatusCode.INVALID_ARGUMENT
    # Revocation takes effect without a restart: the server re-reads the keys file when it changes.
    new_key(keys, "alice", revoke=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and code_of(lambda: MaskClient(target, good).mask(jpeg)) == grpc.StatusCode.OK:
        time.sleep(0.2)
    assert code_of(lambda: MaskClient(target, good).mask(jpeg)) == grpc.StatusCode.PERMISSION_DENIED
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(target))  # type: ignore[no-untyped-call]
    assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING


# Rate-limit windows of an hour: a test's few calls share one window however slow the machine is (a burst is not
# started in a window's last minute), so no test depends on how fast calls are answered.
WINDOW_S = 3600
RATE_LIMIT = {"IMASK_MASK_API_RATE_LIMIT": "5", "IMASK_MASK_API_RATE_LIMIT_WINDOW_S": str(WINDOW_S)}


def _not_near_a_window_end() -> None:
    left = WINDOW_S - time.time() % WINDOW_S
    if left < 60:
        time.sleep(left + 0.1)


def test_rate_limit_is_shared_by_two_servers(stack_up: None, tmp_path: Path, astronaut_image: Image) -> None:
    keys = tmp_path / "keys.json"
    key = new_key(keys, f"rl-{os.getpid()}-{time.time_ns()}")
    env = {"IMASK_AUTH": "api-key", "IMASK_API_KEYS_FILE": str(keys), **RATE_LIMIT}
    _, port1 = start_api(tmp_path, "api1", **env)
    _, port2 = start_api(tmp_path, "api2", **env)
    one, two = MaskClient(f"127.0.0.1:{port1}", key), MaskClient(f"127.0.0.1:{port2}", key)
    jpeg = encode_jpeg(cv2.resize(astronaut_image, (128, 128)), 85)
    _not_near_a_window_end()
    first = [code_of(lambda: one.mask(jpeg)) for _ in range(7)]
    second = [code_of(lambda: two.mask(jpeg)) for _ in range(3)]
    assert first.count(grpc.StatusCode.OK) == 5 and first[5:] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2
    # The second server has seen none of this client's calls itself; Redis says the budget is spent.
    assert second == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 3


def _mask_api_env(field: str) -> str:
    """The variable of a mask-api setting (per-service names where the settings have them)."""
    from imask.ops import settings as cfg

    name_of = getattr(cfg, "env_name", None)
    return str(name_of(cfg.MaskApiSettings, field)) if name_of else f"IMASK_{field.upper()}"


def _redis_server(port: int, log: Path) -> subprocess.Popen[bytes]:
    """A redis-server of this test's own (the Debian binary the stack uses), on its own port."""
    from imask.devstack.stack import REDIS_SERVER

    binary = REDIS_SERVER if Path(REDIS_SERVER).is_file() else "redis-server"
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return proc
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"redis-server did not listen on {port}; see {log}")


def _burst(client: MaskClient, jpeg: bytes, n: int) -> list[grpc.StatusCode]:
    return [code_of(lambda: client.mask(jpeg)) for _ in range(n)]


def test_rate_limit_fails_open_to_a_per_replica_limit_without_redis(tmp_path: Path, astronaut_image: Image) -> None:
    """Redis down (its own redis-server, SIGKILLed): mask-api keeps masking and limits each client within this
    replica, counting every decision made without Redis; once Redis is back the shared budget is used again."""
    import redis

    port = free_port()
    server = _redis_server(port, tmp_path / "redis.log")
    url = f"redis://127.0.0.1:{port}/0"
    try:
        svc, api_port = start_api(tmp_path, **{_mask_api_env("redis_url"): url, **RATE_LIMIT})
        client = MaskClient(f"127.0.0.1:{api_port}")
        jpeg = encode_jpeg(cv2.resize(astronaut_image, (128, 128)), 85)
        ok, limited = grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED
        _not_near_a_window_end()
        assert _burst(client, jpeg, 7) == [ok] * 5 + [limited] * 2  # through Redis
        assert svc.metric("imask_rate_limit_decisions_without_redis_total") == 0
        assert svc.metric("imask_rate_limit_redis_up") == 1

        server.kill()
        server.wait(10)
        reply = client.mask(encode_jpeg(astronaut_image, 90))  # served, and masked as always (fail-closed intact)
        assert len(reply.detections) == 1 and reply.image and not reply.fail_closed
        out = cv2.imdecode(np.frombuffer(reply.image, np.uint8), cv2.IMREAD_COLOR)
        face = (slice(95, 155), slice(205, 270))
        assert detail_ratio(out[face], astronaut_image[face]) < 0.3
        # The same limit, counted by this replica from the call above on (its window: the one Redis counted in)
        assert _burst(client, jpeg, 7) == [ok] * 4 + [limited] * 3
        assert svc.metric("imask_rate_limit_redis_up") == 0
        assert svc.metric("imask_rate_limit_decisions_without_redis_total", 'decision="refused"') == 3
        assert svc.metric("imask_rate_limit_decisions_without_redis_total", 'decision="allowed"') == 5

        server = _redis_server(port, tmp_path / "redis.log")  # back, empty
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and svc.metric("imask_rate_limit_redis_up") != 1:
            code_of(lambda: client.mask(jpeg))  # a call after the retry interval asks Redis again
            time.sleep(0.3)
        assert svc.metric("imask_rate_limit_redis_up") == 1
        without = svc.metric("imask_rate_limit_decisions_without_redis_total")
        store = redis.Redis(port=port)
        window = int(time.time() // WINDOW_S)
        store.set(f"imask:rl:anonymous:{window}", 5, ex=WINDOW_S)  # the budget spent by other replicas
        assert code_of(lambda: client.mask(jpeg)) == limited  # Redis decides again: the shared budget
        assert svc.metric("imask_rate_limit_decisions_without_redis_total") == without
        store.close()
    finally:
        server.kill()
        server.wait(10)


def _health(port: int) -> int:
    stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{port}"))  # type: ignore[no-untyped-call]
    return int(stub.Check(health_pb2.HealthCheckRequest(service="imask.v1.MaskService"), timeout=1).status)


def test_health_through_start_and_drain(stack_up: None, tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "IMASK_MASK_API_PORT": str(port), "IMASK_AUTH": "none", "IMASK_MASK_API_PUBLISH_META": "false",
           "IMASK_MASK_API_DRAIN_DELAY_S": "2", "IMASK_DETECTOR_WIDTH": "1280", "IMASK_DETECTOR_HEIGHT": "736",
           "IMASK_MASK_API_CACHE_TTL_S": "0"}
    svc = spawn_tracked("api", ["mask-api"], tmp_path / "logs", env)
    seen = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not seen or seen[-1] != health_pb2.HealthCheckResponse.SERVING):
        with contextlib.suppress(grpc.RpcError):  # not listening yet
            seen.append(_health(port))
        time.sleep(0.01)
    assert seen[0] == health_pb2.HealthCheckResponse.NOT_SERVING, "health must say NOT_SERVING before warm-up"
    assert seen[-1] == health_pb2.HealthCheckResponse.SERVING
    # A stream is in flight when SIGTERM arrives: health flips first, the stream still completes.
    frames = [encode_jpeg(f, 90) for f in moving_face_frames(20)]

    def slow_requests() -> Iterator[mpb.MaskRequest]:
        for i, data in enumerate(frames):
            if i == 3:
                svc.proc.send_signal(signal.SIGTERM)
            time.sleep(0.05)
            yield mpb.MaskRequest(image=data, seq=i)

    client = MaskClient(f"127.0.0.1:{port}")
    replies = client.mask_stream(slow_requests(), timeout_s=60)
    got = []
    flipped = False
    for reply in replies:
        got.append(reply.seq)
        if len(got) == 6:
            flipped = _health(port) == health_pb2.HealthCheckResponse.NOT_SERVING
    assert got == list(range(20)) and flipped
    assert svc.proc.wait(30) == 0


def _certificates(folder: Path) -> dict[str, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def make(name: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None, ca: bool) -> tuple[
            x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = (x509.CertificateBuilder().subject_name(subject)
                   .issuer_name(issuer[0].subject if issuer else subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1"))]),
                critical=False)
        cert = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
        return cert, key

    ca = make("imask-test-ca", None, True)
    out: dict[str, Path] = {}
    for name, (cert, key) in {"ca": ca, "server": make("localhost", ca, False),
                              "client": make("client", ca, False)}.items():
        out[f"{name}_cert"] = folder / f"{name}.pem"
        out[f"{name}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out[f"{name}_key"] = folder / f"{name}.key"
        out[f"{name}_key"].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    return out


def test_tls_and_mtls(stack_up: None, tmp_path: Path, astronaut_image: Image) -> None:
    pem = _certificates(tmp_path)
    jpeg = encode_jpeg(cv2.resize(astronaut_image, (128, 128)), 85)
    _, tls_port = start_api(tmp_path, "tls", IMASK_TLS_CERT_FILE=str(pem["server_cert"]),
                            IMASK_TLS_KEY_FILE=str(pem["server_key"]))
    target = f"127.0.0.1:{tls_port}"
    assert len(MaskClient(target, tls_ca=pem["ca_cert"]).mask(jpeg).detections) == 1
    assert code_of(lambda: MaskClient(target, timeout_s=3).mask(jpeg)) == grpc.StatusCode.UNAVAILABLE
    _, mtls_port = start_api(tmp_path, "mtls", IMASK_TLS_CERT_FILE=str(pem["server_cert"]),
                             IMASK_TLS_KEY_FILE=str(pem["server_key"]), IMASK_TLS_CLIENT_CA_FILE=str(pem["ca_cert"]))
    target = f"127.0.0.1:{mtls_port}"
    without_cert = MaskClient(target, tls_ca=pem["ca_cert"], timeout_s=3)
    assert code_of(lambda: without_cert.mask(jpeg)) == grpc.StatusCode.UNAVAILABLE
    with_cert = MaskClient(target, tls_ca=pem["ca_cert"], client_cert=pem["client_cert"],
                           client_key=pem["client_key"])
    assert len(with_cert.mask(jpeg).detections) == 1


def test_imask_mask_remote(api: int, tmp_path: Path, astronaut_image: Image) -> None:
    from imask.loadtest.samples import synthetic_clip

    src = tmp_path / "in"
    src.mkdir()
    cv2.imwrite(str(src / "astro.jpg"), astronaut_image)
    synthetic_clip(src / "clip.mp4", frames=20, fps=10)
    out = subprocess.run([sys.executable, "-m", "imask.cli.main", "mask", str(src), "-o", str(tmp_path / "out"),
                          "--remote", f"127.0.0.1:{api}", "-q"], capture_output=True, text=True, cwd=REPO_ROOT,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert {Path(r["output"]).name for r in lines} == {"astro.jpg", "clip.mp4"}
    assert all(r["faces"] >= r["frames"] for r in lines)
    masked = read_image(tmp_path / "out" / "in" / "astro.jpg")
    face = (slice(95, 155), slice(205, 270))
    assert detail_ratio(masked[face], astronaut_image[face]) < 0.3


def test_concurrent_requests_share_detector_batches(stack_up: None, tmp_path: Path,
                                                     astronaut_image: Image) -> None:
    _, port = start_api(tmp_path, IMASK_MASK_API_BATCH_MAX="4", IMASK_MASK_API_BATCH_WAIT_MS="20")
    client = MaskClient(f"127.0.0.1:{port}")
    jpeg = encode_jpeg(astronaut_image, 90)
    futures = [client.stub.Mask.future(mpb.MaskRequest(image=jpeg, seq=i), timeout=60) for i in range(16)]
    replies = [f.result() for f in futures]
    assert sorted(r.seq for r in replies) == list(range(16))
    assert max(r.timings.batch_size for r in replies) > 1
    assert all(len(r.detections) == 1 and not r.fail_closed for r in replies)  # batching changes nothing else
    client.close()


@pytest.mark.kafka
def test_requests_are_published_to_frames_meta(kafka_settings: KafkaSettings, tmp_path: Path,
                                               astronaut_image: Image) -> None:
    _, port = start_api(tmp_path, IMASK_MASK_API_PUBLISH_META="true")
    client = MaskClient(f"127.0.0.1:{port}")
    client.mask(encode_jpeg(astronaut_image, 90), camera_id="lobby", seq=42)
    reader = TopicReader(kafka_settings, {(kafka_settings.topic_meta, p): 0 for p in range(4)})
    meta = None
    deadline = time.monotonic() + 30
    while meta is None and time.monotonic() < deadline:
        msg = reader.poll(0.5)
        if msg is not None:
            meta = pb.FrameMeta.FromString(msg.value() or b"")
    reader.close()
    assert meta is not None and (meta.camera_id, meta.seq, meta.faces_masked) == ("lobby", 42, 1)
    assert meta.worker_id.startswith("mask-api") and meta.timings.inference_ms > 0 and not meta.detections[0].held


def test_fail_closed_reply_never_carries_the_image(stack_up: None, tmp_path: Path, astronaut_image: Image) -> None:
    svc, port = start_api(tmp_path, IMASK_DETECTOR_TIMEOUT_MS="1", IMASK_DETECTOR_WIDTH="1280",
                          IMASK_DETECTOR_HEIGHT="736")
    client = MaskClient(f"127.0.0.1:{port}")
    big = cv2.resize(astronaut_image, (1280, 1280))
    reply = client.mask(encode_jpeg(big, 90))
    out = cv2.imdecode(np.frombuffer(reply.image, np.uint8), cv2.IMREAD_COLOR)
    assert reply.fail_closed and reply.fail_closed_reason in {"detector_timeout", "detector_unhealthy"}
    assert int(out.max()) - int(out.min()) <= 2 and out.shape == big.shape
    assert svc.metric("imask_frames_fail_closed_total") == 1
    assert svc.metric("imask_grpc_requests_total", 'code="OK"') == 1
    client.close()


def test_reflection_and_message_size_limit(stack_up: None, tmp_path: Path) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    _, port = start_api(tmp_path, IMASK_MAX_REQUEST_BYTES="100000")
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)  # type: ignore[no-untyped-call]
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"imask.v1.MaskService", "grpc.health.v1.Health"} <= names
    client = MaskClient(f"127.0.0.1:{port}")
    with pytest.raises(grpc.RpcError) as err:
        client.mask(b"\xff\xd8" + b"\0" * 200_000)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # refused by gRPC before any decoding


def test_serves_while_kafka_is_down_and_counts_lost_meta(tmp_path: Path, astronaut_image: Image) -> None:
    """A synchronous API does not need Kafka: with no broker it still starts, masks, and counts the frames.meta
    records it could not deliver (queued up to a bound and a timeout, then dropped)."""
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    svc, port = start_api(tmp_path, IMASK_MASK_API_PUBLISH_META="true", IMASK_BOOTSTRAP_SERVERS=dead,
                          IMASK_KAFKA_EXTRA='{"message.timeout.ms": "1500"}')
    reply = MaskClient(f"127.0.0.1:{port}").mask(encode_jpeg(astronaut_image, 90), camera_id="lobby")
    assert len(reply.detections) == 1 and reply.image
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and svc.metric("imask_meta_dropped_total", 'reason="undelivered"') < 1:
        time.sleep(0.2)
    assert svc.metric("imask_meta_dropped_total", 'reason="undelivered"') == 1
