"""The worker's intake: the oldest waiting frame first, across partitions, also under a backlog.

librdkafka fetches up to `max.partition.fetch.bytes` from each partition at a time and hands messages over in
fetch order: shares by bytes, not by frames. Under a backlog a 1080p camera's partition gives ~2 frames a fetch
while a 480p camera's gives ~25, the worker serves frames in that proportion and the large camera falls behind
(make load's fairness scenario: p50 6.2 s for the 1080p camera against 2.4-3.1 s for the 480p ones).

Here messages are drained from the consumer into one buffer per partition and the oldest head (its Kafka
timestamp: when the frame was produced) is served first; a partition is paused once `budget` bytes of it wait, so
the fetcher spends its fetches on the partitions that are behind, and resumed when half of that is served. The
budget is in bytes, and large: a resumed partition is fetched again one round trip (and up to one long poll)
later, and what is still buffered must cover that (a budget of 4 frames, resumed at 2, left two saturated workers
idle half the time: 26-30 fps against 66-71 in Kafka's order).
Order within a partition is kept. What is buffered is not processed yet, so no offset moves past it: on a
revocation, a lost partition or a rewind it is dropped and read again by whoever owns the partition next (pausing
in librdkafka drops its own prefetched messages the same way and resumes from the last one handed over).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Consumer, KafkaException, Message, TopicPartition

from imask.ops import metrics
from imask.streaming.kafka import usable

log = logging.getLogger(__name__)

PartitionKey = tuple[str, int]

# A resumed partition is fetched only once the fetch in flight returns: a long poll on partitions with nothing new
# holds it for the default 500 ms (measured: oldest-first order broke for ~0.5 s after each resume). 50 ms bounds
# that, for ~20 empty fetches a second while idle. And a partition librdkafka once found with its queue full waits
# fetch.queue.backoff.ms (1 s by default) before it is fetched again: with pauses and resumes that left a worker at
# 5 ms a frame idle half the time (5.2-5.8 s of 10, 400 frames of 150 KB in two partitions, 4 MB budget); at 10 ms,
# never (0 of 4.1 s, twice).
INTAKE_CONSUMER_CONFIG: dict[str, Any] = {"fetch.wait.max.ms": 50, "fetch.queue.backoff.ms": 10}
# Large frames (4K: ~2 MB) fill a byte budget in a few: a partition keeps at least this many waiting before it is
# paused, and is resumed when half of them are left, so the refetch is still covered.
MIN_PAUSE_FRAMES = 8


@dataclass
class _Waiting:
    """One partition's buffered messages, each with its timestamp, and their bytes."""

    messages: deque[tuple[int, Message]] = field(default_factory=deque)
    size: int = 0


class OldestFirstIntake:
    def __init__(self, consumer: Consumer, budget_bytes: int, drain_max: int = 256) -> None:
        if budget_bytes < 1:
            raise ValueError("budget_bytes must be at least 1")
        self.consumer = consumer
        self.budget = budget_bytes
        self.drain_max = drain_max
        self._waiting: dict[PartitionKey, _Waiting] = {}
        self._paused: set[PartitionKey] = set()
        self._depth = metrics.QUEUE_DEPTH.labels("intake")

    @property
    def buffered(self) -> int:
        return sum(len(w.messages) for w in self._waiting.values())

    @property
    def paused(self) -> frozenset[PartitionKey]:
        return frozenset(self._paused)

    def take(self, timeout: float, max_messages: int) -> list[Message]:
        """Up to `max_messages`, oldest first; waits up to `timeout` only when nothing is buffered. Consumer errors
        are logged and left out."""
        if not self.buffered:
            first = self.consumer.poll(timeout)
            if not usable(first):
                return []
            self._add(first)  # type: ignore[arg-type,unused-ignore]
        for message in self.consumer.consume(self.drain_max, timeout=0):
            if usable(message):
                self._add(message)
        self._pause_full()
        batch = [self._pop_oldest() for _ in range(min(max_messages, self.buffered))]
        self._resume_drained()
        self._depth.set(self.buffered)
        return batch

    def forget(self, partitions: Iterable[PartitionKey]) -> None:
        """Drop what is buffered for these partitions (revoked, lost or rewound) and let their fetcher run."""
        keys = set(partitions)
        for key in keys:
            self._waiting.pop(key, None)
        self._resume(keys & self._paused)
        self._depth.set(self.buffered)

    def assigned(self, partitions: Iterable[PartitionKey]) -> None:
        """A partition assigned again may still carry librdkafka's pause from before: start it fetching."""
        self._resume(set(partitions))

    # --- internals ---------------------------------------------------------------------------------------------
    def _add(self, message: Message) -> None:
        kind, ts_ms = message.timestamp()
        waiting = self._waiting.setdefault((message.topic() or "", message.partition() or 0), _Waiting())
        # Without a timestamp a message counts as oldest: served in arrival order, never held back.
        waiting.messages.append((0 if kind == TIMESTAMP_NOT_AVAILABLE else ts_ms, message))
        waiting.size += len(message)

    def _pop_oldest(self) -> Message:
        waiting = min((w for w in self._waiting.values() if w.messages), key=lambda w: w.messages[0][0])
        message = waiting.messages.popleft()[1]
        waiting.size -= len(message)
        return message

    def _pause_full(self) -> None:
        full = [k for k, w in self._waiting.items()
                if w.size >= self.budget and len(w.messages) >= MIN_PAUSE_FRAMES and k not in self._paused]
        if not full:
            return
        try:
            self.consumer.pause([TopicPartition(t, p) for t, p in full])
        except KafkaException as exc:  # revoked meanwhile: its buffer goes with the revocation, nothing to hold
            log.info("pause refused", extra={"partitions": sorted(p for _, p in full), "error": str(exc)})
            return
        self._paused.update(full)

    def _resume_drained(self) -> None:
        def drained(key: PartitionKey) -> bool:
            waiting = self._waiting.get(key)
            return waiting is None or waiting.size <= self.budget // 2 or len(waiting.messages) <= MIN_PAUSE_FRAMES // 2

        self._resume({k for k in self._paused if drained(k)})

    def _resume(self, keys: set[PartitionKey]) -> None:
        if not keys:
            return
        try:
            self.consumer.resume([TopicPartition(t, p) for t, p in keys])
        except KafkaException as exc:  # not (or no longer) assigned: nothing fetches it here anyway
            log.info("resume refused", extra={"partitions": sorted(p for _, p in keys), "error": str(exc)})
        self._paused -= keys
