"""The console's page data, auth and CSRF, without servers: LiveState fed with protobuf records, page assembly on
dicts as the sources answer them, and the FastAPI app in process (TestClient) over sources that are not there."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from imask.console import pages
from imask.console.app import ConsoleSources, create_app
from imask.console.auth import OperatorKeys, Sessions, check_auth_settings
from imask.console.live import LiveState, percentile
from imask.console.sources import IngestAdmin
from imask.ops.grpc_auth import hash_key
from imask.ops.settings import ConfigError
from imask.v1 import alerts_pb2
from imask.v1 import frames_pb2 as pb

TOKEN = "operator-token-0123456789"
NOW = 1_700_000_000.0


def masked(camera: str, seq: int, capture_s: float, fail_closed: bool = False) -> pb.MaskedFrame:
    frame = pb.Frame(camera_id=camera, seq=seq, capture_ts_us=int(capture_s * 1e6), encoding=pb.ENCODING_JPEG,
                     width=4, height=2, data=b"\xff\xd8jpeg" + bytes([seq]))
    return pb.MaskedFrame(frame=frame, faces_masked=1, fail_closed=fail_closed,
                          fail_closed_reason="detector_timeout" if fail_closed else "")


def meta(camera: str, seq: int, capture_s: float, e2e_ms: float, faces: int) -> pb.FrameMeta:
    return pb.FrameMeta(camera_id=camera, seq=seq, capture_ts_us=int(capture_s * 1e6), faces_masked=faces,
                        timings=pb.StageTimings(end_to_end_ms=e2e_ms))


def test_live_state_keeps_the_newest_masked_picture_and_recent_figures() -> None:
    live = LiveState(history_s=120)
    live.on_masked(masked("a", 5, NOW - 1), now=NOW)
    live.on_masked(masked("a", 4, NOW - 2), now=NOW)  # older, arrived late: not shown
    assert live.picture("a") is not None and live.picture("a").seq == 5  # type: ignore[union-attr]
    live.on_masked(masked("a", 0, NOW - 0.5, fail_closed=True), now=NOW)  # a restarted stream
    picture = live.picture("a")
    assert picture is not None and picture.seq == 0 and picture.fail_closed
    live.on_masked(pb.MaskedFrame(frame=pb.Frame(camera_id="a", seq=9, end_of_stream=True)), now=NOW)
    assert live.picture("a") == picture  # the end-of-stream marker carries no picture
    for i in range(100):
        live.on_meta(meta("a", i, NOW - 50 + i * 0.4, e2e_ms=100 + i, faces=i % 3), now=NOW)
    live.on_meta(meta("a", 999, NOW - 500, 5000, 9), now=NOW)  # older than the history: gone
    figures = live.figures("a", now=NOW)
    assert figures["frames"] == 100 and figures["end_to_end_p99_ms"] == 198
    assert figures["faces_per_frame"] == pytest.approx(sum(i % 3 for i in range(100)) / 100)
    assert figures["lag_s"] == pytest.approx(0.5)
    series = live.series("a", now=NOW)
    assert sum(b["frames"] for b in series) == 100 and all(b["t"] % 5 == 0 for b in series)
    assert percentile([], 99) is None and percentile([1.0, 2.0], 50) == 1.0


def test_camera_rows_join_the_ingest_with_what_was_masked() -> None:
    live = LiveState()
    live.on_masked(masked("lobby", 3, NOW - 0.25), now=NOW)
    live.on_meta(meta("lobby", 3, NOW - 0.25, 120.0, 2), now=NOW)
    live.on_masked(masked("sdk-cam", 1, NOW - 1), now=NOW)
    live.on_alert(alerts_pb2.AlertEvent(ts_us=int(NOW * 1e6), kind="camera_stalled", camera_id="lobby",
                                        severity=alerts_pb2.SEVERITY_WARNING, detail="no frame for 5 s"))
    rows = pages.camera_rows([{"camera_id": "lobby", "state": "running", "fps_in": 6.0, "fps_out": 5.9,
                               "url": "rtsp://***@cam/1"}, {"camera_id": "dock", "state": "starting"}], live, NOW)
    by_id = {r["camera_id"]: r for r in rows}
    assert [r["camera_id"] for r in rows] == ["lobby", "dock", "sdk-cam"]
    assert by_id["lobby"]["end_to_end_p99_ms"] == 120.0 and by_id["lobby"]["lag_s"] == 0.25
    assert by_id["lobby"]["last_alert"] == "camera_stalled (warning)" and by_id["lobby"]["preview"]
    assert by_id["dock"]["end_to_end_p99_ms"] is None and not by_id["dock"]["preview"]
    assert by_id["sdk-cam"]["state"] == "not in this ingest" and not by_id["sdk-cam"]["in_ingest"]


RESULTS = {
    "status": {"spec": {"name": "canary-1", "strategy": "STRATEGY_CANARY", "arms": [
        {"name": "control", "variant": "default", "weight": 0.9},
        {"name": "challenger", "variant": "imask-masker/3", "weight": 0.1}],
        "guardrails": [{"metric": "latency_ms", "tolerance": 0.2}]},
        "state": "EXPERIMENT_STATE_RUNNING", "config_version": "4", "last_change": "ramp to 0.25",
        "arms": [{"name": "control", "weight": 0.75}, {"name": "challenger", "weight": 0.25}]},
    "arms": [{"arm": "control", "cameras": 12, "frames": "3000", "metrics": {"latency_ms": 101.23456}},
             {"arm": "challenger", "cameras": 4, "frames": "1000"}],
    "guardrails": [{"metric": "latency_ms", "outcome": "failed", "estimate": 0.31, "ci_low": 0.22, "ci_high": 0.4,
                    "p_value": 0.0001}],
    "srm_cameras": True, "srm_cameras_p": 0.0002, "recommendation": "rollback",
    "reasons": ["latency_ms failed"], "failed_checks": 2,
}


def test_experiment_summary() -> None:
    summary = pages.experiment_summary(RESULTS)
    assert summary["name"] == "canary-1" and summary["state"] == "running" and summary["changeable"]
    assert [(a["name"], a["variant"], a["weight"], a["cameras"], a["frames"]) for a in summary["arms"]] == [
        ("control", "default", 0.75, 12, 3000), ("challenger", "imask-masker/3", 0.25, 4, 1000)]
    assert summary["arms"][0]["metrics"] == {"latency_ms": 101.2346}
    assert summary["guardrails"] == [{"metric": "latency_ms", "outcome": "failed", "estimate": 0.31,
                                      "ci": [0.22, 0.4], "p_value": 0.0001, "tolerance": 0.2}]
    assert summary["srm"]["cameras"] and not summary["srm"]["frames"] and summary["srm"]["frames_p"] == 1.0
    assert summary["recommendation"] == "rollback" and summary["failed_checks"] == 2
    rolled = {**RESULTS, "status": {**RESULTS["status"], "state": "EXPERIMENT_STATE_ROLLED_BACK"}}
    assert not pages.experiment_summary(rolled)["changeable"]


def test_alert_rows_say_where_each_was_delivered() -> None:
    am = [{"labels": {"alertname": "CameraStalled", "camera": "lobby", "severity": "ticket"},
           "status": {"state": "active", "silencedBy": [], "inhibitedBy": []}, "startsAt": "2026-01-01T00:00:00Z",
           "receivers": [{"name": "slack"}, {"name": "email"}], "annotations": {"summary": "Camera lobby stalled"}},
          {"labels": {"alertname": "CameraDown", "camera": "dock", "severity": "page"},
           "status": {"state": "suppressed", "silencedBy": ["x"], "inhibitedBy": []}, "receivers": []},
          {"labels": {"alertname": "Watchdog"}, "status": {"state": "active"}, "receivers": [{"name": "watchdog"}]}]
    recent = [{"ts": NOW, "kind": "camera_stalled", "camera": "lobby", "severity": "warning", "detail": "x"},
              {"ts": NOW - 5, "kind": "camera_recovered", "camera": "yard", "severity": "info", "detail": "y"}]
    rows = pages.alert_rows(am, recent)
    assert [(r["alertname"], r["state"], r["delivered"]) for r in rows["open"]] == [
        ("CameraDown", "suppressed (silenced)", []), ("CameraStalled", "active", ["email", "slack"])]
    assert [(r["alertname"], r["delivered"]) for r in rows["recent"]] == [
        ("CameraStalled", ["email", "slack"]), ("CameraRecovered", [])]


def test_alert_rows_add_what_each_receiver_confirmed_from_an_alert_inbox(tmp_path: Path) -> None:
    from imask.console.sources import Alertmanager

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    entries = [
        {"kind": "webhook", "path": "/alerts", "received": NOW, "payload": {"alerts": [
            {"status": "firing", "labels": {"alertname": "CameraStalled", "camera": "lobby"}}]}},
        {"kind": "slack", "path": "/slack", "received": NOW, "payload": {"attachments": [
            {"title": "FIRING: CameraStalled lobby"}]}},
        {"kind": "email", "received": NOW + 1, "subject": "[RESOLVED] CameraStalled lobby", "to": ["ops@x"]},
        {"kind": "webhook", "path": "/alerts", "received": NOW - 90000, "payload": {"alerts": [  # before `since`
            {"status": "firing", "labels": {"alertname": "CameraDown", "camera": "dock"}}]}}]
    (inbox / "inbox.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    confirmed = Alertmanager("http://127.0.0.1:1", inbox).confirmed(since=NOW - 60)
    assert confirmed == {("CameraStalled", "lobby"): {"webhook": ["firing"], "slack": ["firing"],
                                                       "email": ["resolved"]}}
    am = [{"labels": {"alertname": "CameraStalled", "camera": "lobby", "severity": "ticket"},
           "status": {"state": "active"}, "receivers": [{"name": "slack"}]},
          {"labels": {"alertname": "CameraDown", "camera": "dock", "severity": "page"},
           "status": {"state": "active"}, "receivers": [{"name": "page"}]}]
    rows = pages.alert_rows(am, [{"ts": NOW, "kind": "camera_stalled", "camera": "lobby"}], confirmed)
    assert {r["alertname"]: r["confirmed"] for r in rows["open"]} == {
        "CameraStalled": "email (resolved), slack (firing), webhook (firing)", "CameraDown": ""}
    assert rows["recent"][0]["confirmed"] == "email (resolved), slack (firing), webhook (firing)"
    assert Alertmanager("http://127.0.0.1:1").confirmed() == {}  # no inbox: nothing claimed


def test_model_rows_newest_first_with_evaluations() -> None:
    versions = [{"version": "1", "aliases": [], "variant": "default", "detector": "centerface", "sha256": "ab" * 32,
                 "created_ms": 0},
                {"version": "2", "aliases": ["champion"], "variant": "crowd", "detector": "centerface",
                 "sha256": "cd" * 32, "created_ms": 0}]
    evaluations = {"2": {"d" * 64: {"name": "wider_dev", "kind": "labelled", "recall": 0.91234567, "leak_rate": 0.0,
                                    "run_id": "r"}}}
    rows = pages.model_rows(versions, evaluations)
    assert [r["version"] for r in rows] == ["2", "1"] and rows[0]["aliases"] == ["champion"]
    assert rows[0]["evaluations"] == [{"dataset": "wider_dev", "digest": "d" * 12,
                                       "figures": {"recall": 0.9123, "leak_rate": 0.0}}]
    assert rows[1]["evaluations"] == [] and rows[0]["sha256"] == "cd" * 6


def test_operator_keys_token_and_keys_file_with_the_operator_role(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps({"clients": {
        "alice": {"sha256": hash_key("alice-key"), "role": "operator"},
        "bob": {"sha256": hash_key("bob-key")},  # a mask-api client: no operator
        "carol": {"sha256": hash_key("carol-key"), "role": "operator", "revoked": True}}}))
    keys = OperatorKeys(TOKEN, keys_file)
    assert keys.check(TOKEN) == "operator-token" and keys.check("alice-key") == "alice"
    assert keys.check("bob-key") is None and keys.check("carol-key") is None and keys.check("") is None
    with pytest.raises(ConfigError, match="IMASK_CONSOLE_TOKEN"):
        check_auth_settings("", None)
    with pytest.raises(ConfigError, match="16 characters"):
        check_auth_settings("short", None)
    check_auth_settings(TOKEN, None)


def test_sessions_are_signed_expire_and_have_their_own_csrf_token() -> None:
    sessions = Sessions(ttl_s=60, secret=b"k" * 32)
    cookie = sessions.issue("alice", now=NOW)
    who = sessions.read(cookie, now=NOW + 30)
    assert who is not None and who.name == "alice"
    assert sessions.read(cookie, now=NOW + 61) is None  # expired
    assert sessions.read(cookie[:-1] + ("0" if cookie[-1] != "0" else "1"), now=NOW) is None  # tampered
    assert Sessions(60, b"x" * 32).read(cookie, now=NOW) is None  # another process's secret
    other = sessions.read(sessions.issue("alice", now=NOW), now=NOW)
    assert other is not None and sessions.csrf(who) != sessions.csrf(other)
    assert sessions.check_csrf(who, sessions.csrf(who)) and not sessions.check_csrf(who, sessions.csrf(other))
    assert not sessions.check_csrf(who, "")


@pytest.fixture
def client() -> TestClient:
    live = LiveState()
    live.on_masked(masked("lobby", 7, 1e9, fail_closed=True))
    # An ingest URL nothing listens on: pages say so and still render.
    sources = ConsoleSources(ingest=IngestAdmin("http://127.0.0.1:9"))
    app = create_app(OperatorKeys(TOKEN), Sessions(3600), live, sources)
    return TestClient(app)


def test_app_refuses_without_the_token_and_changes_without_csrf(client: TestClient) -> None:
    assert client.get("/cameras", follow_redirects=False).headers["location"].startswith("/login")
    assert client.get("/api/cameras").status_code == 401
    assert client.get("/cameras/lobby/preview").status_code == 401
    assert client.post("/cameras", data={"camera_id": "x", "url": "rtsp://h/"}).status_code == 401
    assert client.post("/login", data={"token": "wrong"}).status_code == 401
    signed = client.post("/login", data={"token": TOKEN, "next": "//evil.example/"}, follow_redirects=False)
    assert signed.status_code == 303 and signed.headers["location"] == "/cameras"  # no open redirect
    cookie = signed.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and TOKEN not in cookie
    page = client.get("/cameras")
    assert page.status_code == 200 and "does not answer" in page.text and "lobby" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "https://" not in page.text  # nothing from elsewhere
    assert client.post("/cameras", data={"camera_id": "x", "url": "rtsp://h/"}).status_code == 403
    assert client.post("/cameras", data={"camera_id": "x", "url": "rtsp://h/", "csrf": "forged"}).status_code == 403
    csrf = page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    added = client.post("/cameras", data={"camera_id": "x", "url": "rtsp://h/", "csrf": csrf},
                        follow_redirects=False)
    assert added.status_code == 303 and "err=" in added.headers["location"]  # past CSRF, the ingest is away
    preview = client.get("/cameras/lobby/preview")
    assert preview.status_code == 200 and preview.headers["content-type"] == "image/jpeg"
    assert preview.headers["x-imask-fail-closed"] == "1"
    assert client.get("/cameras/nobody/preview").status_code == 404
    detail = client.get("/api/cameras/lobby").json()
    assert detail["picture"]["fail_closed"] and detail["status"] is None and detail["errors"]
    bearer = TestClient(client.app, headers={"Authorization": f"Bearer {TOKEN}"})
    assert bearer.get("/api/cameras").status_code == 200
    assert bearer.post("/cameras/x/remove").status_code == 403  # a Bearer key needs the CSRF token too
    assert client.get("/static/console.js").status_code == 200
