"""Drift: per camera and variant, its recent 10 s windows against a reference, tamper rules, and each camera its own
control when it changes variant; alert events on the alerts topic, scores on /metrics, regression flags for the
router.

Wiring only: the logic is imask.drift.monitor. Each poll (IMASK_DRIFT_POLL_S) it reads the features stream's new
offline files of the 10 s view (each is one window close, holding the row of every camera whose window closed) and
feeds every window it has not seen, oldest first: however many windows closed since the last poll, each is judged
(the online store holds only a camera's newest; the `drift` feature service reads the overlapping 60 s windows and
lacks variant, arm and latency); rows read but not yet judged when a poll fails (Redis away) wait for the next.
References and flags live in Redis (imask.drift.store); a reference changed by `imask drift reference` is reloaded
at the next poll.
On SIGTERM it finishes the poll, flushes its events and stops.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from imask.drift import metrics as m
from imask.drift.monitor import DriftMonitor, MonitorConfig, Result, Transition
from imask.drift.rules import REGRESSION, Thresholds
from imask.drift.store import DriftStore, RegressionFlag
from imask.drift.window import Window
from imask.features.repo import parquet_path
from imask.features.schema import CREATED, JOIN_KEY, VIEW_10S
from imask.frames.clock import now_us
from imask.ops.runtime import ServiceRuntime, run_service
from imask.ops.settings import DriftSettings
from imask.streaming.kafka import ensure_topics
from imask.streaming.producer import Outbox
from imask.v1 import alerts_pb2

log = logging.getLogger(__name__)


def monitor_config(settings: DriftSettings) -> MonitorConfig:
    return MonitorConfig(reference_windows=settings.reference_windows, breach_windows=settings.breach_windows,
                         recover_windows=settings.recover_windows, regression_windows=settings.regression_windows,
                         regression_breach_windows=settings.regression_breach_windows,
                         thresholds=Thresholds(regression_tolerance=settings.regression_tolerance))


class NewRows:
    """The 10 s view's offline rows written since the last look: one parquet file per window close, each holding the
    row of every camera whose window closed then. Every window comes, however many closed between two polls (the
    online store keeps only a camera's newest). At start only the files of the last `START_FILES` closes are read:
    the history before them was judged by the service's previous run."""

    START_FILES = 6

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.seen: set[str] = set()
        self.first = True

    def rows(self) -> list[dict[str, Any]]:
        """The new rows, oldest window first; a window pushed twice (a redone interval) once, its newest push."""
        import pyarrow.parquet as pq

        names = sorted(p.name for p in self.folder.glob("part-*.parquet")) if self.folder.is_dir() else []
        new = [n for n in names if n not in self.seen and not n.endswith("-schema.parquet")]
        if self.first:
            self.seen.update(new[:-self.START_FILES])
            new, self.first = new[-self.START_FILES:], False
        newest: dict[tuple[str, int], dict[str, Any]] = {}
        for name in new:
            try:
                rows = pq.read_table(self.folder / name).to_pylist()
            except Exception as exc:  # not readable yet (files are renamed into place whole): next poll
                log.warning("offline file unreadable", extra={"file": name, "error": repr(exc)})
                continue
            self.seen.add(name)
            for row in rows:
                if row.get("window_end_ms") is None:
                    continue
                key = (str(row[JOIN_KEY]), int(row["window_end_ms"]))
                if key not in newest or (row.get(CREATED) or 0) >= (newest[key].get(CREATED) or 0):
                    newest[key] = row
        return [newest[k] for k in sorted(newest, key=lambda k: (k[1], k[0]))]


def event(settings: DriftSettings, t: Transition) -> alerts_pb2.AlertEvent:
    return alerts_pb2.AlertEvent(ts_us=now_us(), kind=t.kind, severity=alerts_pb2.SEVERITY_WARNING,
                                 source=settings.instance_id, camera_id=t.camera_id,
                                 state="resolved" if t.action == "resolve" else "breached",
                                 previous_state="breached" if t.action == "resolve" else "ok",
                                 detail=t.detail, labels={**t.labels, "window_end_ms": str(t.window_end_ms)})


class DriftService:
    def __init__(self, settings: DriftSettings, store: DriftStore, producer: Outbox) -> None:
        self.settings = settings
        self.store = store
        self.producer = producer
        self.monitor = DriftMonitor(monitor_config(settings))
        self.files = NewRows(parquet_path(settings.feast_dir, VIEW_10S))
        self.known: set[str] = set()
        self.pending: list[dict[str, Any]] = []  # rows read, not yet judged
        self.refs_version = -1
        self.windows = 0

    def reload_references(self) -> None:
        version = self.store.version()
        if version == self.refs_version:
            return
        stored = {(r.camera_id, r.variant): r for r in self.store.references()}
        for camera, state in self.monitor.cameras.items():
            for variant in list(state.references):
                if (camera, variant) not in stored:
                    self.monitor.drop_reference(camera, variant)
        for ref in stored.values():
            current = self.monitor.cameras.get(ref.camera_id)
            if current is None or current.references.get(ref.variant) != ref:
                self.monitor.set_reference(ref)
        self.refs_version = version

    def poll(self) -> int:
        self.reload_references()
        fed = 0
        self.pending += self.files.rows()
        while self.pending:
            row = self.pending[0]
            camera = str(row[JOIN_KEY])
            self.known.add(camera)
            window = Window.from_features(camera, row)
            state = self.monitor.cameras.get(camera)
            if window is not None and (state is None or window.end_ms > state.last_end_ms):
                self.apply(self.monitor.observe(window))
                m.DRIFT_WINDOWS.labels(window.camera_id).inc()
                fed += 1
                self.windows += 1
            self.pending.pop(0)
        undelivered = self.producer.flush(10)
        if undelivered or self.producer.failed:
            # Kafka away: the episodes stay open in the monitor, but these events are lost (not retried).
            log.error("alert events not delivered", extra={"undelivered": undelivered,
                                                           "failed": self.producer.failed})
            self.producer.failed = 0
        return fed

    def apply(self, result: Result) -> None:
        for score in result.scores:
            labels = (score.camera_id, score.variant, score.feature, score.test)
            m.DRIFT_SCORE.labels(*labels).set(score.value)
            m.DRIFT_BREACH.labels(*labels).set(1.0 if score.breached else 0.0)
        for t in result.transitions:
            if t.kind == REGRESSION:
                if t.action == "open":
                    state = self.monitor.cameras[t.camera_id]
                    baseline = state.switch.baseline if state.switch else ""
                    self.store.flag_regression(RegressionFlag(t.camera_id, t.labels["variant"], baseline,
                                                              t.window_end_ms, t.detail))
                elif not any(k[0] == REGRESSION and k[1] == t.labels["variant"] and e.open
                             for k, e in self.monitor.cameras[t.camera_id].episodes.items()):
                    self.store.clear_regression(t.camera_id, t.labels["variant"])
            if t.action == "resolve":
                m.DRIFT_BREACH.labels(t.camera_id, t.labels["variant"], t.labels["feature"], t.labels["test"]).set(0)
            self.producer.send(self.settings.topic_alerts, t.camera_id, event(self.settings, t).SerializeToString())
            m.DRIFT_EVENTS.labels(t.kind, t.action).inc()
            log.info("drift episode", extra={"camera": t.camera_id, "kind": t.kind, "action": t.action, **t.labels,
                                             "detail": t.detail})
        if result.captured is not None:
            self.store.save_reference(result.captured)
            self.refs_version = self.store.version()
            m.DRIFT_REFERENCES.labels(result.captured.source).inc()
            log.info("reference taken", extra={"reference": result.captured.describe()})


def drift(settings: DriftSettings, runtime: ServiceRuntime) -> int:
    ensure_topics(settings)
    store = DriftStore(settings.redis_url, settings.prefix)
    store.client.ping()
    producer = Outbox(settings, max_inflight=1000)
    service = DriftService(settings, store, producer)
    healthy = {"ok": True}
    runtime.ready_checks.append(lambda: healthy["ok"])
    runtime.details.update(feast_project=settings.feast_project, prefix=settings.prefix)
    runtime.mark_ready()
    log.info("drift monitor running", extra={"poll_s": settings.poll_s, "prefix": settings.prefix})
    while not runtime.stopping.is_set():
        started = time.monotonic()
        try:
            service.poll()
            healthy["ok"] = True
        except Exception as exc:  # Redis or Feast away: not ready, try again next poll
            healthy["ok"] = False
            log.warning("drift poll failed", extra={"error": repr(exc)})
        runtime.details.update(windows=service.windows, cameras=len(service.known),
                               open_episodes=sum(1 for _ in service.monitor.open_episodes()))
        runtime.stopping.wait(max(0.0, settings.poll_s - (time.monotonic() - started)))
    producer.close(10)
    log.info("drift monitor stopped")
    return 0


def run(settings: DriftSettings) -> int:
    return run_service("drift", settings, lambda runtime: drift(settings, runtime))
