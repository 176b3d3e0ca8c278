"""The worker's intake on a real broker: a backlog of large and small frames is served about oldest first."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Consumer, Message, Producer, TopicPartition

from imask.ops.settings import KafkaSettings
from imask.streaming.intake import INTAKE_CONSUMER_CONFIG, OldestFirstIntake
from imask.streaming.kafka import consumer_config, producer_config

pytestmark = pytest.mark.kafka

BIG, SMALL = 60, 300  # a 1080p-like camera beside a 480p-like one, over the same 1.2 s of capture


def _backlog(settings: KafkaSettings) -> None:
    """Partition 0 takes 300 KB frames, partition 1 3 KB frames, both stamped across the same span."""
    producer = Producer(producer_config(settings))
    t0 = int(time.time() * 1000) - 10_000
    for i in range(BIG):
        producer.produce(settings.topic_raw, b"B" * 300_000, key=b"big", partition=0, timestamp=t0 + i * 20)
        producer.poll(0)
    for i in range(SMALL):
        producer.produce(settings.topic_raw, b"s" * 3_000, key=b"small", partition=1, timestamp=t0 + i * 4)
        producer.poll(0)
    assert producer.flush(30) == 0


def _consumer(settings: KafkaSettings) -> Consumer:
    """A fresh group on the raw topic, configured as the worker's loop configures it when the intake is on."""
    consumer = Consumer(consumer_config(settings, f"intake-{uuid.uuid4().hex[:6]}", **INTAKE_CONSUMER_CONFIG))
    consumer.subscribe([settings.topic_raw])
    return consumer


def _serve(settings: KafkaSettings, budget: int) -> tuple[list[Message], int]:
    """Everything served one message at a time, as a worker with batch_max 1 takes it (2 ms of work each); also
    the most partitions seen paused at once."""
    consumer = _consumer(settings)
    served: list[Message] = []
    most_paused = 0
    try:
        if budget:
            intake = OldestFirstIntake(consumer, budget)
        deadline = time.monotonic() + 60
        while len(served) < BIG + SMALL and time.monotonic() < deadline:
            if budget:
                batch = intake.take(0.2, 1)
                most_paused = max(most_paused, len(intake.paused))
            else:
                message = consumer.poll(0.2)
                batch = [message] if message is not None and message.error() is None else []
            served += batch
            if batch:
                time.sleep(0.002)
        if budget:
            assert not intake.paused and intake.buffered == 0, "drained partitions must be resumed"
    finally:
        consumer.close()
    return served, most_paused


def _worst_displacement(served: list[Message]) -> int:
    """How far (in messages) any message is served from its place in timestamp order."""
    by_time = sorted(range(len(served)), key=lambda i: served[i].timestamp()[1])
    rank = {i: r for r, i in enumerate(by_time)}
    return max(abs(i - rank[i]) for i in range(len(served)))


def test_backlog_is_served_about_oldest_first_without_loss_or_reordering(kafka_settings: KafkaSettings) -> None:
    _backlog(kafka_settings)
    plain, _ = _serve(kafka_settings, budget=0)
    # 1.2 MB: the large partition is paused at 8 of its frames (MIN_PAUSE_FRAMES), resumed at 4.
    fair, most_paused = _serve(kafka_settings, budget=1_200_000)
    for served in (plain, fair):
        for partition, count in ((0, BIG), (1, SMALL)):
            offsets = [m.offset() for m in served if m.partition() == partition]
            assert offsets == list(range(count)), f"partition {partition}: lost, repeated or reordered"
    # Kafka's fetch order shares by bytes: the small partition's whole backlog goes before most large frames.
    plain_worst, fair_worst = _worst_displacement(plain), _worst_displacement(fair)
    assert plain_worst > 150, plain_worst
    # Oldest first, with a partition paused while 8 of its large messages wait: within a few fetches of exact order.
    assert most_paused >= 1
    assert fair_worst <= 40, fair_worst


def test_rewind_of_a_paused_partition_reads_again_from_the_rewind_point(kafka_settings: KafkaSettings) -> None:
    """An aborted transaction seeks its partitions back and the loop forgets what the intake buffered: the paused
    partition must come back from the rewind point, not from after what had been buffered."""
    _backlog(kafka_settings)
    consumer = _consumer(kafka_settings)
    intake = OldestFirstIntake(consumer, 1_200_000)
    try:
        big_served = 0
        deadline = time.monotonic() + 30
        while (kafka_settings.topic_raw, 0) not in intake.paused and time.monotonic() < deadline:
            big_served += sum(m.partition() == 0 for m in intake.take(0.2, 1))
            time.sleep(0.002)  # a frame's work: the fetcher gets ahead of it
        assert (kafka_settings.topic_raw, 0) in intake.paused, "the large partition should be paused by now"
        assert intake.buffered > 0
        rewind_to = max(0, big_served - 1)  # as a transaction's first offset of its window would be
        consumer.seek(TopicPartition(kafka_settings.topic_raw, 0, rewind_to))
        intake.forget([(kafka_settings.topic_raw, 0)])
        assert (kafka_settings.topic_raw, 0) not in intake.paused
        again: list[int] = []
        while len(again) < BIG - rewind_to and time.monotonic() < deadline + 30:
            again += [m.offset() for m in intake.take(0.2, 8) if m.partition() == 0]
    finally:
        consumer.close()
    assert again == list(range(rewind_to, BIG)), again[:10]
