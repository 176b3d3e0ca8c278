"""Kafka plumbing shared by services: client configs, topic creation, in-order offset tracking."""

from __future__ import annotations

import logging
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import (  # type: ignore[attr-defined,unused-ignore]
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
)

from imask.ops.settings import KafkaSettings

log = logging.getLogger(__name__)


def usable(msg: Message | None) -> bool:
    """A polled message that carries data; consumer errors are logged (partition EOF is not an error)."""
    if msg is None:
        return False
    err = msg.error()
    if err is not None:
        if err.code() != KafkaError._PARTITION_EOF:
            log.warning("consumer error", extra={"error": str(err)})
        return False
    return True


def common_config(settings: KafkaSettings) -> dict[str, Any]:
    return {"bootstrap.servers": settings.bootstrap_servers, **settings.kafka_extra}


def producer_config(settings: KafkaSettings, **extra: Any) -> dict[str, Any]:
    return {
        **common_config(settings),
        # Idempotence keeps per-partition order through retries: each camera stays ordered.
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 2,
        "compression.type": "none",  # JPEG does not compress further
        "message.max.bytes": settings.max_message_bytes,
        # A topic's max.message.bytes bounds a whole record batch: a batch larger than the topic takes is
        # refused whole, innocent frames with it.
        "batch.size": settings.kafka_extra.get("batch.size", min(1_000_000, settings.max_message_bytes)),
        **extra,
    }


def consumer_config(settings: KafkaSettings, group_id: str, **extra: Any) -> dict[str, Any]:
    return {
        **common_config(settings),
        "group.id": group_id,
        "auto.offset.reset": "earliest",
        # Offsets are stored by us only after the outputs were acknowledged, then committed in the background.
        "enable.auto.commit": True,
        "enable.auto.offset.store": False,
        "auto.commit.interval.ms": 1000,
        # Cooperative rebalancing: a joining or leaving worker does not stop the others.
        "partition.assignment.strategy": "cooperative-sticky",
        "session.timeout.ms": 10000,
        "heartbeat.interval.ms": 2000,
        "max.poll.interval.ms": 120000,
        "fetch.max.bytes": max(52428800, settings.max_message_bytes),
        # About 6 frames of 720p per partition per fetch: with a backlog, partitions (cameras) take turns in
        # small slices instead of one camera's 8 MB at a time. A larger single message still comes (KIP-74).
        "max.partition.fetch.bytes": 1024 * 1024,
        # Prefetch at most ~50 frames: newly assigned partitions are not queued behind a long local backlog, and
        # the worker does not hold 64 MB of raw frames in memory.
        "queued.max.messages.kbytes": 8192,
        **extra,
    }


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


def frame_topics(settings: KafkaSettings) -> list[TopicSpec]:
    size = {"max.message.bytes": str(settings.max_message_bytes)}
    return [
        TopicSpec(settings.topic_raw, settings.partitions,
                  {**size, "retention.ms": str(settings.raw_retention_ms)}),
        TopicSpec(settings.topic_masked, settings.partitions, {**size, "retention.ms": str(24 * 3600 * 1000)}),
        TopicSpec(settings.topic_meta, settings.partitions, {"retention.ms": str(7 * 24 * 3600 * 1000)}),
        TopicSpec(settings.topic_dlq, settings.partitions, {**size, "retention.ms": str(7 * 24 * 3600 * 1000)}),
        TopicSpec(settings.topic_alerts, 1, {"retention.ms": str(30 * 24 * 3600 * 1000)}),
    ]


def ensure_topics(settings: KafkaSettings, specs: list[TopicSpec] | None = None, timeout: float = 30.0) -> None:
    """Create missing topics; existing ones keep their partitions (changing those re-keys cameras)."""
    specs = specs if specs is not None else frame_topics(settings)
    admin = AdminClient(common_config(settings))
    existing = set(admin.list_topics(timeout=timeout).topics)
    missing = [s for s in specs if s.name not in existing]
    if missing:
        futures = admin.create_topics(
            [NewTopic(s.name, num_partitions=s.partitions, replication_factor=settings.replication_factor,
                      config=s.config) for s in missing],
            operation_timeout=timeout,
        )
        for name, future in futures.items():
            try:
                future.result()
                log.info("topic created", extra={"topic": name})
            except KafkaException as exc:
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise
    present = [s for s in specs if s.name in existing]
    if present:
        _keep_operator_configs(admin, settings, present, timeout)


def _keep_operator_configs(admin: AdminClient, settings: KafkaSettings, present: list[TopicSpec],
                           timeout: float) -> None:
    """Existing topics keep what their operators set: differences from our defaults are only logged. The one
    exception is privacy: raw frames never stay longer than `raw_retention_ms` (lowered incrementally, the
    topic's other settings untouched)."""
    resources = [ConfigResource("topic", s.name) for s in present if s.config]
    for resource, future in admin.describe_configs(resources).items():
        try:
            current = {name: entry.value for name, entry in future.result(timeout).items()}
        except KafkaException as exc:
            log.warning("could not read topic config", extra={"topic": resource.name, "error": str(exc)})
            continue
        spec = next(s for s in present if s.name == resource.name)
        for key, wanted in spec.config.items():
            if current.get(key) in (None, wanted):
                continue
            lower_retention = (spec.name == settings.topic_raw and key == "retention.ms"
                               and not 0 <= int(current[key] or -1) <= int(wanted))
            if not lower_retention:
                log.warning("topic config differs from this service's default; left as set",
                            extra={"topic": spec.name, "key": key, "value": current[key], "default": wanted})
                continue
            change = ConfigResource("topic", spec.name, incremental_configs=[
                ConfigEntry(key, wanted, incremental_operation=AlterConfigOpType.SET)])
            try:
                admin.incremental_alter_configs([change])[change].result(timeout)
                log.warning("raw topic retention lowered to the configured bound",
                            extra={"topic": spec.name, "was": current[key], "now": wanted})
            except KafkaException as exc:
                log.warning("could not lower raw retention", extra={"topic": spec.name, "error": str(exc)})


def delete_topics(settings: KafkaSettings, names: list[str], timeout: float = 30.0) -> None:
    admin = AdminClient(common_config(settings))
    for future in admin.delete_topics(names, operation_timeout=timeout).values():
        try:
            future.result()
        except KafkaException as exc:
            if "UNKNOWN_TOPIC" not in str(exc):
                raise


class OffsetTracker:
    """Which input offsets may be committed: only a contiguous prefix of finished ones per partition.

    A frame is finished when all its outputs were acknowledged; a later frame finishing first must not let the
    commit skip an earlier one still in flight (that frame would be lost on a crash).
    """

    def __init__(self) -> None:
        self._pending: dict[tuple[str, int], deque[int]] = {}
        self._done: dict[tuple[str, int], set[int]] = {}

    def add(self, topic: str, partition: int, offset: int) -> None:
        self._pending.setdefault((topic, partition), deque()).append(offset)
        self._done.setdefault((topic, partition), set())

    def finish(self, topic: str, partition: int, offset: int) -> int | None:
        """Mark one offset finished; returns the next offset to commit when the prefix advanced."""
        key = (topic, partition)
        pending, done = self._pending.get(key), self._done.get(key)
        if pending is None or done is None:
            return None  # partition was revoked meanwhile
        done.add(offset)
        advanced = None
        while pending and pending[0] in done:
            advanced = pending.popleft()
            done.discard(advanced)
        return None if advanced is None else advanced + 1

    def inflight(self) -> int:
        return sum(len(p) for p in self._pending.values())

    def forget(self, topic: str, partition: int) -> None:
        self._pending.pop((topic, partition), None)
        self._done.pop((topic, partition), None)


def end_offsets(settings: KafkaSettings, topics: list[str], timeout: float = 10.0) -> dict[tuple[str, int], int]:
    """Current high watermark of every partition: 'from now on' for a reader started before a run."""
    consumer = Consumer({**common_config(settings), "group.id": f"imask-probe-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False})
    try:
        out = {}
        metadata = consumer.list_topics(timeout=timeout)
        for topic in topics:
            for partition in metadata.topics[topic].partitions:
                _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout)
                out[(topic, partition)] = high
        return out
    finally:
        consumer.close()


def offsets_at(settings: KafkaSettings, topic: str, ts_ms: int, timeout: float = 10.0) -> dict[tuple[str, int], int]:
    """Per partition of `topic`, the first offset at or after `ts_ms` (the end where nothing is that late): where
    a reader starts to see everything since a moment."""
    consumer = Consumer({**common_config(settings), "group.id": f"imask-probe-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topic, timeout=timeout).topics[topic].partitions
        found = consumer.offsets_for_times([TopicPartition(topic, p, max(ts_ms, 0)) for p in partitions],
                                           timeout=timeout)
        out = {}
        for tp in found:
            if tp.offset < 0:  # nothing at or after ts_ms: start at the end
                _, high = consumer.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=timeout)
                out[(topic, tp.partition)] = high
            else:
                out[(topic, tp.partition)] = tp.offset
        return out
    finally:
        consumer.close()


class TopicReader:
    """Reads given partitions from given offsets without a consumer group (no commits, no rebalances)."""

    def __init__(self, settings: KafkaSettings, start: dict[tuple[str, int], int]) -> None:
        self.consumer = Consumer({**common_config(settings), "group.id": f"imask-reader-{uuid.uuid4().hex[:8]}",
                                  "enable.auto.commit": False,
                                  "max.partition.fetch.bytes": settings.max_message_bytes})
        self.consumer.assign([TopicPartition(t, p, off) for (t, p), off in start.items()])

    def poll(self, timeout: float) -> Message | None:
        msg = self.consumer.poll(timeout)
        return msg if usable(msg) else None

    def close(self) -> None:
        self.consumer.close()
