"""The alerting service's logic without a server: events -> alerts, episodes, delivery, retries, offsets."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from imask.alerting.client import Refused, Unavailable
from imask.alerting.events import Action, Malformed, interpret, rfc3339
from imask.alerting.sink import AlertSink, DeliveryPolicy
from imask.streaming.loop import Inbound
from imask.v1 import alerts_pb2

T0 = 1_700_000_000.0
RUNBOOK = "docs/OPERATIONS.md"


def event(kind: str, camera: str = "cam-1", at: float = T0, severity: int = alerts_pb2.SEVERITY_WARNING,
          **labels: str) -> alerts_pb2.AlertEvent:
    state = labels.pop("state", "")
    return alerts_pb2.AlertEvent(ts_us=int(at * 1e6), kind=kind, severity=severity, source="ingest-1",
                                 camera_id=camera, state=state, detail="connection refused", labels=labels)


class FakeAlertmanager:
    def __init__(self) -> None:
        self.posts: list[list[dict[str, Any]]] = []
        self.fail: list[Exception] = []  # raised by the next posts, in order

    def post(self, alerts: list[dict[str, Any]]) -> None:
        if self.fail:
            raise self.fail.pop(0)
        self.posts.append(alerts)

    @property
    def alerts(self) -> list[dict[str, Any]]:
        return [a for batch in self.posts for a in batch]


class Control:
    def __init__(self) -> None:
        self.paused = False

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    def rewind(self, offsets: object) -> None:
        raise AssertionError("not used")


class Clock:
    def __init__(self) -> None:
        self.now = T0 + 100

    def __call__(self) -> float:
        return self.now


def make_sink(am: FakeAlertmanager, clock: Clock, **policy: Any) -> tuple[AlertSink, Control]:
    control = Control()
    sink = AlertSink(am, control, DeliveryPolicy(**policy), clock=clock, monotonic=clock)  # type: ignore[arg-type]
    return sink, control


def feed(sink: AlertSink, events: list[alerts_pb2.AlertEvent | bytes], start: int = 0) -> None:
    for i, ev in enumerate(events):
        value = ev if isinstance(ev, bytes) else ev.SerializeToString()
        sink.write(Inbound(b"k", value, "alerts", 0, start + i))
    sink.tick()  # after the poll that returned the last record
    sink.tick()  # a poll that returned nothing: caught up, flush


def test_event_becomes_alert_with_labels_annotations_and_runbook() -> None:
    meaning = interpret(event("camera_down", variant="default", url="rtsp://cam"), T0 + 5, RUNBOOK, 3600)
    assert meaning.action is Action.OPEN
    assert meaning.alert.labels == {"alertname": "CameraDown", "severity": "page", "kind": "camera_down",
                                    "variant": "default", "camera": "cam-1"}
    notes = meaning.alert.annotations
    assert notes["runbook_url"] == "docs/OPERATIONS.md#camera-down" and notes["url"] == "rtsp://cam"
    assert notes["summary"] == "Camera cam-1 is down: connection refused"
    payload = meaning.alert.payload(T0 + 240)
    assert payload["startsAt"] == "2023-11-14T22:13:20.000Z" and payload["endsAt"] == "2023-11-14T22:17:20.000Z"


@pytest.mark.parametrize("kind,severity,action", [
    ("tamper_covered", "page", Action.OPEN), ("drift", "ticket", Action.OPEN),
    ("experiment_rolled_back", "ticket", Action.ONESHOT), ("something_new", "ticket", Action.ONESHOT)])
def test_kinds_of_the_catalogue_and_unknown_ones(kind: str, severity: str, action: Action) -> None:
    meaning = interpret(event(kind, feature="luma_mean", test="psi"), T0, RUNBOOK, 3600)
    assert (meaning.alert.labels["severity"], meaning.action) == (severity, action)
    assert {"feature", "test"} <= set(meaning.alert.labels)  # identity labels of drift alerts
    critical = interpret(event(kind, severity=alerts_pb2.SEVERITY_CRITICAL), T0, RUNBOOK, 3600)
    assert critical.alert.labels["severity"] == "page"


@pytest.mark.parametrize("bad", [event("Camera Down"), event(""), event("camera_down", camera="../etc"),
                                 alerts_pb2.AlertEvent(kind="camera_down", camera_id="c")])
def test_malformed_events_are_refused(bad: alerts_pb2.AlertEvent) -> None:
    with pytest.raises(Malformed):
        interpret(bad, T0, RUNBOOK, 3600)


def test_future_event_starts_now() -> None:
    assert interpret(event("camera_down", at=T0 + 3600), T0, RUNBOOK, 3600).alert.starts_at == T0


def test_down_then_recovered_posts_firing_then_resolved_and_commits() -> None:
    am, clock = FakeAlertmanager(), Clock()
    sink, _ = make_sink(am, clock)
    feed(sink, [event("camera_down")])
    [firing] = am.alerts
    assert firing["labels"]["alertname"] == "CameraDown" and firing["endsAt"] > firing["startsAt"]
    assert sink.committable() == {("alerts", 0): 0}  # held: the episode is open, a restart must read it again
    feed(sink, [event("camera_recovered", at=T0 + 30)], start=1)
    resolved = am.alerts[-1]
    assert resolved["labels"] == firing["labels"] and resolved["startsAt"] == firing["startsAt"]
    assert resolved["endsAt"] == "2023-11-14T22:13:50.000Z"
    assert sink.committable() == {("alerts", 0): 2}


def test_resolved_state_ends_the_same_identity_only() -> None:
    am, clock = FakeAlertmanager(), Clock()
    sink, _ = make_sink(am, clock)
    feed(sink, [event("drift", feature="luma_mean", test="psi"), event("drift", feature="sharpness", test="ks")])
    feed(sink, [event("drift", feature="luma_mean", test="psi", state="resolved", at=T0 + 60)], start=2)
    assert [a["labels"]["feature"] for a in am.alerts[-1:]] == ["luma_mean"]
    assert len(sink.book.open) == 1 and sink.committable() == {("alerts", 0): 1}


def test_replay_coalesces_to_the_last_state() -> None:
    """Reading down and recovered back to back (a restart's replay) posts only the resolved alert."""
    am, clock = FakeAlertmanager(), Clock()
    sink, _ = make_sink(am, clock)
    feed(sink, [event("camera_down"), event("camera_recovered", at=T0 + 30)])
    [only] = am.alerts
    assert only["endsAt"] == "2023-11-14T22:13:50.000Z"


def test_alertmanager_down_retries_with_backoff_and_loses_nothing() -> None:
    am, clock = FakeAlertmanager(), Clock()
    sink, _ = make_sink(am, clock, retry_initial_s=0.5, retry_max_s=4)
    am.fail = [Unavailable("connection refused")] * 5
    feed(sink, [event("camera_down", camera=f"cam-{i}") for i in range(3)])
    tries = [clock.now]
    while am.fail:
        clock.now += 0.1
        before = len(am.fail)
        sink.tick()
        if len(am.fail) < before:
            tries.append(clock.now)
        assert sink.committable() == {}  # nothing delivered: no offset may move
    clock.now += 5
    sink.tick()
    gaps = [b - a for a, b in itertools.pairwise(tries)]
    assert gaps == pytest.approx([0.5, 1.0, 2.0, 4.0], abs=0.15), gaps  # capped exponential backoff
    assert sorted(a["labels"]["camera"] for a in am.alerts) == ["cam-0", "cam-1", "cam-2"]
    assert sink.retries == 5 and sink.events_waiting == 0


def test_refused_batch_is_split_and_only_the_bad_alert_dropped() -> None:
    am, clock = FakeAlertmanager(), Clock()
    sink, _ = make_sink(am, clock)
    am.fail = [Refused("HTTP 400"), Refused("HTTP 400")]  # the batch, then the first alert alone
    feed(sink, [event("experiment_rolled_back", camera=""), event("camera_down")])
    assert [a["labels"]["alertname"] for a in am.alerts] == ["CameraDown"]
    assert sink.events_waiting == 0


def test_malformed_bytes_are_skipped_and_committed() -> None:
    am, clock = FakeAlertmanager(), Clock()
    sink, _ = make_sink(am, clock)
    feed(sink, [b"\xff\x00garbage", event("camera_down", camera="bad camera"), event("experiment_rolled_back")])
    assert len(am.alerts) == 1 and sink.committable() == {("alerts", 0): 3}


def test_restart_reads_open_episodes_again_and_posts_the_same_alert() -> None:
    am, clock = FakeAlertmanager(), Clock()
    first, _ = make_sink(am, clock)
    feed(first, [event("camera_stalled", camera="a"), event("camera_down", camera="b"),
                 event("camera_recovered", camera="a", at=T0 + 5)])
    held = first.committable()[("alerts", 0)]
    assert held == 1  # b's episode opened at offset 1
    second, _ = make_sink(am, clock)
    events = [event("camera_stalled", camera="a"), event("camera_down", camera="b"),
              event("camera_recovered", camera="a", at=T0 + 5)]
    feed(second, events[held:], start=held)
    again = am.alerts[-1]
    assert again["labels"]["camera"] == "b" and again["startsAt"] == am.alerts[1]["startsAt"]
    assert set(second.book.open) == set(first.book.open)


def test_firing_alerts_are_posted_again_and_old_episodes_end_by_age() -> None:
    am, clock = FakeAlertmanager(), Clock()
    sink, _ = make_sink(am, clock, resend_s=60, max_age_s=3600)
    feed(sink, [event("camera_down")])
    clock.now += 61
    sink.tick()
    sink.tick()
    assert len(am.alerts) == 2 and am.alerts[1]["endsAt"] > am.alerts[0]["endsAt"]
    clock.now += 3600
    sink.tick()
    sink.tick()
    assert not sink.book.open and am.alerts[-1]["endsAt"] == rfc3339(clock.now)
    assert sink.committable() == {("alerts", 0): 1}


def test_consumer_pauses_above_max_pending_and_resumes() -> None:
    am, clock = FakeAlertmanager(), Clock()
    sink, control = make_sink(am, clock, max_pending=4, retry_initial_s=1)
    am.fail = [Unavailable("down")]
    feed(sink, [event("camera_down", camera=f"c{i}") for i in range(6)])
    assert control.paused
    clock.now += 2
    sink.tick()
    sink.tick()
    assert not control.paused and len(am.alerts) == 6
