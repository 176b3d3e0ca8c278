"""Consumer-group lag per partition, in messages and in seconds (age of the oldest frame not yet consumed)."""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass

from confluent_kafka import Consumer, TopicPartition

from imask.ops.settings import KafkaSettings
from imask.streaming.kafka import common_config


@dataclass
class PartitionLag:
    partition: int
    committed: int   # next offset the group will read (-1: nothing committed yet)
    end: int         # high watermark
    lag: int         # messages waiting
    oldest_age_s: float  # how long the oldest waiting message has waited: lag in seconds of video

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def group_lag(settings: KafkaSettings, group_id: str, topic: str | None = None,
              timeout: float = 10.0) -> list[PartitionLag]:
    """Reads the group's committed offsets without joining it (no rebalance is triggered)."""
    topic = topic or settings.topic_raw
    probe = Consumer({**common_config(settings), "group.id": group_id, "enable.auto.commit": False})
    peek = Consumer({**common_config(settings), "group.id": f"imask-lag-{uuid.uuid4().hex[:8]}",
                     "enable.auto.commit": False, "max.partition.fetch.bytes": settings.max_message_bytes})
    try:
        partitions = sorted(probe.list_topics(topic, timeout=timeout).topics[topic].partitions)
        committed = probe.committed([TopicPartition(topic, p) for p in partitions], timeout=timeout)
        out = []
        for tp in committed:
            low, high = probe.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=timeout)
            position = tp.offset if tp.offset >= 0 else low
            lag = max(0, high - position)
            age = 0.0
            if lag:
                peek.assign([TopicPartition(topic, tp.partition, position)])
                msg = peek.poll(timeout)
                if msg is not None and not msg.error():
                    _, ts_ms = msg.timestamp()
                    age = max(0.0, time.time() - ts_ms / 1e3)
            out.append(PartitionLag(tp.partition, tp.offset, high, lag, round(age, 3)))
        return out
    finally:
        probe.close()
        peek.close()
