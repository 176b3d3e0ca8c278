"""Consuming for a sink: a service that writes what it reads outside Kafka (the recorder's files) and decides itself
which offsets may be committed, often long after it read them (once what it wrote is safely on disk).

`SinkConsumer` owns the Kafka details: the subscription and its rebalance callbacks, polling (consumer errors
logged and left out), pausing and resuming every assigned partition (the consumer stays in its group: no
rebalance), rewinding partitions, storing the offsets the sink allows (committed in the background) and one last
synchronous commit before leaving the group. `run_sink` is the loop: poll, hand each record to the sink, let it do
its timed work, store what it allows; on `stopping` the sink finishes and what it allows last is committed.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Protocol

from confluent_kafka import Consumer, KafkaException, TopicPartition

from imask.frames.clock import now_us
from imask.ops.settings import KafkaSettings
from imask.streaming.kafka import consumer_config, usable
from imask.streaming.loop import Inbound

log = logging.getLogger(__name__)

PartitionKey = tuple[str, int]
POLL_S = 0.2


class SinkControl(Protocol):
    """What a sink may ask of its consumer."""

    def pause(self) -> None:
        """Stop fetching every assigned partition, staying in the group."""
        ...

    def resume(self) -> None:
        ...

    def rewind(self, offsets: Mapping[PartitionKey, int]) -> None:
        """Read these partitions again from these offsets."""
        ...


class Sink(Protocol):
    def write(self, record: Inbound) -> None:
        """One record, in order within its partition."""
        ...

    def tick(self) -> None:
        """After every poll, with or without a record: time-driven work (closing idle files, resuming)."""
        ...

    def committable(self) -> dict[PartitionKey, int]:
        """The next offset per partition that may be committed now."""
        ...

    def finish(self, clean: bool) -> dict[PartitionKey, int]:
        """Stopping (`clean`: asked to, not by an error): close what is open; the offsets to commit last."""
        ...


class SinkConsumer:
    """One consumer-group member whose offsets move only where its sink says (stored, then auto-committed)."""

    def __init__(self, settings: KafkaSettings, group_id: str, topics: list[str],
                 details: dict[str, object] | None = None) -> None:
        self.consumer = Consumer(consumer_config(settings, group_id))
        self.topics = topics
        self.details = details if details is not None else {}
        self._owned: set[int] = set()

    def subscribe(self) -> None:
        self.consumer.subscribe(self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_lost)

    def poll(self, timeout: float) -> Inbound | None:
        msg = self.consumer.poll(timeout)
        if msg is None or not usable(msg):
            return None
        return Inbound(msg.key(), msg.value(), msg.topic() or "", msg.partition() or 0, msg.offset() or 0, now_us())

    def pause(self) -> None:
        with contextlib.suppress(KafkaException):
            self.consumer.pause(self.consumer.assignment())

    def resume(self) -> None:
        with contextlib.suppress(KafkaException):
            self.consumer.resume(self.consumer.assignment())

    def rewind(self, offsets: Mapping[PartitionKey, int]) -> None:
        for (topic, partition), offset in offsets.items():
            with contextlib.suppress(KafkaException):  # not assigned here (any more): its owner reads it
                self.consumer.seek(TopicPartition(topic, partition, offset))

    def store(self, offsets: Mapping[PartitionKey, int]) -> None:
        # One partition at a time: one no longer assigned refuses its offset without holding up the others.
        for (topic, partition), offset in offsets.items():
            with contextlib.suppress(KafkaException):
                self.consumer.store_offsets(offsets=[TopicPartition(topic, partition, offset)])

    def close(self, offsets: Mapping[PartitionKey, int]) -> None:
        """Store the last offsets, commit them now and leave the group (its partitions move at once)."""
        self.store(offsets)
        with contextlib.suppress(KafkaException):
            self.consumer.commit(asynchronous=False)
        self.consumer.close()

    # Rebalances: librdkafka (un)assigns after each callback; the sink decides its offsets either way.
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._rebalanced("partitions assigned", partitions, added=True)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._rebalanced("partitions revoked", partitions, added=False)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._rebalanced("partitions lost", partitions, added=False, level=logging.WARNING)

    def _rebalanced(self, what: str, partitions: list[TopicPartition], added: bool, level: int = logging.INFO) -> None:
        """Log a rebalance step and show the partitions held after it in /readyz."""
        numbers = {p.partition for p in partitions}
        log.log(level, what, extra={"partitions": sorted(numbers)})
        self._owned = self._owned | numbers if added else self._owned - numbers
        self.details["partitions"] = sorted(self._owned)


def run_sink(consumer: SinkConsumer, sink: Sink, stopping: threading.Event,
             on_started: Callable[[], None] | None = None) -> None:
    """Consume into `sink` until `stopping`; its last offsets are committed also when it raised."""
    consumer.subscribe()
    if on_started is not None:
        on_started()
    clean = False
    try:
        while not stopping.is_set():
            record = consumer.poll(POLL_S)
            if record is not None:
                sink.write(record)
            sink.tick()
            consumer.store(sink.committable())
        clean = True
    finally:
        consumer.close(sink.finish(clean))
