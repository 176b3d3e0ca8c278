"""The features stream: frames.meta and frames.dlq -> per-camera windows -> Feast, on Quix Streams.

Records of both topics (and this app's ticks) are one stream keyed by camera id (the topics are co-partitioned).
Event time is the frame's capture time (a drop record's time for frames.dlq), clamped to the wall clock plus
`max_future_ms`. A tumbling window of `window_s` per camera folds records into mergeable accumulators, one per
variant (windows.py). Windows close by partition (`closing_strategy="partition"`): once the largest event time seen
on the camera's partition passes the window's end plus `grace_ms`. A record whose window has closed is counted as
`late_frames` in the camera's next window (checked in `keep`, before the window). A closed window and the camera's
earlier closed windows within the hop make the hopping window (`HopWindows`, in a state store). The camera's rows
(all its records) and one row per variant, for each of the two windows, go to `FeastSink`, which pushes every
camera's rows of a window end in one push per view when Quix commits its checkpoint: online to Redis through the
view's push source, offline as one parquet file in the view's folder. A checkpoint holding closed windows commits as
soon as every partition taking records has closed them (`PartitionClocks.all_past`), not at the end of the commit
interval; the interval still bounds the wait.

A partition with no record for `idle_tick_s` gets ticks on `ticks_topic`, timestamped with its last event time
plus the wall time since: its clock moves on and its cameras' last windows close.

Delivery: at least once. State (changelog topics), offsets and pushes commit together every
`commit_interval_s`, and as soon as a window close's rows are complete; a failed push (Redis away) rewinds to the
last commit and retries (Quix's sink backpressure), so no window is lost; a crash redoes at most one commit interval,
and the re-pushed windows are skipped online (Feast keeps a row only if its event timestamp is newer) and written
again offline (readers keep the newest `created` per camera and window).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import DecodeError
from prometheus_client import Counter, Gauge, Histogram
from quixstreams import Application
from quixstreams.context import message_context
from quixstreams.dataframe.windows.aggregations import Aggregator
from quixstreams.models.serializers import Deserializer
from quixstreams.sinks import BaseSink, SinkBackpressureError

from imask.features import store as feature_store
from imask.features.repo import FeastSettings
from imask.features.schema import VARIANT_VIEW_10S, VARIANT_VIEW_60S, VIEW_10S, VIEW_60S, VIEWS, feast_row
from imask.features.windows import (
    HopWindows,
    Observation,
    Parts,
    add_part,
    clamp_event_ms,
    feature_row,
    merge,
    observe_drop,
    observe_meta,
    window_start,
)
from imask.frames.ids import is_camera_id
from imask.ops.settings import FeaturesStreamSettings
from imask.streaming.kafka import TopicSpec, common_config, ensure_topics
from imask.v1 import frames_pb2 as pb

log = logging.getLogger(__name__)

WINDOW_NAME = "camera_window"
# Quix's buffered consume (the topics are read time-aligned) waits out its whole timeout unless 10,000 records come:
# at Quix's default of 1 s every record waited up to a second before it was processed, a window close with it.
POLL_TIMEOUT_S = 0.1
TICK_KEY = b"~tick"  # never a camera id ("~" is outside the id alphabet)

RECORDS = Counter("imask_features_records_total", "Records the features stream took into a window", ["topic"])
SKIPPED = Counter("imask_features_records_skipped_total", "Records counted and skipped: not a frames.meta / "
                  "frames.dlq protobuf (undecodable), a key that is no camera id (unknown_camera), a key that differs "
                  "from the record's camera id (key_mismatch)", ["topic", "reason"])
LATE = Counter("imask_features_late_records_total", "Records whose window had closed (past the grace period)")
CLAMPED = Counter("imask_features_future_clamped_total", "Records stamped further ahead than max_future_ms, "
                  "clamped to the wall clock")
TICKS = Counter("imask_features_ticks_total", "Ticks sent to idle partitions")
PUSHED = Counter("imask_features_rows_pushed_total", "Window rows pushed to Feast", ["view"])
PUSHES = Counter("imask_features_pushes_total", "Feast pushes (one per view and window end) by result",
                 ["result"])
PUSH_SECONDS = Histogram("imask_features_push_seconds", "Time of one Feast push",
                         buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5))
LAST_WINDOW_END = Gauge("imask_features_last_window_end_seconds", "End of the newest window pushed", ["view"])


@dataclass(frozen=True)
class Parsed:
    """A record as the stream reads it: what it contributes, or why it is skipped."""

    camera_id: str
    event_ms: int
    obs: Observation | None  # None: a tick
    skip: str = ""


class _RecordDeserializer(Deserializer):
    """Bytes -> Parsed; never raises (a record that does not parse is counted and skipped, the app goes on)."""

    def __init__(self, topic: str, kind: str) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.topic = topic
        self.kind = kind

    def __call__(self, value: bytes, ctx: Any) -> Parsed:
        try:
            if self.kind == "tick":
                return Parsed("", int(value), None)
            if self.kind == "meta":
                meta = pb.FrameMeta.FromString(value)
                if meta.end_of_stream:
                    return Parsed(meta.camera_id, 0, None, skip="end_of_stream")
                event_ms = meta.capture_ts_us // 1000 or meta.masked_ts_us // 1000
                return Parsed(meta.camera_id, event_ms, observe_meta(meta, event_ms))
            record = pb.DropRecord.FromString(value)
            return Parsed(record.camera_id, record.ts_us // 1000, observe_drop(record, record.ts_us // 1000))
        except (DecodeError, ValueError, TypeError):
            return Parsed("", 0, None, skip="undecodable")


class WindowAggregator(Aggregator):
    """Quix aggregation over windows.add_part: per variant, an accumulator (JSON in the state store)."""

    @property
    def state_suffix(self) -> str:
        return "imask-window-v2"

    def initialize(self) -> Parts:
        return {}

    def agg(self, old: Parts, new: Parsed, timestamp: int) -> Parts:
        return old if new.obs is None else add_part(old, new.obs)

    def result(self, value: Parts) -> Parts:
        return value


@dataclass
class PartitionClocks:
    """Per input partition: the largest event time taken into a window and the wall time of the last such record
    (ticks move an idle partition's clock on from there)."""

    event_ms: dict[int, int] = field(default_factory=dict)
    wall: dict[int, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def seen(self, partition: int, event_ms: int, now: float) -> None:
        with self.lock:
            self.event_ms[partition] = max(self.event_ms.get(partition, 0), event_ms)
            self.wall[partition] = now

    def all_past(self, event_ms: int, live_s: float, now: float) -> bool:
        """Every partition that took a record in the last live_s has its clock at event_ms or later (the others
        close their windows by ticks, whenever those come)."""
        with self.lock:
            return all(self.event_ms[p] >= event_ms for p, wall in self.wall.items() if now - wall <= live_s)

    def idle(self, idle_s: float, now: float, until_s: float = float("inf")) -> dict[int, int]:
        """Partitions idle for idle_s (and not longer than until_s: by then every window has closed), each with its
        clock moved on by the wall time since its last record."""
        with self.lock:
            return {p: self.event_ms[p] + int((now - wall) * 1000) for p, wall in self.wall.items()
                    if idle_s <= now - wall <= until_s}

    def forget(self, partitions: list[int]) -> None:
        with self.lock:
            for partition in partitions:
                self.event_ms.pop(partition, None)
                self.wall.pop(partition, None)


class FeastSink(BaseSink):
    """Closed-window rows in, one Feast push per view and window end at each checkpoint. A failed push is Quix
    backpressure: the checkpoint is dropped, partitions rewind to its start and the windows are redone."""

    def __init__(self, feast: FeastSettings, retry_after_s: float = 2.0) -> None:
        super().__init__()
        self.feast = feast
        self.retry_after_s = retry_after_s
        self.rows: dict[tuple[str, int], list[dict[str, Any]]] = {}
        self.store: Any = None
        self.healthy = True
        self.pushes = 0

    def setup(self) -> None:
        self.store = feature_store.open_store(self.feast)
        # Feast re-reads its file registry on every push and says so at info level: twice a window, every window.
        logging.getLogger("feast.infra.registry.registry").setLevel(logging.WARNING)

    def add(self, value: Any, key: Any, timestamp: int, headers: Any, topic: str, partition: int,
            offset: int) -> None:
        self.rows.setdefault((value["view"], value["row"]["window_end_ms"]), []).append(value["row"])

    def flush(self) -> None:
        views = {view.name: view for view in VIEWS}
        for (view_name, end_ms), rows in sorted(self.rows.items(), key=lambda item: item[0][1]):
            t0 = time.perf_counter()
            try:
                feature_store.push_rows(self.store, self.feast.data_dir, views[view_name], rows)
            except Exception as exc:  # Redis away, a write refused: redo from the last checkpoint
                PUSHES.labels("failed").inc()
                if self.healthy:
                    log.warning("feast push failed; retrying from the last checkpoint",
                                extra={"view": view_name, "window_end_ms": end_ms, "error": repr(exc)})
                self.healthy = False
                self.rows.clear()
                raise SinkBackpressureError(retry_after=self.retry_after_s) from exc
            PUSH_SECONDS.observe(time.perf_counter() - t0)
            PUSHES.labels("ok").inc()
            PUSHED.labels(view_name).inc(len(rows))
            LAST_WINDOW_END.labels(view_name).set(end_ms / 1000)
            self.pushes += 1
            if not self.healthy:
                log.info("feast push recovered", extra={"view": view_name, "window_end_ms": end_ms})
            self.healthy = True
        self.rows.clear()

    def on_paused(self) -> None:
        self.rows.clear()

    @property
    def newest_end(self) -> int:
        """The newest window end among the rows held (0: none held)."""
        return max((end_ms for _, end_ms in self.rows), default=0)


class _App(Application):
    partitions_gone: Callable[[list[int]], None] = staticmethod(lambda partitions: None)

    def _setup_signal_handlers(self) -> None:
        """The service runtime owns SIGTERM/SIGINT (drain, second signal exits) and stops the app itself."""

    def _revoke_state_partitions(self, topic_partitions: list[Any]) -> None:
        """Partitions revoked or lost: this instance stops ticking them (their new owner keeps their clock)."""
        super()._revoke_state_partitions(topic_partitions=topic_partitions)
        self.partitions_gone(sorted({tp.partition for tp in topic_partitions}))


@dataclass
class FeaturesStream:
    settings: FeaturesStreamSettings
    sink: FeastSink
    app: Application
    clocks: PartitionClocks
    late: dict[str, int]

    def run(self, stopping: threading.Event, on_started: Callable[[], None] | None = None) -> None:
        """Process until `stopping` is set; then commit (state, offsets, pushes) and leave the group."""
        threads = [threading.Thread(target=self._stop_on, args=(stopping,), name="features-stop", daemon=True)]
        if self.settings.idle_tick_s > 0:
            threads.append(threading.Thread(target=self._tick, args=(stopping,), name="features-ticks",
                                            daemon=True))
        for thread in threads:
            thread.start()
        if on_started is not None:
            on_started()
        self.app.run()

    def _stop_on(self, stopping: threading.Event) -> None:
        stopping.wait()
        self.app.stop()

    def _tick(self, stopping: threading.Event) -> None:
        producer = self.app.get_producer()
        idle_s = self.settings.idle_tick_s
        interval = max(idle_s / 2, 0.2)
        # Ticks stop once the moved clock has passed the last window's end and grace: nothing is left to close.
        until_s = 2 * idle_s + (self.settings.window_s * 1000 + self.settings.grace_ms) / 1000
        with producer:
            while not stopping.wait(interval):
                for partition, clock_ms in self.clocks.idle(idle_s, time.time(), until_s).items():
                    producer.produce(self.settings.ticks_topic, value=str(clock_ms).encode(), key=TICK_KEY,
                                     partition=partition, timestamp=clock_ms)
                    TICKS.inc()
                producer.flush(5)


def build(settings: FeaturesStreamSettings, sink: FeastSink | None = None) -> FeaturesStream:
    """The Quix application of the features stream, ready to run."""
    window_ms, hop_ms = settings.window_s * 1000, settings.hop_s * 1000
    ensure_topics(settings)
    ensure_topics(settings, [TopicSpec(settings.ticks_topic, settings.partitions, {"retention.ms": "3600000"})])
    sink = sink or FeastSink(FeastSettings(settings.feast_project, settings.feast_dir, settings.redis_url))
    clocks = PartitionClocks()
    late: dict[str, int] = {}

    def event_time(value: Parsed, headers: Any, timestamp: int, timestamp_type: Any) -> int:
        if value.skip:  # its time means nothing and moves no clock
            return timestamp
        event_ms = value.event_ms or timestamp
        now_ms = int(time.time() * 1000)
        event_ms, clamped = clamp_event_ms(event_ms, now_ms, settings.max_future_ms)
        if clamped:
            CLAMPED.inc()
        return event_ms

    extra = {k: v for k, v in common_config(settings).items() if k != "bootstrap.servers"}
    # A killed instance's partitions move on after 10 s, not librdkafka's 45 s.
    consumer_extra = {"session.timeout.ms": 10000, "heartbeat.interval.ms": 2000, **extra}
    app = _App(broker_address=settings.bootstrap_servers, consumer_group=settings.group_id,
               auto_offset_reset=settings.auto_offset_reset, commit_interval=settings.commit_interval_s,
               consumer_poll_timeout=POLL_TIMEOUT_S,
               state_dir=str(settings.state_dir), loglevel=None,
               consumer_extra_config=consumer_extra, producer_extra_config=extra,
               auto_create_topics=True, use_changelog_topics=True)
    app.partitions_gone = clocks.forget

    def topic_frame(name: str, kind: str) -> Any:
        topic = app.topic(name, key_deserializer="bytes", value_deserializer=_RecordDeserializer(name, kind),
                          timestamp_extractor=event_time)
        return app.dataframe(topic)

    sdf = topic_frame(settings.topic_meta, "meta").concat(topic_frame(settings.topic_dlq, "drop"))
    sdf = source = sdf.concat(topic_frame(settings.ticks_topic, "tick"))
    store_name: list[str] = []  # the window's state store, once it is made

    topics = (settings.topic_meta, settings.topic_dlq)  # by observation kind: META 0, DROP 1
    taken = tuple(RECORDS.labels(topic) for topic in topics)

    def keep(value: Parsed, key: bytes | None, timestamp: int, headers: Any) -> bool:
        if value.obs is None:
            if key == TICK_KEY and not value.skip:
                return True
            if value.skip and value.skip != "end_of_stream":
                SKIPPED.labels("", value.skip).inc()
            return False
        kind = value.obs[0]
        topic = topics[kind]
        camera = key.decode("utf-8", "replace") if key else ""
        if not is_camera_id(camera):
            SKIPPED.labels(topic, "unknown_camera").inc()
            return False
        if camera != value.camera_id:
            SKIPPED.labels(topic, "key_mismatch").inc()
            return False
        partition = message_context().partition
        if window_start(timestamp, window_ms) + window_ms <= closed_until(partition):
            # Its window has closed. Quix judges lateness from the partition's newest closed window end minus the
            # grace period, so a record within that band would open its closed window again, one that never
            # closes: it is late here instead, counted in the camera's next window.
            LATE.inc()
            late[camera] = late.get(camera, 0) + 1
            return False
        taken[kind].inc()
        clocks.seen(partition, timestamp, time.time())
        return True

    def closed_until(partition: int) -> int:
        """End of the newest window the partition has closed (Quix's own record of it, restored after a restart)."""
        transaction = source.processing_context.checkpoint.get_store_transaction(
            stream_id=source.stream_id, partition=partition, store_name=store_name[0])
        return int(transaction.get_latest_expired(prefix=b""))

    def on_late(value: Parsed, key: Any, timestamp_ms: int, late_by_ms: int, start: int, end: int, name: str,
                topic: str, partition: int, offset: int) -> bool:
        LATE.inc()
        if key != TICK_KEY and isinstance(key, bytes):
            camera = key.decode()
            late[camera] = late.get(camera, 0) + 1
        return False  # counted, not logged one by one

    hops = HopWindows(hop_ms, window_ms)

    def emit(window: dict[str, Any], key: bytes, timestamp: int, headers: Any, state: Any) -> list[dict[str, Any]]:
        camera = key.decode()
        start, end, parts = window["start"], window["end"], window["value"]
        total = merge(parts.values())
        if end <= state.get("last_end", 0):
            # A window that had closed, opened again by records within the grace period of the partition's
            # newest closed window (the check in `keep` prevents it; kept as a guard): its records came after
            # it closed, so they are late, and it is never pushed twice.
            frames = total["frames"] + sum(total["drops"])
            late[camera] = late.get(camera, 0) + frames
            LATE.inc(frames)
            return []
        state.set("last_end", end)
        created = feature_store.utcnow()
        hop_parts, keep_windows = hops.close(state.get("hop", []), start, parts)
        state.set("hop", keep_windows)
        rows = [
            (VIEW_10S, feast_row(camera, start, end, feature_row(total, settings.window_s, late.pop(camera, 0)),
                                 created)),
            (VIEW_60S, feast_row(camera, end - hop_ms, end, feature_row(merge(hop_parts.values()), settings.hop_s),
                                 created)),
            *((VARIANT_VIEW_10S, feast_row(camera, start, end, feature_row(acc, settings.window_s), created, variant))
              for variant, acc in sorted(parts.items()) if variant),
            *((VARIANT_VIEW_60S, feast_row(camera, end - hop_ms, end, feature_row(acc, settings.hop_s), created,
                                           variant))
              for variant, acc in sorted(hop_parts.items()) if variant),
        ]
        return [{"view": view.name, "row": row} for view, row in rows]

    sdf = sdf.filter(keep, metadata=True)
    assert sdf.stream_id == source.stream_id  # closed_until reads the window's store of this stream
    window = sdf.tumbling_window(window_ms, grace_ms=settings.grace_ms, name=WINDOW_NAME, on_late=on_late)\
        .agg(value=WindowAggregator())
    store_name.append(window.name)
    sdf = window.final(closing_strategy="partition")
    sdf = sdf.filter(lambda value, key, timestamp, headers: key != TICK_KEY, metadata=True)
    sdf = sdf.apply(emit, stateful=True, metadata=True, expand=True)
    sdf.sink(sink)

    # Commit a checkpoint holding closed windows as soon as every partition taking records has closed the newest of
    # them (live, the partitions' closing records come within a frame or two of each other: one push per view and
    # window end), rather than up to commit_interval_s later. It is the same commit as the interval's (state,
    # offsets, pushes together), only sooner; the interval still bounds the wait for a partition that lags.
    context = source.processing_context
    commit_checkpoint = context.commit_checkpoint
    live_s = settings.idle_tick_s or settings.window_s

    def commit_closed(force: bool = False, revoking: bool = False) -> None:
        if not force and sink.newest_end:
            force = clocks.all_past(sink.newest_end + settings.grace_ms, live_s, time.time())
        commit_checkpoint(force=force, revoking=revoking)

    context.commit_checkpoint = commit_closed
    return FeaturesStream(settings, sink, app, clocks, late)
