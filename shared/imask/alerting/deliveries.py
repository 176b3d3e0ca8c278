"""Which alerts were raised since a moment and where each was delivered: Alertmanager's alerts (GET /api/v2/alerts)
joined with the notifications an alert inbox kept (the local stack's, imask.devstack.alert_inbox: one JSON line per
notification in `inbox.jsonl`), for `imask run`'s summary, the console's alerts page and the alerting tests.

A notification names its alerts differently per receiver: the webhook's JSON carries every alert's labels, the
Slack message's title is `FIRING: <alertname> <camera>` (deploy/alertmanager/alertmanager.yml), an e-mail's subject
is Alertmanager's default `[FIRING:1] <alertname> <camera> (<other common labels>)` (the group labels' values,
alertname and camera). Alerts are matched by (alertname, camera), what the routes group by.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

INBOX_FILE = "inbox.jsonl"

# The dead man's switch fires all the time on purpose: never an alert a run raised.
NOT_RAISED = frozenset({"Watchdog"})
_SUBJECT = re.compile(r"^\[(FIRING|RESOLVED)(?::\d+)?\]\s+(\S+)(?:\s+([^\s(]+))?")
_TITLE = re.compile(r"^(FIRING|RESOLVED):\s+(\S+)(?:\s+(\S+))?")


@dataclass(frozen=True)
class Notice:
    """One alert in one notification: the receiver (webhook, slack, email, watchdog), firing or resolved."""

    receiver: str
    status: str
    alertname: str
    camera: str
    received: float  # seconds since the epoch, when the inbox took it
    to: str = ""  # path or mail recipients


def notices(entry: dict[str, Any]) -> list[Notice]:
    """The alerts one inbox entry notified (none for what does not look like an Alertmanager notification)."""
    kind, received = entry.get("kind"), float(entry.get("received", 0.0))
    if kind == "webhook":
        payload = entry.get("payload")
        if not isinstance(payload, dict):
            return []
        receiver = "watchdog" if str(entry.get("path", "")).startswith("/watchdog") else "webhook"
        return [Notice(receiver, str(a.get("status", "")), str(a.get("labels", {}).get("alertname", "")),
                       str(a.get("labels", {}).get("camera", "")), received, str(entry.get("path", "")))
                for a in payload.get("alerts", []) if isinstance(a, dict)]
    if kind == "slack":
        payload = entry.get("payload")
        attachments = payload.get("attachments", []) if isinstance(payload, dict) else []
        found = [_TITLE.match(str(a.get("title", ""))) for a in attachments if isinstance(a, dict)]
        return [Notice("slack", m[1].lower(), m[2], m[3] or "", received, str(entry.get("path", "")))
                for m in found if m]
    if kind == "email":
        m = _SUBJECT.match(str(entry.get("subject", "")))
        return [Notice("email", m[1].lower(), m[2], m[3] or "", received, ",".join(entry.get("to", [])))] if m \
            else []
    return []


def read_inbox(folder: Path, since: float = 0.0) -> list[dict[str, Any]]:
    """The notifications an inbox kept in `folder`, received at or after `since`."""
    path = folder / INBOX_FILE
    if not path.exists():
        return []
    entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [e for e in entries if e.get("received", 0) >= since and not e.get("caller_left")]


def parse_time(text: str) -> float:
    """Alertmanager's RFC 3339 times (nanoseconds cut to microseconds) as seconds since the epoch."""
    text = re.sub(r"(\.\d{6})\d+", r"\1", text.replace("Z", "+00:00"))
    return dt.datetime.fromisoformat(text).timestamp()


def alert_state(alert: dict[str, Any]) -> str:
    """Alertmanager's state of an alert (GET /api/v2/alerts) for people: active, or suppressed (silenced) /
    (inhibited)."""
    status = alert.get("status", {})
    state = str(status.get("state", ""))
    if status.get("silencedBy"):
        state += " (silenced)"
    if status.get("inhibitedBy"):
        state += " (inhibited)"
    return state


def report(alerts: Iterable[dict[str, Any]], entries: Iterable[dict[str, Any]], since: float) -> list[dict[str, Any]]:
    """One row per alert raised at or after `since` (in Alertmanager now, or notified since then): its name,
    camera, severity, Alertmanager's state (active, suppressed: silenced or inhibited; gone: resolved and dropped
    from its list) and, per receiver, the statuses it was notified with."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for alert in alerts:
        labels = alert.get("labels", {})
        name = str(labels.get("alertname", ""))
        if name in NOT_RAISED or parse_time(str(alert.get("startsAt", "1970-01-01T00:00:00Z"))) < since:
            continue
        rows[(name, str(labels.get("camera", "")))] = {
            "alertname": name, "camera": str(labels.get("camera", "")), "severity": str(labels.get("severity", "")),
            "alertmanager": alert_state(alert), "starts_at": alert.get("startsAt"), "delivered": {}}
    for entry in entries:
        for notice in notices(entry):
            if notice.alertname in NOT_RAISED or notice.receiver == "watchdog" or notice.received < since:
                continue
            row = rows.setdefault((notice.alertname, notice.camera), {
                "alertname": notice.alertname, "camera": notice.camera, "severity": "", "alertmanager": "gone",
                "starts_at": None, "delivered": {}})
            statuses = row["delivered"].setdefault(notice.receiver, [])
            if notice.status not in statuses:
                statuses.append(notice.status)
    return sorted(rows.values(), key=lambda r: (r["alertname"], r["camera"]))


def describe(row: dict[str, Any]) -> str:
    """One line of a report row: name, camera, severity, state, where it went."""
    where = ", ".join(f"{receiver} ({'/'.join(statuses)})" for receiver, statuses in sorted(row["delivered"].items()))
    camera = f" camera={row['camera']}" if row["camera"] else ""
    severity = f" severity={row['severity']}" if row["severity"] else ""
    return f"{row['alertname']}{camera}{severity} [{row['alertmanager']}] -> {where or 'not notified yet'}"
