"""Tests for imask.devstack.stack.

The ``kafka``/``redis``/``mlflow`` tests talk to the real local stack and assume it is already up
(``python -m imask.devstack.stack up``); deselect them with ``-m "not kafka"`` where there is none.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from imask.devstack import stack
from imask.devstack.stack import StackSettings


@pytest.fixture(scope="module")
def running_stack() -> Iterator[StackSettings]:
    settings = StackSettings()
    state = stack.status(settings)
    missing = [name for name in ("kafka", "redis") if not state[name]["answering"]]
    if missing:
        pytest.fail(f"local stack not answering ({', '.join(missing)}); run `python -m imask.devstack.stack up` first")
    yield settings


@pytest.mark.kafka
@pytest.mark.redis
@pytest.mark.mlflow
def test_status_reports_both_answering(running_stack: StackSettings) -> None:
    state = stack.status(running_stack)
    assert state["kafka"]["running"] is True
    assert state["kafka"]["answering"] is True
    assert state["kafka"]["port"] == running_stack.kafka_port
    assert isinstance(state["kafka"]["pid"], int)
    assert state["mlflow"]["answering"] is True and isinstance(state["mlflow"]["pid"], int)
    assert state["redis"]["running"] is True
    assert state["redis"]["answering"] is True
    assert state["redis"]["port"] == running_stack.redis_port


@pytest.mark.kafka
@pytest.mark.redis
def test_up_again_is_a_noop(running_stack: StackSettings) -> None:
    before = stack.status(running_stack)
    stack.up(running_stack)
    after = stack.status(running_stack)
    assert after["kafka"]["pid"] == before["kafka"]["pid"]  # nothing restarted (its speed is not a test)
    assert after["redis"]["pid"] == before["redis"]["pid"]


@pytest.mark.kafka
def test_broker_accepts_multi_megabyte_messages(running_stack: StackSettings) -> None:
    """message.max.bytes is raised to 8 MiB so camera frames fit in one record."""
    from confluent_kafka import Consumer, KafkaException, Producer
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic  # re-exported by .admin, but not for mypy --strict

    topic = f"test-stack-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": running_stack.bootstrap_servers})
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(10)
    try:
        payload = bytes(range(256)) * (5 * 4096)  # 5 MiB
        producer = Producer(
            {"bootstrap.servers": running_stack.bootstrap_servers, "message.max.bytes": 8388608}
        )
        producer.produce(topic, key=b"frame", value=payload)
        assert producer.flush(10) == 0
        consumer = Consumer(
            {
                "bootstrap.servers": running_stack.bootstrap_servers,
                "group.id": topic,
                "auto.offset.reset": "earliest",
                "fetch.message.max.bytes": 8388608,
            }
        )
        try:
            consumer.subscribe([topic])
            deadline = time.monotonic() + 30
            msg = None
            while msg is None and time.monotonic() < deadline:
                msg = consumer.poll(1.0)
            assert msg is not None, "no message consumed within 30 s"
            if msg.error():
                raise KafkaException(msg.error())
            assert msg.key() == b"frame"
            assert msg.value() == payload
        finally:
            consumer.close()
    finally:
        admin.delete_topics([topic])[topic].result(10)


def _shared_libs() -> Path | None:
    """The default stack's jars, so a throwaway stack does not download them again."""
    libs = StackSettings().kafka_libs_dir
    return libs if libs.is_dir() and any(libs.glob("kafka_2.13-*.jar")) else None


@pytest.mark.kafka  # its own brokers, but Kafka all the same: not for `make unit`
@pytest.mark.timeout(180)
def test_three_broker_cluster_keeps_acks_all_through_a_broker_kill(tmp_path: Path) -> None:
    """Its own cluster (3 KRaft nodes in one quorum, on free ports, state in tmp_path): topics get replication
    factor 3 and min.insync.replicas 2, and acks=all producing goes on when one broker is SIGKILLed."""
    import shutil

    from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, ConfigResource

    from imask.ops.settings import KafkaSettings
    from imask.streaming.kafka import TopicSpec, ensure_topics

    if shutil.which("java") is None:
        pytest.skip("no java on PATH: Kafka cannot run here")
    settings = StackSettings.on_free_ports(tmp_path / "stack", brokers=3, kafka_libs=_shared_libs(),
                                           kafka_heap="384m")
    assert len(set(settings.broker_ports)) == 3 and settings.kafka_port != StackSettings().kafka_port
    topic = "cluster-test"
    try:
        stack.up(settings)
        state = stack.status(settings)
        assert [b["answering"] for b in state["kafka"]["brokers"]] == [True, True, True]  # type: ignore[index]
        kafka = KafkaSettings(bootstrap_servers=settings.bootstrap_servers, replication_factor=3)
        ensure_topics(kafka, [TopicSpec(topic, 4)])  # the services' own path, with IMASK_REPLICATION_FACTOR=3
        admin = AdminClient({"bootstrap.servers": settings.bootstrap_servers})
        # A broker's metadata can lag the controller's for a moment after creation: wait until it lists them.
        deadline = time.monotonic() + 30
        partitions = admin.list_topics(topic, timeout=10).topics[topic].partitions
        while len(partitions) < 4 and time.monotonic() < deadline:
            time.sleep(0.2)
            partitions = admin.list_topics(topic, timeout=10).topics[topic].partitions
        assert len(partitions) == 4 and {len(p.replicas) for p in partitions.values()} == {3}
        resource = ConfigResource("topic", topic)
        config = admin.describe_configs([resource])[resource].result(10)
        assert config["min.insync.replicas"].value == "2"  # the brokers' default from three brokers on

        failed: list[KafkaError] = []

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                failed.append(err)

        producer = Producer({"bootstrap.servers": settings.bootstrap_servers, "acks": "all",
                             "enable.idempotence": True, "message.timeout.ms": 60000, "log_level": 0})
        for i in range(50):
            producer.produce(topic, key=f"cam-{i % 8}".encode(), value=f"{i}".encode(), on_delivery=delivered)
        assert producer.flush(30) == 0 and not failed
        victim = partitions[0].leader - 1  # the leader of partition 0: its partitions must move
        stack.kill_broker(settings, victim)
        brokers = stack.status(settings)["kafka"]["brokers"]
        assert [b["running"] for b in brokers] == [i != victim for i in range(3)]  # type: ignore[index]
        for i in range(50, 150):
            producer.produce(topic, key=f"cam-{i % 8}".encode(), value=f"{i}".encode(), on_delivery=delivered)
        assert producer.flush(60) == 0 and not failed, failed  # acks=all with 2 of 3 in sync still succeeds
        consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": "cluster-test",
                             "enable.auto.commit": False, "log_level": 0})
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        seen: set[int] = set()
        deadline = time.monotonic() + 30
        while len(seen) < 150 and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                seen.add(int(msg.value() or b"-1"))
        consumer.close()
        assert seen == set(range(150))  # nothing acknowledged was lost with the broker
        stack.start_broker(settings, victim)
        assert stack.status(settings)["kafka"]["answering"] is True
    finally:
        stack.down(settings, wipe=True)
    assert stack.status(settings)["kafka"]["running"] is False
