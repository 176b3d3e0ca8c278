"""The one Kafka producer helper every service uses: bounded in flight, and every message's fate reported.

A message ends in exactly one of three ways, and the caller's `on_done` hears which:
- acknowledged by the broker (`Delivery.ok`);
- refused for itself (`Delivery.refused`: too large, invalid; retrying will not help): the caller turns the input
  it came from into a drop record, and goes on;
- failed because of the broker or the producer (`Delivery.broken`: timed out, fenced, fatal): the caller must not
  move offsets past it; at-least-once consumers stop and let another instance redo the input.

Acknowledgements arrive only while the producer is polled: either the owner polls (a consume loop does, between
polls of its consumer), or `poll_thread=True` starts a thread that does (services whose threads block elsewhere).
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from imask.ops.settings import KafkaSettings
from imask.streaming.kafka import producer_config

log = logging.getLogger(__name__)


class Fate(enum.Enum):
    OK = "ok"
    REFUSED = "refused"  # this message will never be taken: dead-letter what it came from
    BROKEN = "broken"    # the broker or the producer failed: do not move offsets past it


@dataclass(frozen=True)
class Delivery:
    fate: Fate
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.fate is Fate.OK


DeliveryCallback = Callable[[Delivery], None]


def fate_of(err: KafkaError | None) -> Fate:
    """Message-specific refusals (too large, invalid record) are REFUSED; anything about the broker, the network,
    time-outs, fencing or a fatal producer is BROKEN."""
    if err is None:
        return Fate.OK
    if err.fatal() or err.retriable() or err.code() in (KafkaError._MSG_TIMED_OUT, KafkaError._TIMED_OUT,
                                                         KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN,
                                                         KafkaError._FENCED, KafkaError._STATE):
        return Fate.BROKEN
    return Fate.REFUSED


class QueueFull(BufferError):
    """`send(..., wait=False)` found no room (the bound on messages in flight, or librdkafka's queue)."""


class Outbox:
    """A producer with a bound on messages in flight (produced, not yet acknowledged or failed).

    `send(wait=True)` blocks while the bound is reached (backpressure: the caller slows down);
    `send(wait=False)` raises QueueFull instead (fire-and-forget records that may be dropped, counted by the
    caller). `failed` counts messages that did not end OK.
    """

    def __init__(self, settings: KafkaSettings, *, max_inflight: int = 10_000, poll_thread: bool = False,
                 **librdkafka: Any) -> None:
        librdkafka.setdefault("queue.buffering.max.messages", max(max_inflight, 1))
        self.producer = Producer(producer_config(settings, **librdkafka))
        self.max_inflight = max_inflight
        self.failed = 0
        self._inflight = 0
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._closing = threading.Event()
        self._poller: threading.Thread | None = None
        if poll_thread:
            self._poller = threading.Thread(target=self._poll_loop, name="kafka-poll", daemon=True)
            self._poller.start()

    # -- sending -------------------------------------------------------------------------------------------------
    def send(self, topic: str, key: str, value: bytes, on_done: DeliveryCallback | None = None,
             wait: bool = True) -> None:
        """Queue one message. `on_done` is called exactly once with its Delivery, also when it is refused before
        it was queued (too large for the producer), and then from this call."""
        self._reserve(wait)

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            self._settle(err, on_done)

        while True:
            try:
                self.producer.produce(topic, value=value, key=key.encode(), on_delivery=delivered)
                break
            except BufferError:  # librdkafka's own queue is full: serve acknowledgements, then retry
                if not wait:
                    self._release()
                    raise QueueFull(f"producer queue full ({topic})") from None
                self.poll(0.05)  # with a poll thread: sleeps while it makes room
            except KafkaException as exc:  # refused before it was queued (e.g. larger than message.max.bytes)
                self._settle(exc.args[0], on_done)
                return

    def _reserve(self, wait: bool) -> None:
        with self._room:
            while self._inflight >= self.max_inflight:
                if not wait:
                    raise QueueFull(f"{self._inflight} messages in flight")
                if self._poller is not None:
                    self._room.wait(0.05)
                else:
                    self._room.release()
                    try:
                        self.producer.poll(0.05)
                    finally:
                        self._room.acquire()
            self._inflight += 1

    def _release(self) -> None:
        with self._room:
            self._inflight -= 1
            self._room.notify_all()

    def _settle(self, err: KafkaError | None, on_done: DeliveryCallback | None) -> None:
        self._release()
        fate = fate_of(err)
        if fate is not Fate.OK:
            with self._lock:
                self.failed += 1
        if on_done is not None:
            on_done(Delivery(fate, "" if err is None else str(err)))

    # -- acknowledgements ----------------------------------------------------------------------------------------
    def inflight(self) -> int:
        return self._inflight

    def poll(self, timeout: float = 0.0) -> None:
        """Serve acknowledgements (owners without a poll thread call this from their loop)."""
        if self._poller is None:
            self.producer.poll(timeout)
        elif timeout:
            time.sleep(timeout)

    def _poll_loop(self) -> None:
        while not self._closing.is_set():
            self.producer.poll(0.05)

    def flush(self, timeout: float) -> int:
        """Wait for every queued message's fate; returns how many are still undecided."""
        return int(self.producer.flush(timeout))

    def close(self, timeout: float = 30.0) -> int:
        """Deliver what is queued, stop the poll thread; returns how many messages are still undelivered."""
        remaining = self.flush(timeout)
        self._closing.set()
        if self._poller is not None:
            self._poller.join(5)
        return remaining
