"""The one consume -> process -> produce loop: at least once by default, exactly once with Kafka transactions.

A `Handler` turns a batch of inbound messages into exactly one `Emission` per message: the outputs it leaves as
(masked frame, then its metadata; or a drop record). The loop owns everything Kafka:

- **at least once** (default): an emission's outputs are sent in order, each after the previous one was
  acknowledged; the input's offset is stored only when all of them were, and only as a contiguous prefix per
  partition (`OffsetTracker`), then committed in the background. A crash redoes what was not acknowledged:
  duplicates, never losses.
- **exactly once** (`exactly_once=True`): outputs and input offsets go in one Kafka transaction per window
  (`transaction_ms`); read_committed readers see each input's outputs once. An aborted window is re-read from its
  start.

Either way: an output Kafka refuses for itself (too large, invalid) is replaced by what the handler says (a drop
record) and the loop goes on; if the last resort is refused too, or the broker fails, the loop stops without moving
offsets past the input, and another instance redoes it. On `stopping`, it stops polling, finishes and flushes what
it holds, commits and leaves the group.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from imask.frames.clock import now_us
from imask.ops import metrics
from imask.ops.settings import KafkaSettings
from imask.streaming.intake import INTAKE_CONSUMER_CONFIG, OldestFirstIntake
from imask.streaming.kafka import OffsetTracker, consumer_config, usable
from imask.streaming.producer import Delivery, Fate, Outbox

log = logging.getLogger(__name__)


@dataclass
class Inbound:
    key: bytes | None
    value: bytes | None
    topic: str = ""
    partition: int = -1
    offset: int = -1
    received_us: int = 0


@dataclass
class Output:
    topic: str
    key: str
    value: bytes | Callable[[], bytes]  # a callable is built when sent (after the previous output's ack)
    what: str  # names it in logs and metrics: "masked frame", "frame meta", "drop record"
    on_ack: Callable[[], None] | None = None
    last_resort: bool = False  # nothing replaces it: refused too, the loop stops


@dataclass
class Emission:
    """What one inbound message leaves: its outputs, sent in order."""

    inbound: Inbound
    outputs: list[Output] = field(default_factory=list)
    context: Any = None  # the handler's own note (e.g. the frame's ids), handed back in `refused`


class Handler(Protocol):
    def process(self, batch: list[Inbound]) -> list[Emission]:
        """Exactly one emission per inbound message, in order; never raises."""
        ...

    def refused(self, emission: Emission, output: Output, error: str) -> list[Output]:
        """Kafka refused `output` for itself: what to send instead of it and the rest (empty: the input is done)."""
        ...


@dataclass
class LoopOptions:
    group_id: str
    topics: list[str]
    client_id: str
    batch_max: int = 1
    max_inflight: int = 64
    exactly_once: bool = False
    transaction_ms: float = 100.0  # exactly once: outputs and offsets committed together this often
    intake_kbytes: int = 0  # > 0: oldest frame first across partitions, pausing one with this much waiting



class ConsumeProcessProduce:
    def __init__(self, settings: KafkaSettings, options: LoopOptions, handler: Handler,
                 stopping: threading.Event, details: dict[str, object] | None = None) -> None:
        self.options = options
        self.handler = handler
        self.stopping = stopping
        self.details = details if details is not None else {}
        self.fatal: str | None = None
        self.offsets = OffsetTracker()
        producer_extra: dict[str, Any] = {"client.id": options.client_id}
        consumer_extra: dict[str, Any] = {"client.id": options.client_id}
        if options.exactly_once:
            producer_extra["transactional.id"] = f"{options.group_id}.{options.client_id}"
            # A worker that dies holds its open transaction until this runs out: read_committed readers of its
            # partitions wait that long (plus the broker's abort sweep). A restart under the same id fences it
            # at once.
            producer_extra["transaction.timeout.ms"] = int(max(10_000, 20 * options.transaction_ms))
            consumer_extra.update({"enable.auto.commit": False, "isolation.level": "read_committed"})
        if options.intake_kbytes:
            consumer_extra.update(INTAKE_CONSUMER_CONFIG)
        # Sends chained from acknowledgements must never block inside a callback: room for every output of every
        # input in flight.
        self.outbox = Outbox(settings, max_inflight=max(1000, options.max_inflight * 4), **producer_extra)
        self.consumer = Consumer(consumer_config(settings, options.group_id, **consumer_extra))
        self.intake = OldestFirstIntake(self.consumer, options.intake_kbytes * 1024) if options.intake_kbytes else None
        self._owned: set[int] = set()
        self._txn: _Transaction | None = None
        if options.exactly_once:
            self.outbox.producer.init_transactions(30)
            self._txn = _Transaction(self)

    # --- the loop ------------------------------------------------------------------------------------------------
    def run(self, on_started: Callable[[], None] | None = None) -> int:
        self.consumer.subscribe(self.options.topics, on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_lost)
        if on_started is not None:
            on_started()
        try:
            while not self.stopping.is_set():
                while self._inflight() >= self.options.max_inflight and not self.stopping.is_set():
                    if self._txn is not None:  # a full window is committed now instead of waiting for its time
                        self._txn.commit()
                        continue
                    self.outbox.poll(0.05)  # backpressure: wait for acks before taking more
                inbound = self._poll_batch()
                self.outbox.poll(0)
                if inbound:
                    metrics.QUEUE_DEPTH.labels("inflight").set(self._inflight() + len(inbound))
                    emissions = self.handler.process(inbound)
                    if self._txn is not None:
                        self._txn.add(emissions)
                    else:
                        for emission in emissions:
                            self.offsets.add(emission.inbound.topic, emission.inbound.partition,
                                             emission.inbound.offset)
                            self._send_chain(emission, list(emission.outputs))
                    self.outbox.poll(0)
                if self._txn is not None:
                    self._txn.maybe_commit()
        finally:
            self._drain()
        return 1 if self.fatal else 0

    def _inflight(self) -> int:
        return self._txn.pending() if self._txn is not None else self.offsets.inflight()

    def _poll_batch(self) -> list[Inbound]:
        # Acknowledgements are served only when the producer is polled: while outputs are in flight, wait for
        # input in short slices so an ack is seen within ~2 ms, else block longer.
        timeout = 0.002 if self._inflight() else 0.2
        if self.intake is not None:
            messages = self.intake.take(timeout, self.options.batch_max)
        else:
            first = self.consumer.poll(timeout)
            if first is None:
                return []
            messages = [first]
            if self.options.batch_max > 1:  # take whatever else is already waiting, never wait for more
                messages += self.consumer.consume(self.options.batch_max - 1, timeout=0)
            messages = [m for m in messages if usable(m)]  # the intake leaves consumer errors out itself
        received = now_us()
        return [Inbound(m.key(), m.value(), m.topic() or "", m.partition() or 0, m.offset() or 0, received)
                for m in messages]

    # --- at least once: chained sends, offsets after the last ack ----------------------------------------------
    def _send_chain(self, emission: Emission, outputs: list[Output]) -> None:
        """Send outputs in order, each after the previous one's ack. At least once, the input is finished (its
        offset may move) after the last; exactly once, the transaction's commit carries the offset instead."""
        if not outputs:
            if self._txn is None:
                self._finish(emission.inbound)
            return
        output, rest = outputs[0], outputs[1:]

        def done(delivery: Delivery) -> None:
            if delivery.ok:
                if output.on_ack is not None:
                    output.on_ack()
                return self._send_chain(emission, rest)
            if self._txn is not None:  # the window is aborted and redone; a refused output is replaced then
                return self._txn.failed(emission, output, delivery)
            if delivery.fate is Fate.REFUSED and not output.last_resort:
                return self._send_chain(emission, self._replacement(emission, output, delivery.error))
            self._stop(f"delivery of {output.what} failed: {delivery.error}")

        value = output.value() if callable(output.value) else output.value
        self.outbox.send(output.topic, output.key, value, done)

    def _replacement(self, emission: Emission, output: Output, error: str) -> list[Output]:
        metrics.OUTPUTS_REFUSED.labels(output.what).inc()
        log.error("output refused by Kafka", extra={"what": output.what, "error": error,
                                                    "partition": emission.inbound.partition,
                                                    "offset": emission.inbound.offset})
        return self.handler.refused(emission, output, error)

    def _finish(self, inbound: Inbound) -> None:
        next_offset = self.offsets.finish(inbound.topic, inbound.partition, inbound.offset)
        if next_offset is not None:
            try:
                self.consumer.store_offsets(offsets=[TopicPartition(inbound.topic, inbound.partition, next_offset)])
            except KafkaException as exc:  # revoked meanwhile: the next owner redoes it (at least once)
                log.info("offset not stored", extra={"error": str(exc)})

    def _stop(self, reason: str) -> None:
        # The broker is unreachable or the producer broke: stop without committing past the input; another
        # instance redoes it (at least once).
        self.fatal = reason
        log.error("stopping", extra={"reason": reason})
        self.stopping.set()

    def _commit(self) -> None:
        try:
            self.consumer.commit(asynchronous=False)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError._NO_OFFSET:
                log.warning("commit failed", extra={"error": str(exc)})

    # --- rebalances --------------------------------------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("partitions assigned", extra={"partitions": [p.partition for p in partitions]})
        if self.intake is not None:
            self.intake.assigned((p.topic, p.partition) for p in partitions)
        self._owned |= {p.partition for p in partitions}
        self.details["partitions"] = sorted(self._owned)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Finish what we hold for these partitions so the next owner starts after it, not before.
        if self._txn is not None:
            self._txn.commit()
        else:
            self.outbox.flush(30)
            self._commit()
        self._forget(partitions)
        log.info("partitions revoked", extra={"partitions": [p.partition for p in partitions]})

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self._txn is not None:
            self._txn.abort("partitions lost")
        self._forget(partitions)
        log.warning("partitions lost", extra={"partitions": [p.partition for p in partitions]})

    def _forget(self, partitions: list[TopicPartition]) -> None:
        """Partitions no longer ours: what was buffered or tracked for them is the next owner's to read."""
        for p in partitions:
            self.offsets.forget(p.topic, p.partition)
        if self.intake is not None:
            self.intake.forget((p.topic, p.partition) for p in partitions)
        self._owned -= {p.partition for p in partitions}
        self.details["partitions"] = sorted(self._owned)

    def _drain(self) -> None:
        if self._txn is not None:
            self._txn.commit()
        remaining = self.outbox.close(30)
        if remaining:
            log.error("messages still unacknowledged at shutdown; they will be redone", extra={"n": remaining})
        if self._txn is None:
            self._commit()
        self.consumer.close()  # leaves the group now, so partitions move without waiting for a timeout


class _Transaction:
    """Exactly once: one transaction per window holds the window's outputs and its inputs' offsets."""

    def __init__(self, loop: ConsumeProcessProduce) -> None:
        self.loop = loop
        self.open = False
        self.opened_at = 0.0
        self.start: dict[tuple[str, int], int] = {}     # first offset of the window per partition (rewind point)
        self.position: dict[tuple[str, int], int] = {}  # next offset after the window per partition
        self.sent = 0  # inputs in the open window
        self.broken = ""  # an output failed for the broker's sake: the window is redone
        self.refused: list[tuple[Emission, Output, str]] = []
        # Outputs to use instead of the handler's when an aborted window is redone (Kafka refused them once).
        self.replace: dict[tuple[str, int, int], list[Output]] = {}

    def pending(self) -> int:
        return self.sent

    def add(self, emissions: list[Emission]) -> None:
        loop = self.loop
        producer = loop.outbox.producer
        if not self.open:
            producer.begin_transaction()
            self.open, self.opened_at = True, time.monotonic()
        for emission in emissions:
            inbound = emission.inbound
            key = (inbound.topic, inbound.partition)
            self.start.setdefault(key, inbound.offset)
            self.position[key] = inbound.offset + 1
            self.sent += 1
            loop._send_chain(emission, self.replace.pop((inbound.topic, inbound.partition, inbound.offset),
                                                        emission.outputs))

    def failed(self, emission: Emission, output: Output, delivery: Delivery) -> None:
        if delivery.fate is Fate.REFUSED and not output.last_resort:
            self.refused.append((emission, output, delivery.error))
        else:
            self.broken = delivery.error

    def maybe_commit(self) -> None:
        if self.open and (time.monotonic() - self.opened_at) * 1e3 >= self.loop.options.transaction_ms:
            self.commit()

    def commit(self) -> None:
        if not self.open:
            return
        loop = self.loop
        producer = loop.outbox.producer
        producer.flush(60)  # every output's fate known: one Kafka refused means the window is redone without it
        if self.refused or self.broken:
            return self.abort(self.broken or f"{len(self.refused)} output(s) refused")
        try:
            offsets = [TopicPartition(t, p, off) for (t, p), off in self.position.items()]
            producer.send_offsets_to_transaction(offsets, loop.consumer.consumer_group_metadata(), 30)
            producer.commit_transaction(60)
            metrics.TRANSACTIONS.labels("committed").inc()
            self._reset()
        except KafkaException as exc:
            err = exc.args[0]
            if err.txn_requires_abort():
                self.abort(str(err))
            else:  # fenced or fatal: another instance owns these partitions now, or the producer is unusable
                loop._stop(f"transaction failed: {err}")
                self._reset()

    def abort(self, reason: str) -> None:
        """Abort the window and re-read it from its start; outputs Kafka refused are replaced when redone."""
        if not self.open:
            return
        loop = self.loop
        metrics.TRANSACTIONS.labels("aborted").inc()
        log.warning("transaction aborted; re-reading its inputs", extra={"reason": reason})
        try:
            loop.outbox.producer.abort_transaction(60)
        except KafkaException as exc:
            loop._stop(f"transaction abort failed: {exc}")
        for emission, output, error in self.refused:
            inbound = emission.inbound
            replacement = loop._replacement(emission, output, error)
            index = emission.outputs.index(output) if output in emission.outputs else len(emission.outputs)
            self.replace[(inbound.topic, inbound.partition, inbound.offset)] = emission.outputs[:index] + replacement
        for (topic, partition), offset in self.start.items():
            if partition in loop._owned:
                try:
                    loop.consumer.seek(TopicPartition(topic, partition, offset))
                except KafkaException as exc:
                    log.warning("rewind failed", extra={"partition": partition, "error": str(exc)})
        if loop.intake is not None:  # buffered messages after the rewind point are read again from it
            loop.intake.forget(self.start)
        self._reset()

    def _reset(self) -> None:
        self.open = False
        self.start, self.position, self.refused, self.sent, self.broken = {}, {}, [], 0, ""
