"""Drift: per camera and variant, its recent 10 s windows against a reference, tamper rules, and each camera its own
control when it changes variant; alert events on the alerts topic, scores on /metrics, regression flags for the
router.

Wiring only: the logic is imask.drift.monitor. Each poll (IMASK_DRIFT_POLL_S) it lists the features stream's new
offline files of the 10 s view (each is one window close and names the cameras that closed a window), reads those
cameras' newest 10 s rows from the online store (FeatureReader, the `operators` service: the `drift` one reads the
overlapping 60 s windows and lacks variant, arm and latency), and feeds every window it has not seen. References and
flags live in Redis (imask.drift.store); a reference changed by `imask drift reference` is reloaded at the next poll.
On SIGTERM it finishes the poll, flushes its events and stops.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from confluent_kafka import Producer

from imask.drift import metrics as m
from imask.drift.monitor import DriftMonitor, MonitorConfig, Result, Transition
from imask.drift.rules import REGRESSION, Thresholds
from imask.drift.store import DriftStore, RegressionFlag
from imask.drift.window import Window
from imask.features.repo import FeastSettings, parquet_path
from imask.features.schema import VIEW_10S
from imask.features.store import FeatureReader
from imask.frames.clock import now_us
from imask.ops.runtime import ServiceRuntime, run_service
from imask.ops.settings import DriftSettings
from imask.streaming.kafka import ensure_topics, producer_config
from imask.v1 import alerts_pb2

log = logging.getLogger(__name__)


def monitor_config(settings: DriftSettings) -> MonitorConfig:
    return MonitorConfig(reference_windows=settings.reference_windows, breach_windows=settings.breach_windows,
                         recover_windows=settings.recover_windows, regression_windows=settings.regression_windows,
                         regression_breach_windows=settings.regression_breach_windows,
                         thresholds=Thresholds(regression_tolerance=settings.regression_tolerance))


def feast_settings(settings: DriftSettings) -> FeastSettings:
    return FeastSettings(project=settings.feast_project, data_dir=settings.feast_dir, redis_url=settings.redis_url)


class NewFiles:
    """The 10 s view's offline files written since the last look: which cameras closed a window."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.seen: set[str] = set()
        self.first = True

    def cameras(self) -> set[str]:
        import pyarrow.parquet as pq

        names = sorted(p.name for p in self.folder.glob("part-*.parquet")) if self.folder.is_dir() else []
        new = [n for n in names if n not in self.seen and not n.endswith("-schema.parquet")]
        self.seen.update(names)
        if self.first:  # at start: the cameras of the last few closes only
            new, self.first = new[-6:], False
        out: set[str] = set()
        for name in new:
            try:
                table = pq.read_table(self.folder / name, columns=["camera_id"])
                out.update(str(c) for c in table.column(0).to_pylist())
            except Exception as exc:  # a file being replaced or unreadable: its cameras come again next window
                log.warning("offline file unreadable", extra={"file": name, "error": repr(exc)})
        return out


def event(settings: DriftSettings, t: Transition) -> alerts_pb2.AlertEvent:
    return alerts_pb2.AlertEvent(ts_us=now_us(), kind=t.kind, severity=alerts_pb2.SEVERITY_WARNING,
                                 source=settings.instance_id, camera_id=t.camera_id,
                                 state="resolved" if t.action == "resolve" else "breached",
                                 previous_state="breached" if t.action == "resolve" else "ok",
                                 detail=t.detail, labels=t.labels)


class DriftService:
    def __init__(self, settings: DriftSettings, reader: FeatureReader, store: DriftStore, producer: Producer) -> None:
        self.settings = settings
        self.reader = reader
        self.store = store
        self.producer = producer
        self.monitor = DriftMonitor(monitor_config(settings))
        self.files = NewFiles(parquet_path(settings.feast_dir, VIEW_10S))
        self.known: set[str] = set()
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
        self.known |= self.files.cameras()
        if not self.known:
            return 0
        answers = self.reader.read(sorted(self.known))
        fed = 0
        for camera, answer in answers.items():
            row = answer.values.get(VIEW_10S.name, {})
            window = Window.from_features(str(camera), row)
            if window is None:
                continue
            state = self.monitor.cameras.get(window.camera_id)
            if state is not None and window.end_ms <= state.last_end_ms:
                continue
            self.apply(self.monitor.observe(window))
            m.DRIFT_WINDOWS.labels(window.camera_id).inc()
            fed += 1
        self.windows += fed
        self.producer.flush(10)
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
            self.producer.produce(self.settings.topic_alerts, key=t.camera_id.encode(),
                                  value=event(self.settings, t).SerializeToString())
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
    reader = FeatureReader(feast_settings(settings), "operators")
    producer = Producer(producer_config(settings))
    service = DriftService(settings, reader, store, producer)
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
    producer.flush(10)
    log.info("drift monitor stopped")
    return 0


def run(settings: DriftSettings) -> int:
    return run_service("drift", settings, lambda runtime: drift(settings, runtime))
