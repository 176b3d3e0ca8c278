"""The data of each console page, assembled from what the sources answered (plain dicts and lists, as the ingest's
admin API, the router's ExperimentService, Alertmanager and the registry give them) and what `live` holds. No I/O:
every function here is tested without servers (tests/unit/console/)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from imask.alerting.deliveries import alert_state
from imask.alerting.events import KINDS
from imask.console.live import LiveState

EXPERIMENT_STATES = {"EXPERIMENT_STATE_RUNNING": "running", "EXPERIMENT_STATE_PROMOTED": "promoted",
                     "EXPERIMENT_STATE_ROLLED_BACK": "rolled back", "EXPERIMENT_STATE_STOPPED": "stopped"}
# Evaluation figures shown per dataset, in this order, when a report has them.
EVAL_FIGURES = ("recall", "recall_lt32", "recall_32_63", "recall_ge64", "leak_rate", "confident_refound",
                "masked_area_mean", "pictures_over_1pct", "cpu_ms_per_frame")


def _round(value: Any, digits: int = 1) -> Any:
    return round(value, digits) if isinstance(value, float) else value


def camera_rows(cameras: Iterable[dict[str, Any]], live: LiveState, now: float | None = None) -> list[dict[str, Any]]:
    """One row per camera the ingest has, then any camera seen only on frames.masked (a producer's, or one the
    ingest no longer has): state, fps in/out (the ingest's), lag (how far the newest masked picture is behind),
    end-to-end p99 over the last minute, the last alert."""
    now = time.time() if now is None else now
    rows = []
    seen = set()
    for status in cameras:
        camera_id = str(status.get("camera_id", ""))
        seen.add(camera_id)
        rows.append(_row(camera_id, str(status.get("state", "?")), status.get("fps_in"), status.get("fps_out"),
                         str(status.get("url", "")), live, now, in_ingest=True))
    for camera_id in live.cameras():
        if camera_id not in seen:
            rows.append(_row(camera_id, "not in this ingest", None, None, "", live, now, in_ingest=False))
    return rows


def _row(camera_id: str, state: str, fps_in: Any, fps_out: Any, url: str, live: LiveState, now: float,
         in_ingest: bool) -> dict[str, Any]:
    figures = live.figures(camera_id, now=now)
    alert = live.last_alert(camera_id)
    return {"camera_id": camera_id, "state": state, "url": url, "fps_in": fps_in, "fps_out": fps_out,
            "lag_s": _round(figures["lag_s"], 2), "end_to_end_p99_ms": _round(figures["end_to_end_p99_ms"]),
            "faces_per_frame": _round(figures["faces_per_frame"], 2),
            "last_alert": f"{alert['kind']} ({alert['severity']})" if alert else "",
            "last_alert_ts": alert["ts"] if alert else None, "in_ingest": in_ingest,
            "preview": live.picture(camera_id) is not None}


def camera_detail(camera_id: str, status: dict[str, Any] | None, live: LiveState,
                  features: dict[str, Any] | None = None, now: float | None = None) -> dict[str, Any]:
    """A camera's page: the ingest's status (None: not in this ingest), the newest masked picture's state,
    figures over the last minute, its history in 5 s bins, and its features (None: no features service)."""
    picture = live.picture(camera_id)
    return {"camera_id": camera_id, "status": status, "figures": live.figures(camera_id, now=now),
            "series": live.series(camera_id, now=now), "last_alert": live.last_alert(camera_id),
            "picture": None if picture is None else {
                "seq": picture.seq, "width": picture.width, "height": picture.height, "faces": picture.faces,
                "fail_closed": picture.fail_closed, "fail_closed_reason": picture.fail_closed_reason,
                "capture_ts": picture.capture_ts_us / 1e6},
            "features": features}


def feature_rows(camera: dict[str, Any]) -> dict[str, Any]:
    """A FeatureService CameraFeatures (as a dict) flattened for a table: freshness, then VIEW.FEATURE -> value
    (histograms as their bin count)."""
    rows: dict[str, Any] = {}
    for view in camera.get("views", []):
        for name, value in sorted(view.get("values", {}).items()):
            if "number" in value:
                shown: Any = _round(float(value["number"]), 3)
            elif "text" in value:
                shown = value["text"]
            else:
                shown = f"histogram ({len(value.get('histogram', {}).get('counts', []))} bins)"
            rows[f"{view.get('name', '')}.{name}"] = shown
    return {"found": bool(camera.get("found")), "fresh": bool(camera.get("fresh")),
            "age_s": _round(float(camera.get("age_s", 0.0)), 1), "values": rows}


def experiment_summary(results: dict[str, Any]) -> dict[str, Any]:
    """An ExperimentResults (as a dict, proto field names) for the experiments page: arms with variant, weight,
    cameras, frames and metrics; guardrails; SRM; the recommendation and its reasons; whether the buttons apply."""
    status = results.get("status", {})
    spec = status.get("spec", {})
    weights = {a.get("name", ""): float(a.get("weight", 0.0)) for a in status.get("arms", [])}
    measured = {a.get("arm", ""): a for a in results.get("arms", [])}
    arms = []
    for arm in spec.get("arms", []):
        name = arm.get("name", "")
        got = measured.get(name, {})
        arms.append({"name": name, "variant": arm.get("variant", ""), "weight": round(weights.get(name, 0.0), 3),
                     "cameras": int(got.get("cameras", 0)), "frames": int(got.get("frames", 0)),
                     "metrics": {k: _round(float(v), 4) for k, v in sorted(got.get("metrics", {}).items())}})
    guardrails = [{"metric": g.get("metric", ""), "outcome": g.get("outcome", ""),
                   "estimate": _round(float(g.get("estimate", 0.0)), 4),
                   "ci": [_round(float(g.get("ci_low", 0.0)), 4), _round(float(g.get("ci_high", 0.0)), 4)],
                   "p_value": _round(float(g.get("p_value", 0.0)), 4)} for g in results.get("guardrails", [])]
    tolerances = {g.get("metric", ""): g.get("tolerance", 0.0) for g in spec.get("guardrails", [])}
    for row in guardrails:
        row["tolerance"] = tolerances.get(row["metric"])
    state = EXPERIMENT_STATES.get(str(status.get("state", "")), str(status.get("state", "")).lower())
    return {
        "name": spec.get("name", ""), "state": state, "strategy": str(spec.get("strategy", "")).replace(
            "STRATEGY_", "").lower().replace("_", "-"), "target": spec.get("target", ""),
        "config_version": int(status.get("config_version", 0)), "last_change": status.get("last_change", ""),
        "arms": arms, "guardrails": guardrails,
        "srm": {"cameras": bool(results.get("srm_cameras", False)), "frames": bool(results.get("srm_frames", False)),
                "cameras_p": _round(float(results.get("srm_cameras_p", 1.0)), 4),
                "frames_p": _round(float(results.get("srm_frames_p", 1.0)), 4)},
        "recommendation": results.get("recommendation", ""), "reasons": list(results.get("reasons", [])),
        "failed_checks": int(results.get("failed_checks", 0)), "changeable": state == "running",
    }


def alert_rows(alertmanager: Iterable[dict[str, Any]], recent: Iterable[dict[str, Any]],
               confirmed: dict[tuple[str, str], dict[str, list[str]]] | None = None
               ) -> dict[str, list[dict[str, Any]]]:
    """Open alerts (Alertmanager's, GET /api/v2/alerts: active or suppressed, with the receivers its routes
    chose for each) and recent events (the alerts topic, newest first, with the receivers of the alert they
    raised when Alertmanager still has it). `confirmed` ((alertname, camera) -> receiver -> statuses, from an alert
    inbox) adds what each receiver confirmed getting. The dead man's switch (Watchdog) fires on purpose: never
    listed."""
    confirmed = confirmed or {}

    def got(name: str, camera: str) -> str:
        return ", ".join(f"{receiver} ({'/'.join(statuses)})"
                         for receiver, statuses in sorted(confirmed.get((name, camera), {}).items()))

    open_rows = []
    receivers: dict[tuple[str, str], list[str]] = {}
    for alert in alertmanager:
        labels = alert.get("labels", {})
        name = str(labels.get("alertname", ""))
        if name == "Watchdog":
            continue
        state = alert_state(alert)
        delivered = sorted(str(r.get("name", "")) for r in alert.get("receivers", []))
        receivers[(name, str(labels.get("camera", "")))] = delivered
        open_rows.append({"alertname": name, "camera": str(labels.get("camera", "")),
                          "severity": str(labels.get("severity", "")), "state": state,
                          "starts_at": alert.get("startsAt", ""),
                          "summary": str(alert.get("annotations", {}).get("summary", "")), "delivered": delivered,
                          "confirmed": got(name, str(labels.get("camera", "")))})
    open_rows.sort(key=lambda r: (r["severity"] != "page", r["alertname"], r["camera"]))
    recent_rows = []
    for event in recent:
        spec = KINDS.get(str(event.get("kind", "")))
        name = spec.alertname if spec else ""
        recent_rows.append({**event, "alertname": name,
                            "delivered": receivers.get((name, str(event.get("camera", ""))), []),
                            "confirmed": got(name, str(event.get("camera", "")))})
    return {"open": open_rows, "recent": recent_rows}


def model_rows(versions: Iterable[dict[str, Any]], evaluations: dict[str, dict[str, dict[str, Any]]]
               ) -> list[dict[str, Any]]:
    """Registry versions (VersionInfo.as_dict), newest first, each with its evaluation figures per dataset
    digest (Registry.evaluations: digest -> figures)."""
    rows = []
    for version in sorted(versions, key=lambda v: int(v.get("version", 0)), reverse=True):
        figures = []
        for digest, values in sorted(evaluations.get(str(version.get("version")), {}).items()):
            shown = {k: _round(values[k], 4) for k in EVAL_FIGURES if isinstance(values.get(k), (int, float))}
            figures.append({"dataset": str(values.get("name", digest[:12])), "digest": digest[:12],
                            "figures": shown})
        rows.append({"version": str(version.get("version", "")), "aliases": list(version.get("aliases", [])),
                     "variant": version.get("variant", ""), "detector": version.get("detector", ""),
                     "sha256": str(version.get("sha256", ""))[:12], "description": version.get("description", ""),
                     "created": time.strftime("%Y-%m-%d %H:%M", time.gmtime(int(version.get("created_ms", 0)) / 1000)),
                     "evaluations": figures})
    return rows
