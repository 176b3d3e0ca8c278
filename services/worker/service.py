"""Masking worker: frames.raw -> engine -> frames.masked + frames.meta (or frames.dlq), at least once.

Offsets are stored only after every output of a frame was acknowledged by the broker, and committed in the
background; on SIGTERM the worker stops polling, finishes and flushes what it holds, commits and leaves the group.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from imask.engine import MaskingEngine
from imask.engine.build import build_engine
from imask.ops import metrics
from imask.ops.runtime import ServiceRuntime, run_service
from imask.ops.settings import WorkerSettings
from imask.pipeline.processor import FrameProcessor, Inbound, Outcome, ProcessorOptions
from imask.pipeline.wire import Rejected, now_us
from imask.streaming.kafka import OffsetTracker, consumer_config, ensure_topics, producer_config, usable
from imask.v1 import frames_pb2 as pb

log = logging.getLogger(__name__)


class Worker:
    def __init__(self, settings: WorkerSettings, runtime: ServiceRuntime, engine: MaskingEngine) -> None:
        self.settings = settings
        self.runtime = runtime
        self.processor = FrameProcessor(engine, ProcessorOptions(
            worker_id=settings.worker_id, limits=settings, jpeg_quality=settings.jpeg_quality,
            dlq_include_raw=settings.dlq_include_raw, max_message_bytes=settings.max_message_bytes))
        self.offsets = OffsetTracker()
        self.fatal: str | None = None
        self.producer = Producer(producer_config(settings))
        self.consumer = Consumer(consumer_config(settings, settings.group_id, **{"client.id": settings.worker_id}))
        self.variant = engine.variant.name
        self._owned: set[int] = set()  # partitions assigned now (shown on /readyz)
        runtime.watch_engine(engine)

    # --- Kafka callbacks -------------------------------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("partitions assigned", extra={"partitions": [p.partition for p in partitions]})
        self._owned |= {p.partition for p in partitions}
        self.runtime.details["partitions"] = sorted(self._owned)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Finish what we hold for these partitions so the next owner starts after it, not before.
        self.producer.flush(30)
        self._commit()
        for p in partitions:
            self.offsets.forget(p.topic, p.partition)
        self._owned -= {p.partition for p in partitions}
        self.runtime.details["partitions"] = sorted(self._owned)
        log.info("partitions revoked", extra={"partitions": [p.partition for p in partitions]})

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for p in partitions:
            self.offsets.forget(p.topic, p.partition)
        self._owned -= {p.partition for p in partitions}
        self.runtime.details["partitions"] = sorted(self._owned)
        log.warning("partitions lost", extra={"partitions": [p.partition for p in partitions]})

    def _commit(self) -> None:
        try:
            self.consumer.commit(asynchronous=False)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError._NO_OFFSET:
                log.warning("commit failed", extra={"error": str(exc)})

    def _finish(self, inbound: Inbound) -> None:
        next_offset = self.offsets.finish(inbound.topic, inbound.partition, inbound.offset)
        if next_offset is not None:
            try:
                self.consumer.store_offsets(offsets=[TopicPartition(inbound.topic, inbound.partition, next_offset)])
            except KafkaException as exc:  # revoked meanwhile: the next owner redoes it (at least once)
                log.info("offset not stored", extra={"error": str(exc)})

    def _produce(self, topic: str, key: str, value: bytes, on_ack: Any) -> None:
        while True:
            try:
                self.producer.produce(topic, value=value, key=key.encode(), on_delivery=on_ack)
                return
            except BufferError:
                self.producer.poll(0.05)  # local queue full: serve callbacks, then retry

    def _delivery_failed(self, err: KafkaError, what: str) -> None:
        # The broker is unreachable or the producer broke: stop without committing past the frame; another
        # worker redoes it (at least once).
        self.fatal = f"delivery of {what} failed: {err}"
        log.error("delivery failed, stopping", extra={"error": str(err), "what": what})
        self.runtime.stopping.set()

    def _output_refused(self, outcome: Outcome, err: KafkaError, what: str) -> None:
        """The broker will not take one output (too large, invalid): that frame becomes a drop record and the
        worker goes on. A failure that concerns the broker rather than the message still stops it."""
        if err.retriable() or err.fatal() or err.code() == KafkaError._MSG_TIMED_OUT:
            return self._delivery_failed(err, what)
        metrics.OUTPUTS_REFUSED.labels(what).inc()
        log.error("output refused by Kafka, dead-lettering the frame", extra={
            "camera": outcome.camera_id, "seq": outcome.seq, "what": what, "error": str(err)})
        if what == "frame meta":  # the masked frame itself went out; only its metadata is lost
            return self._finish(outcome.inbound)
        self._emit(self.processor.drop(outcome.inbound, Rejected(
            pb.DROP_REASON_INTERNAL_ERROR, f"{what} refused by Kafka: {err}", outcome.camera_id, outcome.seq),
            "publish"))

    def _send(self, outcome: Outcome, topic: str, value: bytes, what: str,
              on_ok: Callable[[], None]) -> None:
        def failed(err: KafkaError) -> None:
            if what == "drop record":
                return self._delivery_failed(err, what)
            self._output_refused(outcome, err, what)

        def on_ack(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                return failed(err)
            on_ok()

        try:
            self._produce(topic, outcome.camera_id, value, on_ack)
        except KafkaException as exc:  # refused before it was queued (e.g. larger than message.max.bytes)
            failed(exc.args[0])

    # --- the loop --------------------------------------------------------------------------------------------
    def _emit(self, outcome: Outcome) -> None:
        inbound = outcome.inbound
        s = self.settings
        camera = outcome.camera_id
        if outcome.drop is not None:  # the last resort: if Kafka refuses even this, the worker stops
            self._send(outcome, s.topic_dlq, outcome.drop.SerializeToString(), "drop record",
                       lambda: self._finish(inbound))
            return
        assert outcome.masked is not None and outcome.meta is not None
        meta = outcome.meta
        sent = time.perf_counter()

        def on_masked() -> None:
            t = meta.timings
            t.publish_ms = (time.perf_counter() - sent) * 1e3
            if meta.capture_ts_us and not meta.end_of_stream:
                t.end_to_end_ms = (now_us() - meta.capture_ts_us) / 1e3
                self._observe(camera, t)
                metrics.FRAMES_OUT.labels(camera).inc()
            self._send(outcome, s.topic_meta, meta.SerializeToString(), "frame meta", lambda: self._finish(inbound))

        self._send(outcome, s.topic_masked, outcome.masked.SerializeToString(), "masked frame", on_masked)

    def _observe(self, camera: str, t: Any) -> None:
        for stage in ("decode", "queue_wait", "preprocess", "inference", "postprocess", "mask", "encode",
                      "publish", "end_to_end"):
            metrics.observe_stage(stage, self.variant, camera, getattr(t, f"{stage}_ms"))

    def _poll_batch(self) -> list[Message]:
        # Delivery acks are served only when we poll the producer: while outputs are in flight, wait for input in
        # short slices so an ack is seen within ~2 ms (publish latency, offset commits), else block longer.
        first = self.consumer.poll(0.002 if self.offsets.inflight() else 0.2)
        if first is None:
            return []
        batch = [first]
        if self.settings.batch_max > 1:  # take whatever else is already waiting, never wait for more
            batch += self.consumer.consume(self.settings.batch_max - 1, timeout=0)
        return batch

    def run(self) -> int:
        s = self.settings
        ensure_topics(s)
        self.consumer.subscribe([s.topic_raw], on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_lost)
        log.info("worker started", extra={"group": s.group_id, "variant": self.variant,
                                          "provider": self.processor.engine.execution_provider})
        self.runtime.details.update(group=s.group_id, variant=self.variant,
                                    provider=self.processor.engine.execution_provider)
        self.runtime.ready.set()  # model loaded and warm, subscribed; idle workers are ready too
        try:
            while not self.runtime.stopping.is_set():
                while self.offsets.inflight() >= s.max_inflight and not self.runtime.stopping.is_set():
                    self.producer.poll(0.05)  # backpressure: wait for acks before taking more
                messages = self._poll_batch()
                self.producer.poll(0)
                inbound = []
                for msg in messages:
                    if not usable(msg):
                        continue
                    inbound.append(Inbound(msg.key(), msg.value(), msg.topic() or "", msg.partition() or 0,
                                           msg.offset() or 0, now_us()))
                if not inbound:
                    continue
                for item in inbound:
                    self.offsets.add(item.topic, item.partition, item.offset)
                metrics.QUEUE_DEPTH.labels("inflight").set(self.offsets.inflight())
                for outcome in self.processor.process(inbound):
                    self._emit(outcome)
                self.producer.poll(0)
        finally:
            self._drain()
        return 1 if self.fatal else 0

    def _drain(self) -> None:
        remaining = self.producer.flush(30)
        if remaining:
            log.error("messages still unacknowledged at shutdown; they will be redone", extra={"n": remaining})
        self._commit()
        self.consumer.close()  # leaves the group now, so partitions move without waiting for a timeout
        self.processor.engine.close()
        log.info("worker stopped", extra={"fatal": self.fatal})


def run(settings: WorkerSettings) -> int:
    return run_service("worker", settings, lambda runtime: Worker(settings, runtime, build_engine(settings)).run())
