"""What an AlertEvent means for Alertmanager: its alert (labels, annotations, start) and whether it opens an
episode, ends one or is a one-off.

The catalogue of kinds (`KINDS`) is the contract emitters follow: a kind names its alert, its default severity and
its runbook section in docs/OPERATIONS.md. An event ends an episode when its kind is a recovery (`camera_recovered`
ends the camera's down, unreachable and stalled episodes) or its `state` is `resolved` (the same kind, camera and
identity labels). Kinds not in the catalogue still reach people, as one-offs named after the kind.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from enum import Enum

from imask.frames.ids import is_camera_id
from imask.v1 import alerts_pb2

PAGE, TICKET, INFO = "page", "ticket", "info"
RESOLVED_STATES = frozenset({"resolved", "ok", "cleared"})
# Event labels that are part of an alert's identity (an episode is one alert per distinct set); the other event
# labels (url, service...) become annotations.
IDENTITY_LABELS = ("variant", "feature", "test", "experiment", "arm")
KIND_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
LABEL_VALUE_MAX = 256


@dataclass(frozen=True)
class KindSpec:
    alertname: str
    severity: str
    runbook: str  # anchor in docs/OPERATIONS.md
    summary: str  # str.format with camera, variant, feature, test, experiment, detail
    oneshot: bool = False  # a fact, not a condition: fires once and resolves itself after the hold
    resolves: tuple[str, ...] = ()  # a recovery: the kinds whose episodes (same camera) it ends


KINDS: dict[str, KindSpec] = {
    "camera_down": KindSpec("CameraDown", PAGE, "camera-down", "Camera {camera} is down: {detail}"),
    "camera_unreachable": KindSpec("CameraUnreachable", TICKET, "camera-down",
                                   "Camera {camera} cannot be reached since the ingest started: {detail}"),
    "camera_stalled": KindSpec("CameraStalled", TICKET, "camera-stalled", "Camera {camera} stalled: {detail}"),
    "camera_recovered": KindSpec("CameraRecovered", INFO, "camera-down", "Camera {camera} recovered: {detail}",
                                 resolves=("camera_down", "camera_unreachable", "camera_stalled")),
    "drift": KindSpec("CameraDrift", TICKET, "drift",
                      "Camera {camera} ({variant}): {feature} drifted ({test}): {detail}"),
    "tamper_covered": KindSpec("CameraCovered", PAGE, "tamper", "Camera {camera} looks covered: {detail}"),
    "tamper_defocused": KindSpec("CameraDefocused", PAGE, "tamper", "Camera {camera} looks defocused: {detail}"),
    "tamper_moved": KindSpec("CameraMoved", PAGE, "tamper", "Camera {camera} looks moved: {detail}"),
    "tamper_blinded": KindSpec("CameraBlinded", PAGE, "tamper", "Camera {camera} looks blinded: {detail}"),
    "variant_regression": KindSpec("VariantRegression", PAGE, "variant-regression",
                                   "Variant {variant} finds fewer faces than its baseline: {detail}"),
    "experiment_rolled_back": KindSpec("ExperimentRolledBack", TICKET, "experiment-rolled-back",
                                       "Experiment {experiment} was rolled back: {detail}", oneshot=True),
}


class Action(Enum):
    OPEN = "opened"
    RESOLVE = "resolved"
    ONESHOT = "oneshot"


class Malformed(ValueError):
    """An event that cannot become an alert (undecodable, no kind, bad camera id, no time); skipped and counted."""


@dataclass(frozen=True)
class Alert:
    """One Alertmanager alert (API v2). `ends_at` None: firing, the sender sets it on each post."""

    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: float  # seconds since the epoch
    ends_at: float | None = None

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.labels)

    def resolved_at(self, when: float) -> Alert:
        return Alert(self.labels, self.annotations, self.starts_at, max(when, self.starts_at))

    def payload(self, firing_until: float) -> dict[str, object]:
        """The JSON object of POST /api/v2/alerts; a firing alert ends at `firing_until` unless posted again."""
        ends = self.ends_at if self.ends_at is not None else max(firing_until, self.starts_at)
        return {"labels": self.labels, "annotations": self.annotations, "startsAt": rfc3339(self.starts_at),
                "endsAt": rfc3339(ends)}


@dataclass(frozen=True)
class Meaning:
    """What one event does: an alert to open, resolve or fire once; for a recovery, the kinds it ends."""

    action: Action
    alert: Alert
    kind: str
    resolves: tuple[str, ...] = field(default=())


def fingerprint(labels: dict[str, str]) -> str:
    """Stable id of a label set (the same alert across restarts and replays)."""
    return hashlib.sha256(json.dumps(labels, sort_keys=True).encode()).hexdigest()[:16]


def rfc3339(ts: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def decode(value: bytes | None) -> alerts_pb2.AlertEvent:
    try:
        event = alerts_pb2.AlertEvent.FromString(value or b"")
    except Exception as exc:  # protobuf raises DecodeError, and others on some garbage
        raise Malformed(f"undecodable AlertEvent: {exc}") from None
    return event


def interpret(event: alerts_pb2.AlertEvent, now: float, runbook_base: str, oneshot_hold_s: float) -> Meaning:
    """Map one event to its alert and action. Raises Malformed for what cannot be an alert."""
    if not KIND_RE.fullmatch(event.kind):
        raise Malformed(f"kind {event.kind[:80]!r} is not a lower-case name")
    if event.camera_id and not is_camera_id(event.camera_id):
        raise Malformed(f"camera id {event.camera_id[:80]!r} does not match the camera id pattern")
    if event.ts_us <= 0:
        raise Malformed("no ts_us")
    ts = min(event.ts_us / 1e6, now)  # a clock ahead of ours must not start an alert in the future
    spec = KINDS.get(event.kind)
    identity = {k: _value(event.labels[k]) for k in IDENTITY_LABELS if event.labels.get(k)}
    fields = {"camera": event.camera_id or "-", "detail": event.detail or event.state or "",
              **{k: identity.get(k, "-") for k in IDENTITY_LABELS}}
    resolving = event.state in RESOLVED_STATES
    if spec is None:
        severity = PAGE if event.severity == alerts_pb2.SEVERITY_CRITICAL else (
            TICKET if event.severity == alerts_pb2.SEVERITY_WARNING else INFO)
        spec = KindSpec(_camel(event.kind), severity, "alert-events", f"{event.kind}: {{detail}}", oneshot=True)
    severity = PAGE if event.severity == alerts_pb2.SEVERITY_CRITICAL and spec.severity != INFO else spec.severity
    labels = {"alertname": spec.alertname, "severity": severity, "kind": event.kind, **identity}
    if event.camera_id:
        labels["camera"] = event.camera_id
    annotations = {"summary": _value(spec.summary.format(**fields), 1024),
                   "runbook_url": f"{runbook_base}#{spec.runbook}", "source": _value(event.source),
                   "state": _value(event.state), "previous_state": _value(event.previous_state)}
    if event.detail:
        annotations["description"] = _value(event.detail, 4096)
    if event.gap_s:
        annotations["gap_s"] = f"{event.gap_s:.1f}"
    annotations.update({k: _value(v) for k, v in event.labels.items() if k not in IDENTITY_LABELS
                        and re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", k) and k not in annotations})
    annotations = {k: v for k, v in annotations.items() if v}
    if spec.resolves:
        return Meaning(Action.RESOLVE, Alert(labels, annotations, ts, ts), event.kind, spec.resolves)
    if resolving:
        # The resolving event carries the same identity; severity and name come from the catalogue, so the label
        # set (and fingerprint) is the opening event's unless that one was CRITICAL: the episode book matches on
        # kind, camera and identity, not on the fingerprint.
        return Meaning(Action.RESOLVE, Alert(labels, annotations, ts, ts), event.kind, (event.kind,))
    if spec.oneshot:
        return Meaning(Action.ONESHOT, Alert(labels, annotations, ts, ts + oneshot_hold_s), event.kind)
    return Meaning(Action.OPEN, Alert(labels, annotations, ts), event.kind)


def _value(text: str, limit: int = LABEL_VALUE_MAX) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _camel(kind: str) -> str:
    return "".join(part.capitalize() for part in kind.split("_"))
