"""Tests for imask.devstack.stack.

The ``kafka``/``redis`` tests talk to the real local stack and assume it is already up
(``python -m imask.devstack.stack up``); deselect them with ``-m "not kafka"`` where there is none.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from imask.devstack import stack
from imask.devstack.stack import StackSettings


@pytest.fixture(scope="module")
def running_stack() -> Iterator[StackSettings]:
    settings = StackSettings()
    state = stack.status(settings)
    missing = [name for name, info in state.items() if not info["answering"]]
    if missing:
        pytest.fail(f"local stack not answering ({', '.join(missing)}); run `python -m imask.devstack.stack up` first")
    yield settings


def test_settings_defaults_and_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("IMASK_STACK_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("IMASK_STACK_KAFKA_PORT", "19092")
    monkeypatch.setenv("IMASK_STACK_REDIS_PORT", "16390")
    settings = StackSettings()
    assert settings.state_dir == tmp_path
    assert settings.bootstrap_servers == "127.0.0.1:19092"
    assert settings.redis_url == "redis://127.0.0.1:16390/0"
    assert settings.kafka_controller_port == 9093
    assert StackSettings.model_fields["state_dir"].default_factory is not None


def test_settings_reject_shared_ports() -> None:
    with pytest.raises(ValidationError):
        StackSettings(kafka_port=9093, kafka_controller_port=9093)


def test_status_and_down_on_empty_state_dir(tmp_path: Path) -> None:
    settings = StackSettings(
        state_dir=tmp_path / "none", kafka_port=19192, kafka_controller_port=19193, redis_port=16490
    )
    stack.down(settings)  # idempotent: nothing to stop
    state = stack.status(settings)
    assert set(state) == {"kafka", "redis"}
    for info in state.values():
        assert info["running"] is False
        assert info["answering"] is False
        assert info["pid"] is None


@pytest.mark.kafka
@pytest.mark.redis
def test_status_reports_both_answering(running_stack: StackSettings) -> None:
    state = stack.status(running_stack)
    assert state["kafka"]["running"] is True
    assert state["kafka"]["answering"] is True
    assert state["kafka"]["port"] == running_stack.kafka_port
    assert isinstance(state["kafka"]["pid"], int)
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
