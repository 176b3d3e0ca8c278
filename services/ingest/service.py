"""Ingest: read cameras / video files, JPEG-encode, publish to frames.raw keyed by camera id.

One thread per source (OpenCV decode and JPEG encode release the GIL); one shared idempotent producer.
Pacing follows the source fps (or runs as fast as possible); under the real-time policy a frame that is
already late by more than one frame interval is skipped and recorded on frames.dlq (reason INGEST_STALE), so
every sequence number still ends as a masked frame or a drop record.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, Message, Producer

from imask import metrics
from imask.config import IngestSettings
from imask.kafka import ensure_topics, producer_config
from imask.media import encode_jpeg, open_video
from imask.runtime import ServiceRuntime, run_service
from imask.v1 import frames_pb2 as pb
from imask.wire import end_of_stream, make_frame, now_us

log = logging.getLogger(__name__)


def parse_source(entry: str) -> tuple[str, str]:
    camera, sep, url = entry.partition("=")
    if not sep or not camera or not url:
        raise ValueError(f"source {entry!r} must look like CAMERA_ID=URL_OR_PATH")
    return camera, url


@dataclass
class SourceStats:
    camera_id: str
    url: str
    state: str = "starting"
    published: int = 0
    skipped: int = 0
    refused: int = 0
    acked: int = 0
    failed: int = 0
    total_seq: int = 0
    errors: list[str] = field(default_factory=list)


class Ingest:
    def __init__(self, settings: IngestSettings, runtime: ServiceRuntime) -> None:
        self.settings = settings
        self.runtime = runtime
        self.producer = Producer(producer_config(settings, **{"queue.buffering.max.messages": settings.max_inflight}))
        self.sources = [SourceStats(*parse_source(entry)) for entry in settings.sources]
        if not self.sources:
            raise ValueError("no sources: give --source CAMERA_ID=PATH_OR_URL (or IMASK_SOURCES)")
        self._lock = threading.Lock()

    def _on_ack(self, stats: SourceStats) -> Callable[[KafkaError | None, Message], None]:
        def ack(err: KafkaError | None, _msg: Message) -> None:
            with self._lock:
                if err is None:
                    stats.acked += 1
                else:
                    stats.failed += 1
                    log.error("frame not delivered", extra={"camera": stats.camera_id, "error": str(err)})
        return ack

    def _send(self, stats: SourceStats, value: bytes) -> None:
        while True:
            try:
                self.producer.produce(self.settings.topic_raw, value=value, key=stats.camera_id.encode(),
                                      on_delivery=self._on_ack(stats))
                return
            except BufferError:
                # Producer queue full: the complete policy waits here (backpressure), visibly.
                stats.state = "blocked"
                self.producer.poll(0.05)

    def _drop_record(self, stats: SourceStats, seq: int, reason: pb.DropReason, detail: str) -> None:
        record = pb.DropRecord(camera_id=stats.camera_id, seq=seq, reason=reason, detail=detail, stage="ingest",
                               ts_us=now_us(), worker_id=self.runtime.name)
        self.producer.produce(self.settings.topic_dlq, value=record.SerializeToString(),
                              key=stats.camera_id.encode(), on_delivery=self._on_ack(stats))

    def run_source(self, stats: SourceStats) -> None:
        s = self.settings
        try:
            cap, info = open_video(stats.url)
        except Exception as exc:
            stats.state = "failed"
            stats.errors.append(str(exc))
            log.error("source failed to open", extra={"camera": stats.camera_id, "url": stats.url,
                                                        "error": str(exc)})
            return
        interval = 1.0 / info.fps
        seq = 0
        stats.state = "running"
        start = time.monotonic()
        log.info("source opened", extra={"camera": stats.camera_id, "fps": info.fps, "width": info.width,
                                         "height": info.height, "frames": info.frames})
        try:
            while not self.runtime.stopping.is_set():
                ok, image = cap.read()
                if not ok:
                    if s.loop and seq > 0:
                        cap.release()
                        cap, info = open_video(stats.url)
                        continue
                    break
                capture_us = now_us()
                due = start + seq * interval
                lateness = time.monotonic() - due
                if s.pace == "source" and lateness < 0:
                    time.sleep(-lateness)
                    capture_us = now_us()
                elif s.pace == "source" and s.drop_policy == "realtime" and lateness > interval:
                    self._drop_record(stats, seq, pb.DROP_REASON_INGEST_STALE, f"{lateness * 1e3:.0f} ms late")
                    metrics.FRAMES_DROPPED.labels("ingest_stale").inc()
                    stats.skipped += 1
                    seq += 1
                    continue
                t0 = time.perf_counter()
                data = encode_jpeg(image, s.jpeg_quality)
                metrics.observe_stage("encode", "", stats.camera_id, (time.perf_counter() - t0) * 1e3)
                if len(data) > s.max_frame_bytes:
                    self._drop_record(stats, seq, pb.DROP_REASON_OVERSIZE,
                                      f"{len(data)} bytes over {s.max_frame_bytes}")
                    metrics.FRAMES_DROPPED.labels("oversize").inc()
                    stats.refused += 1
                else:
                    frame = make_frame(stats.camera_id, seq, data, image.shape[1], image.shape[0], capture_us,
                                       info.fps)
                    self._send(stats, frame.SerializeToString())
                    stats.state = "running"
                    stats.published += 1
                    metrics.FRAMES_OUT.labels(stats.camera_id).inc()
                seq += 1
                self.producer.poll(0)
                if s.max_frames and seq >= s.max_frames:
                    break
        finally:
            cap.release()
            stats.total_seq = seq
            self._send(stats, end_of_stream(stats.camera_id, seq, info.fps).SerializeToString())
            stats.state = "ended"
            log.info("source ended", extra={"camera": stats.camera_id, "frames": seq,
                                            "published": stats.published, "skipped": stats.skipped})

    def run(self) -> int:
        ensure_topics(self.settings)
        threads = [threading.Thread(target=self.run_source, args=(src,), name=f"src-{src.camera_id}", daemon=True)
                   for src in self.sources]
        for t in threads:
            t.start()
        self.runtime.ready.set()
        while any(t.is_alive() for t in threads):
            self.producer.poll(0.1)
            self.runtime.details["sources"] = [vars(src) for src in self.sources]
        remaining = self.producer.flush(30)
        failed = sum(src.failed for src in self.sources) + remaining
        summary = {src.camera_id: {"frames": src.total_seq, "published": src.published, "skipped": src.skipped,
                                   "state": src.state} for src in self.sources}
        log.info("ingest finished", extra={"sources": summary, "undelivered": failed})
        return 1 if failed or any(src.state == "failed" for src in self.sources) else 0


def run(settings: IngestSettings) -> int:
    return run_service("ingest", settings, lambda runtime: Ingest(settings, runtime).run())
