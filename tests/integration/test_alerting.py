"""`imask alerting` end to end: a camera served by the project's RTSP simulator and read by the real ingest, the real
broker, `imask alerting` as a process on this module's own `alerts` topic, an Alertmanager of this module's own
(deploy/alertmanager/alertmanager.yml rendered by imask.alerting.amconfig, group wait 1 s) and receivers of its own:
the alert inbox (imask.devstack.alert_inbox) in this process, webhook and Slack-format HTTP and SMTP by aiosmtpd.

The camera events come from the ingest (a killed RTSP server, then the server back); hand-written events stand in
for the emitters not exercised here (stalled and drift for inhibition, bad input, a burst while Alertmanager is down,
a page for the slow receiver). Delivery times are measured from the event's own timestamp to the receiver and
written to out/alerting/e2e.json (docs/BENCHMARKS.md quotes them).

Servers start once for the module; each test uses cameras of its own so tests never see each other's alerts.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

import streams
from conftest import subprocess_env
from imask.alerting import amconfig
from imask.alerting.client import AlertmanagerClient
from imask.alerting.deliveries import Notice, notices, report
from imask.devstack.alert_inbox import Inbox
from imask.devstack.alertmanager import ALERTMANAGER_CONFIG
from imask.devstack.procs import ServiceProcess, free_port, spawn, stop_all
from imask.devstack.prometheus import binary, ready_at
from imask.devstack.rtsp_server import RtspServer, available
from imask.devstack.settings import REPO_ROOT, StackSettings
from imask.loadtest.samples import synthetic_clip
from imask.ops.settings import KafkaSettings
from imask.streaming.kafka import TopicReader, delete_topics, end_offsets, ensure_topics, producer_config
from imask.v1 import alerts_pb2

pytestmark = [pytest.mark.kafka, pytest.mark.alertmanager]

GROUP_WAIT_S = 1.0
GROUP_INTERVAL_S = 2.0
# A notification is due group_wait (first) or group_interval (resolved, next ones) after Alertmanager has the alert;
# this allows for the ingest, the service's poll, the post and a busy machine on top.
DELIVERY_S = 15.0
# What "within group_wait plus a few seconds" allows, measured from the event's own time to each receiver (about
# 1.2 s here: the poll, the post, the 1 s group wait, the notification).
PROMPT_S = GROUP_WAIT_S + 5.0
PAGE_RECEIVERS = {"webhook", "slack", "email"}
TICKET_RECEIVERS = {"webhook", "email"}
RESULTS = REPO_ROOT / "out" / "alerting" / "e2e.json"
MEASURED: dict[str, Any] = {}


def wait_until(what: str, probe: Callable[[], Any], timeout: float = DELIVERY_S) -> Any:
    return streams.wait_until(what, probe, timeout)


class TestAlertmanager:
    """Debian's prometheus-alertmanager on a free port with the project's routes, timed for a test."""

    __test__ = False  # not a test class

    def __init__(self, folder: Path, inbox: Inbox) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        receivers = amconfig.Receivers(http_base=inbox.url, slack_url=f"{inbox.url}/slack",
                                       smarthost=f"127.0.0.1:{inbox.smtp_port}", webhook_token="test-token")
        config = amconfig.timed(amconfig.render(amconfig.load(ALERTMANAGER_CONFIG), receivers),
                                f"{GROUP_WAIT_S:g}s", f"{GROUP_INTERVAL_S:g}s", "1h")
        self.config = amconfig.write(config, folder, receivers)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.folder / "alertmanager.log").open("ab")
        self.proc = subprocess.Popen(
            [binary("prometheus-alertmanager"), f"--config.file={self.config}",
             f"--storage.path={self.folder / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
             "--cluster.listen-address=", f"--web.external-url={self.url}"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        wait_until("Alertmanager ready", lambda: ready_at(f"{self.url}/-/ready"), timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def alerts(self) -> list[dict[str, Any]]:
        return [dict(a) for a in AlertmanagerClient(self.url).alerts()]

    def alert(self, alertname: str, camera: str) -> dict[str, Any] | None:
        return next((a for a in self.alerts() if a["labels"].get("alertname") == alertname
                     and a["labels"].get("camera") == camera), None)

    def metric(self, name: str, labels: str = "") -> float:
        import urllib.request

        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as reply:  # nosec B310: loopback
            body = reply.read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
                   if line.startswith(name) and line[len(name)] in " {" and labels in line)

    def silence(self, *matchers: str, comment: str) -> str:
        done = subprocess.run([binary("amtool"), f"--alertmanager.url={self.url}", "silence", "add", *matchers,
                               "--duration=1h", f"--comment={comment}", "--author=tests"],
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()  # the silence's id


class Stage:
    """What the tests share: topics, the inbox, Alertmanager, the alerting service, and how to publish events."""

    def __init__(self, settings: KafkaSettings, env: dict[str, str], inbox: Inbox, am: TestAlertmanager,
                 service: ServiceProcess, logs: Path) -> None:
        self.settings = settings
        self.env = env
        self.inbox = inbox
        self.am = am
        self.service = service
        self.logs = logs
        self.producer = Producer(producer_config(settings))

    def publish(self, *values: bytes | alerts_pb2.AlertEvent) -> None:
        for value in values:
            data = value.SerializeToString() if isinstance(value, alerts_pb2.AlertEvent) else value
            self.producer.produce(self.settings.topic_alerts, value=data)
        assert self.producer.flush(30) == 0

    def notices(self, camera: str, alertname: str | None = None, status: str | None = None,
                since: float = 0.0) -> list[Notice]:
        return [n for entry in self.inbox.notifications() for n in notices(entry)
                if n.camera == camera and (alertname is None or n.alertname == alertname)
                and (status is None or n.status == status) and n.received >= since]

    def reached(self, camera: str, alertname: str, status: str, receivers: set[str],
                since: float = 0.0) -> dict[str, Notice] | None:
        """The first notice of each receiver, once every one of `receivers` has one."""
        first: dict[str, Notice] = {}
        for n in self.notices(camera, alertname, status, since):
            first.setdefault(n.receiver, n)
        return first if receivers <= set(first) else None

    def events(self) -> list[alerts_pb2.AlertEvent]:
        """Every event on the topic so far (decodable ones)."""
        end = end_offsets(self.settings, [self.settings.topic_alerts])
        reader = TopicReader(self.settings, {key: 0 for key in end})
        seen: dict[tuple[str, int], int] = {}
        found = []
        deadline = time.monotonic() + 30
        try:
            while any(seen.get(k, 0) < v for k, v in end.items()) and time.monotonic() < deadline:
                msg = reader.poll(0.5)
                if msg is None:
                    continue
                seen[(msg.topic(), msg.partition())] = msg.offset() + 1
                try:
                    found.append(alerts_pb2.AlertEvent.FromString(msg.value() or b""))
                except Exception:  # the bad-input test's garbage
                    continue
        finally:
            reader.close()
        return found

    def service_metric(self, name: str, labels: str = "") -> float:
        return self.service.metric(name, labels)


def event(kind: str, camera: str, severity: alerts_pb2.Severity = alerts_pb2.SEVERITY_WARNING, state: str = "",
          **labels: str) -> alerts_pb2.AlertEvent:
    return alerts_pb2.AlertEvent(ts_us=int(time.time() * 1e6), kind=kind, severity=severity, source="test",
                                 camera_id=camera, state=state, detail=f"{kind} written by the test", labels=labels)


def record(name: str, value: Any) -> None:
    MEASURED[name] = value
    print(f"[alerting e2e] {name}: {json.dumps(value)}")


def delivery(first: dict[str, Notice], since: float) -> dict[str, float]:
    return {receiver: round(n.received - since, 3) for receiver, n in sorted(first.items())}


@pytest.fixture(scope="module")
def stage(stack_up: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stage]:
    folder = tmp_path_factory.mktemp("alerting")
    suffix = uuid.uuid4().hex[:8]
    topics = {"IMASK_TOPIC_RAW": f"a{suffix}.raw", "IMASK_TOPIC_MASKED": f"a{suffix}.masked",
              "IMASK_TOPIC_META": f"a{suffix}.meta", "IMASK_TOPIC_DLQ": f"a{suffix}.dlq",
              "IMASK_TOPIC_ALERTS": f"a{suffix}.alerts"}
    env = {**subprocess_env(), **topics, "IMASK_BOOTSTRAP_SERVERS": StackSettings().bootstrap_servers,
           "IMASK_PARTITIONS": "1"}
    fields: dict[str, Any] = {k.removeprefix("IMASK_").lower(): v for k, v in topics.items()}
    settings = KafkaSettings(bootstrap_servers=env["IMASK_BOOTSTRAP_SERVERS"], partitions=1, **fields)
    ensure_topics(settings)
    inbox = Inbox(folder / "inbox", free_port(), free_port()).start()
    am = TestAlertmanager(folder / "alertmanager", inbox)
    service: ServiceProcess | None = None
    try:
        am.start()
        # Retries at most 2 s apart, so Alertmanager back is noticed within seconds; no lag sampling here.
        service = spawn("alerting", ["alerting", "--group-id", f"alerting-{suffix}"], folder / "logs",
                        {**env, "IMASK_ALERTING_ALERTMANAGER_URL": am.url, "IMASK_ALERTING_RETRY_MAX_S": "2",
                         "IMASK_ALERTING_LAG_GROUPS": "{}"})
        service.wait_ready(60)
        yield Stage(settings, env, inbox, am, service, folder / "logs")
    finally:
        if service is not None:
            codes = stop_all([service], timeout=15)
            assert codes == {"alerting": 0}, f"imask alerting exited with {codes}; see {service.log_path}"
        am.stop()
        inbox.stop()
        delete_topics(settings, list(topics.values()))
        if MEASURED:
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            RESULTS.write_text(json.dumps(MEASURED, indent=2))


def test_a_killed_camera_pages_every_receiver_resolves_on_recovery_and_a_silence_mutes_the_next(
        stage: Stage, tmp_path: Path) -> None:
    missing = available()
    if missing:
        pytest.skip(missing)
    camera, elsewhere = "lobby", "hall"
    clip = synthetic_clip(tmp_path / "clip.mp4", frames=45, fps=15, size=(320, 180))
    server = RtspServer({camera: clip}, log_path=tmp_path / "rtsp.log").start(timeout=60)
    ingest = spawn("ingest", ["ingest", "--source", f"{camera}={server.url(camera)}", "--fps", "5", "--drop-policy",
                              "realtime", "--admin-port", "-1"], stage.logs,
                   {**stage.env, "IMASK_INGEST_BACKOFF_INITIAL_S": "0.3", "IMASK_INGEST_BACKOFF_MAX_S": "1.0"})
    try:
        ingest.wait_ready(60)
        running = f'camera="{camera}",state="running"'
        wait_until("camera running", lambda: ingest.metric("imask_camera_state", running) == 1, timeout=60)

        # Down: the ingest reports it, every page receiver hears of it.
        killed = time.time()
        server.kill()
        first = wait_until("CameraDown at webhook, Slack and mail",
                           lambda: stage.reached(camera, "CameraDown", "firing", PAGE_RECEIVERS))
        down = next(e for e in stage.events() if e.kind == "camera_down" and e.camera_id == camera)
        down_ts = down.ts_us / 1e6
        record("camera_down_event_after_kill_s", round(down_ts - killed, 3))
        record("camera_down_delivery_s", delivery(first, down_ts))
        assert max(delivery(first, down_ts).values()) <= PROMPT_S

        # While it is down, its stalled and drift alerts are inhibited; the same kinds of another camera are not.
        stage.publish(event("camera_stalled", camera), event("camera_stalled", elsewhere),
                      event("drift", camera, variant="default", feature="brightness", test="psi"),
                      event("drift", elsewhere, variant="default", feature="brightness", test="psi"))
        wait_until("the other camera's stalled and drift alerts delivered", lambda: stage.reached(
            elsewhere, "CameraStalled", "firing", TICKET_RECEIVERS) and stage.reached(
            elsewhere, "CameraDrift", "firing", TICKET_RECEIVERS))
        for name in ("CameraStalled", "CameraDrift"):
            muted = stage.am.alert(name, camera)
            assert muted is not None and muted["status"]["state"] == "suppressed", muted
            assert muted["status"]["inhibitedBy"], muted
        time.sleep(GROUP_WAIT_S)  # a group flushed after the other camera's would still show up now
        assert stage.notices(camera, "CameraStalled") == [] and stage.notices(camera, "CameraDrift") == []
        # The drift ends while the camera is still down (so it has nothing to say once the camera is back).
        stage.publish(event("drift", camera, state="resolved", variant="default", feature="brightness", test="psi"))

        # Recovered: resolved notifications on all three; the muted stalled alert (resolved too) is never sent.
        back = time.time()
        server.start(timeout=60)
        resolved = wait_until("CameraDown resolved at webhook, Slack and mail",
                              lambda: stage.reached(camera, "CameraDown", "resolved", PAGE_RECEIVERS), timeout=60)
        recovered = next(e for e in stage.events() if e.kind == "camera_recovered" and e.camera_id == camera)
        record("camera_recovered_event_after_server_back_s", round(recovered.ts_us / 1e6 - back, 3))
        record("camera_resolved_delivery_s", delivery(resolved, recovered.ts_us / 1e6))
        assert max(delivery(resolved, recovered.ts_us / 1e6).values()) <= PROMPT_S + GROUP_INTERVAL_S
        assert recovered.gap_s > 0

        # A silence made with amtool mutes the next one.
        silence_id = stage.am.silence(f"camera={camera}", "alertname=CameraDown", comment="moving the camera")
        silenced_at = time.time()
        server.kill()
        silenced = wait_until("the second CameraDown silenced in Alertmanager", lambda: (
            a := stage.am.alert("CameraDown", camera)) and a["status"]["silencedBy"] == [silence_id] and a)
        assert silenced["status"]["state"] == "suppressed"
        time.sleep(GROUP_WAIT_S + GROUP_INTERVAL_S + 1)  # past the moment it would have been sent
        assert stage.notices(camera, "CameraDown", "firing", since=silenced_at) == []
        assert stage.notices(camera, "CameraStalled") == [] and stage.notices(camera, "CameraDrift") == []
        assert ingest.proc.poll() is None and stage.service.proc.poll() is None
    finally:
        stop_all([ingest], timeout=15)
        server.kill()


def test_malformed_events_are_counted_and_skipped_and_the_service_goes_on(stage: Stage) -> None:
    camera = "bad-input"
    malformed = stage.service_metric("imask_alerting_events_total", 'outcome="malformed"')
    no_ts = event("camera_down", camera)
    no_ts.ts_us = 0
    bad: list[bytes | alerts_pb2.AlertEvent] = [b"\xff\x00 not a protobuf", no_ts, event("Not A Kind!", camera),
                                                event("", camera), event("camera_down", "no spaces allowed in ids")]
    # After them, a well-formed kind the catalogue does not know: it still reaches people, once (docs/OPERATIONS.md).
    stage.publish(*bad, event("disk_full", camera, alerts_pb2.SEVERITY_CRITICAL))
    first = wait_until("the event after the bad ones delivered",
                       lambda: stage.reached(camera, "DiskFull", "firing", PAGE_RECEIVERS))
    assert stage.service_metric("imask_alerting_events_total", 'outcome="malformed"') - malformed == len(bad)
    assert stage.service_metric("imask_alerting_events_total", 'kind="disk_full",outcome="oneshot"') == 1
    assert {n.alertname for n in stage.notices(camera)} == {"DiskFull"}
    assert stage.service.proc.poll() is None and stage.service.ready()
    record("malformed_counted", len(bad))
    record("after_malformed_delivery_receivers", sorted(first))


def test_alertmanager_down_for_a_while_loses_nothing(stage: Stage) -> None:
    cameras = [f"outage-{i}" for i in range(10)]
    retries_before = stage.service_metric("imask_alerting_posts_total", 'result="unavailable"')
    stage.am.stop()
    went_down = time.time()
    try:
        stage.publish(*(event("camera_stalled", c) for c in cameras))
        wait_until("the service retrying", lambda: stage.service_metric(
            "imask_alerting_posts_total", 'result="unavailable"') - retries_before >= 4, timeout=30)
        assert stage.service_metric("imask_alerting_pending_alerts") == len(cameras)
    finally:
        stage.am.start()
    came_back = time.time()
    wait_until("all ten alerts in Alertmanager", lambda: {a["labels"].get("camera") for a in stage.am.alerts()
                                                          if a["labels"]["alertname"] == "CameraStalled"}
               >= set(cameras))
    wait_until("all ten notified on the webhook and by mail", lambda: all(
        stage.reached(c, "CameraStalled", "firing", TICKET_RECEIVERS) for c in cameras), timeout=30)
    taken = time.time()
    delivered = [c for c in cameras if stage.reached(c, "CameraStalled", "firing", TICKET_RECEIVERS)]
    time.sleep(GROUP_INTERVAL_S)  # a repeat would come by now: posts retried are merged, notified once
    repeats = sum(len(stage.notices(c, "CameraStalled", "firing")) - len(TICKET_RECEIVERS) for c in cameras)
    retries = stage.service_metric("imask_alerting_posts_total", 'result="unavailable"') - retries_before
    assert stage.service_metric("imask_alerting_pending_alerts") == 0
    record("alertmanager_down", {"events": len(cameras), "delivered": len(delivered),
                                 "lost": len(cameras) - len(delivered), "repeats": repeats, "retries": int(retries),
                                 "down_s": round(came_back - went_down, 1),
                                 "all_notified_after_back_s": round(taken - came_back, 2)})
    assert len(delivered) == len(cameras) and repeats == 0


def test_a_receiver_that_times_out_holds_back_no_other(stage: Stage) -> None:
    camera = "slow-hook"
    failed = stage.am.metric("alertmanager_notifications_failed_total", 'integration="webhook"')
    delayed = stage.inbox.delayed
    stage.inbox.slow_paths["/webhook"] = 12.0  # past Alertmanager's 10 s notification timeout
    try:
        published = time.time()
        stage.publish(event("tamper_covered", camera))
        wait_until("the webhook called", lambda: stage.inbox.delayed > delayed)
    finally:
        stage.inbox.slow_paths.clear()  # the call under way hangs on; Alertmanager's next try is answered
    first = wait_until("Slack and mail despite the hanging webhook",
                       lambda: stage.reached(camera, "CameraCovered", "firing", {"slack", "email"}))
    assert not [n for n in stage.notices(camera) if n.receiver == "webhook"]
    record("slow_webhook_others_delivery_s", delivery(first, published))
    assert max(delivery(first, published).values()) <= PROMPT_S
    wait_until("Alertmanager counting the webhook's time-out", lambda: stage.am.metric(
        "alertmanager_notifications_failed_total", 'integration="webhook"') > failed, timeout=30)
    # Once the webhook answers again it gets the alert too, on the group's next round; the request Alertmanager
    # gave up on is kept by the inbox as one whose caller left, not as a delivery.
    retried = wait_until("the webhook notified after its time-out", lambda: [
        n for n in stage.notices(camera, "CameraCovered") if n.receiver == "webhook"], timeout=30)
    record("slow_webhook_delivery_after_timeout_s", round(retried[0].received - published, 2))
    wait_until("the abandoned request noted", lambda: any(
        e.get("caller_left") and e["payload"]["commonLabels"].get("camera") == camera for e in stage.inbox.received))
    rows = {(r["alertname"], r["camera"]): r for r in report(stage.am.alerts(), stage.inbox.notifications(),
                                                             published - 1)}
    assert set(rows[("CameraCovered", camera)]["delivered"]) == PAGE_RECEIVERS

