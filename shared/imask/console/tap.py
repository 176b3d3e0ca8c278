"""The console's reader of frames.masked, frames.meta and alerts: a consumer group of its own per console process
(no commits: each console sees every camera, from the topics' ends when it starts), feeding `LiveState`. It never
subscribes to frames.raw: what the console shows was masked by a worker."""

from __future__ import annotations

import logging
import threading
import uuid

from confluent_kafka import Consumer

from imask.console.live import LiveState
from imask.ops.settings import ConfigError, KafkaSettings
from imask.streaming.kafka import consumer_config, usable
from imask.v1 import alerts_pb2
from imask.v1 import frames_pb2 as pb

log = logging.getLogger(__name__)


def tap_group(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class FrameTap:
    def __init__(self, settings: KafkaSettings, live: LiveState, group_prefix: str) -> None:
        self.settings = settings
        self.live = live
        self.group = tap_group(group_prefix)
        self.topics = [settings.topic_masked, settings.topic_meta, settings.topic_alerts]
        if settings.topic_raw in self.topics:  # the console never reads raw frames
            raise ConfigError(f"the console reads masked frames only, not {settings.topic_raw!r}")
        self.stopping = threading.Event()
        self.assigned = threading.Event()
        self.consumed = 0
        self._thread = threading.Thread(target=self._run, name="console-tap", daemon=True)

    def start(self) -> FrameTap:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self.stopping.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        consumer = Consumer(consumer_config(self.settings, self.group, **{
            "auto.offset.reset": "latest", "enable.auto.commit": False,
            "max.partition.fetch.bytes": self.settings.max_message_bytes,
            "partition.assignment.strategy": "range"}))
        consumer.subscribe(self.topics, on_assign=lambda _c, _p: self.assigned.set())
        handlers = {self.settings.topic_masked: self._masked, self.settings.topic_meta: self._meta,
                    self.settings.topic_alerts: self._alert}
        try:
            while not self.stopping.is_set():
                msg = consumer.poll(0.5)
                if msg is None or not usable(msg):
                    continue
                try:
                    handlers[str(msg.topic())](msg.value() or b"")
                except Exception as exc:  # not ours to judge: a record that does not parse is skipped
                    log.debug("skipped a record", extra={"topic": msg.topic(), "error": repr(exc)})
                self.consumed += 1
        finally:
            consumer.close()

    def _masked(self, value: bytes) -> None:
        self.live.on_masked(pb.MaskedFrame.FromString(value))

    def _meta(self, value: bytes) -> None:
        self.live.on_meta(pb.FrameMeta.FromString(value))

    def _alert(self, value: bytes) -> None:
        self.live.on_alert(alerts_pb2.AlertEvent.FromString(value))
