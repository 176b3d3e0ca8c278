"""Which alerts were raised and where they went (imask run's summary), from Alertmanager's list and the inbox's
entries as Alertmanager 0.25 sends them (webhook JSON, Slack attachments, mail subjects); the inbox itself in
process: notifications recorded, mail parsed, a request its sender gave up on left out."""

from __future__ import annotations

import json
import smtplib
import time
import urllib.request
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from imask.alerting.deliveries import Notice, describe, notices, parse_time, read_inbox, report
from imask.devstack.alert_inbox import Inbox
from imask.devstack.procs import free_port

T0 = 1_800_000_000.0


def webhook(status: str, alertname: str, camera: str, at: float, path: str = "/webhook") -> dict[str, Any]:
    labels = {"alertname": alertname, "camera": camera, "kind": "camera_down", "severity": "page"}
    return {"received": at, "kind": "webhook", "path": path, "payload": {
        "receiver": "page", "status": status, "alerts": [{"status": status, "labels": labels}],
        "groupLabels": {"alertname": alertname, "camera": camera}, "version": "4"}}


def slack(title: str, at: float) -> dict[str, Any]:
    return {"received": at, "kind": "slack", "path": "/slack", "payload": {
        "channel": "#imask-page", "username": "Alertmanager",
        "attachments": [{"title": title, "text": "Camera lobby is down", "color": "danger"}]}}


def mail(subject: str, at: float, to: str = "imask-oncall@localhost") -> dict[str, Any]:
    return {"received": at, "kind": "email", "to": [to], "subject": subject, "body": "<html>...</html>"}


def am_alert(alertname: str, camera: str, starts: str, state: str = "active", **status: list[str]) -> dict[str, Any]:
    return {"labels": {"alertname": alertname, "camera": camera, "severity": "page"}, "startsAt": starts,
            "status": {"state": state, "silencedBy": status.get("silenced", []),
                       "inhibitedBy": status.get("inhibited", [])}}


def test_each_receiver_format_names_its_alert() -> None:
    assert notices(webhook("firing", "CameraDown", "lobby", T0)) == [
        Notice("webhook", "firing", "CameraDown", "lobby", T0, "/webhook")]
    assert notices(slack("FIRING: CameraDown lobby", T0)) == [
        Notice("slack", "firing", "CameraDown", "lobby", T0, "/slack")]
    assert notices(slack("RESOLVED: FramesUnmasked ", T0)) == [
        Notice("slack", "resolved", "FramesUnmasked", "", T0, "/slack")]
    assert notices(mail("[FIRING:1] CameraDown lobby (camera_down page)", T0)) == [
        Notice("email", "firing", "CameraDown", "lobby", T0, "imask-oncall@localhost")]
    assert notices(mail("[RESOLVED] CameraDown lobby (camera_down page)", T0))[0].status == "resolved"
    # A group without a camera: the parenthesis holds the other common labels, not a camera.
    (grouped,) = notices(mail("[FIRING:2] FailClosedHigh (fail_closed page)", T0))
    assert (grouped.alertname, grouped.camera) == ("FailClosedHigh", "")
    assert notices(webhook("firing", "Watchdog", "", T0, "/watchdog"))[0].receiver == "watchdog"
    for junk in ({"kind": "webhook", "payload": "not json"}, {"kind": "slack", "payload": {"text": "hi"}},
                 {"kind": "email", "subject": "lunch?"}, {"kind": "other"}):
        assert notices(junk) == []


def test_report_joins_alertmanager_and_the_inbox_since_a_moment() -> None:
    alerts = [am_alert("CameraDown", "lobby", "2027-01-15T08:00:05.5Z"),
              am_alert("CameraStalled", "lobby", "2027-01-15T08:00:06Z", "suppressed", inhibited=["fp1"]),
              am_alert("CameraDown", "hall", "2027-01-15T08:00:07Z", "suppressed", silenced=["s1"]),
              am_alert("CameraDown", "old", "2027-01-15T07:00:00Z"),  # raised before the run
              am_alert("Watchdog", "", "2027-01-15T08:00:09Z")]  # always firing: never "raised"
    since = parse_time("2027-01-15T08:00:00Z")
    entries = [webhook("firing", "CameraDown", "lobby", since + 7), slack("FIRING: CameraDown lobby", since + 7),
               mail("[FIRING:1] CameraDown lobby (camera_down page)", since + 7),
               webhook("resolved", "CameraDown", "lobby", since + 20),
               webhook("firing", "CameraDown", "old", since - 100),  # before the run
               webhook("resolved", "CameraRecoveredElsewhere", "gate", since + 30),  # gone from Alertmanager
               webhook("firing", "Watchdog", "", since + 5, "/watchdog")]
    rows = {(r["alertname"], r["camera"]): r for r in report(alerts, entries, since)}
    assert set(rows) == {("CameraDown", "lobby"), ("CameraStalled", "lobby"), ("CameraDown", "hall"),
                         ("CameraRecoveredElsewhere", "gate")}
    lobby = rows[("CameraDown", "lobby")]
    assert lobby["delivered"] == {"webhook": ["firing", "resolved"], "slack": ["firing"], "email": ["firing"]}
    assert lobby["alertmanager"] == "active" and lobby["severity"] == "page"
    assert rows[("CameraStalled", "lobby")]["alertmanager"] == "suppressed (inhibited)"
    assert rows[("CameraDown", "hall")]["alertmanager"] == "suppressed (silenced)"
    assert rows[("CameraDown", "hall")]["delivered"] == {}
    assert rows[("CameraRecoveredElsewhere", "gate")]["alertmanager"] == "gone"
    assert describe(lobby) == ("CameraDown camera=lobby severity=page [active] -> email (firing), "
                               "slack (firing), webhook (firing/resolved)")
    assert describe(rows[("CameraDown", "hall")]).endswith("-> not notified yet")
    assert report([], [], since) == []


def test_alertmanager_times_with_nanoseconds() -> None:
    assert parse_time("2024-01-02T03:04:05.123456789Z") == pytest.approx(1704164645.123456)
    assert parse_time("2024-01-02T03:04:05Z") == 1704164645.0
    assert parse_time("2024-01-02T04:04:05.5+01:00") == 1704164645.5


def test_inbox_keeps_webhooks_and_mail_and_leaves_out_a_request_its_sender_gave_up(tmp_path: Path) -> None:
    inbox = Inbox(tmp_path, free_port(), free_port(), slow_paths={"/slow": 1.5}).start()
    try:
        body = json.dumps({"alerts": [{"status": "firing", "labels": {"alertname": "A", "camera": "c"}}]}).encode()
        with urllib.request.urlopen(urllib.request.Request(f"{inbox.url}/webhook", data=body), timeout=5) as reply:
            assert reply.status == 200
        message = EmailMessage()
        message["Subject"], message["From"], message["To"] = "[FIRING:1] A c (x)", "am@localhost", "oncall@localhost"
        message.set_content("body")
        with smtplib.SMTP("127.0.0.1", inbox.smtp_port, timeout=5) as smtp:
            smtp.send_message(message)
        with pytest.raises(OSError):  # a receiver that times out
            urllib.request.urlopen(urllib.request.Request(f"{inbox.url}/slow", data=body), timeout=0.3)
        assert inbox.delayed == 1
        deadline = time.monotonic() + 10
        while not any(e.get("caller_left") for e in inbox.received) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [e.get("caller_left") for e in inbox.received] == [None, None, True]
        assert [(e["kind"], e.get("path"), e.get("subject")) for e in inbox.notifications()] == [
            ("webhook", "/webhook", None), ("email", None, "[FIRING:1] A c (x)")]
        assert [e["kind"] for e in read_inbox(tmp_path)] == ["webhook", "email"]
        assert [n.receiver for e in inbox.notifications() for n in notices(e)] == ["webhook", "email"]
    finally:
        inbox.stop()
