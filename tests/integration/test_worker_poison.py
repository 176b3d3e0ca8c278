"""Poison input against the real broker: outputs Kafka refuses and markers carrying pixels become drop records,
the worker goes on, every frame is accounted for, and operators' topic settings survive a worker start."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
)

from conftest import textured
from imask.devstack.procs import stop_all
from imask.frames.envelope import end_of_stream
from imask.media import encode_jpeg
from imask.ops.settings import KafkaSettings
from imask.streaming.kafka import common_config
from imask.v1 import frames_pb2 as pb
from streams import collect, moving_face_frames, publish, start_worker

pytestmark = pytest.mark.kafka

MASKED_TOPIC_LIMIT = 60_000  # the face frames' masked JPEGs are ~32 kB, the grainy frames' ~70 kB


def _topic_config(admin: AdminClient, topic: str, key: str) -> str:
    resource = ConfigResource("topic", topic)
    return str(admin.describe_configs([resource])[resource].result(30)[key].value)


def test_refused_outputs_and_pixel_markers_are_dead_lettered(kafka_settings: KafkaSettings,
                                                             tmp_path: Path) -> None:
    admin = AdminClient(common_config(kafka_settings))
    change = ConfigResource("topic", kafka_settings.topic_masked, incremental_configs=[
        ConfigEntry("max.message.bytes", str(MASKED_TOPIC_LIMIT), incremental_operation=AlterConfigOpType.SET)])
    admin.incremental_alter_configs([change])[change].result(30)

    # The worker believes 8 MB messages are fine (its default) but batches no more than the topic takes, so the
    # broker refuses exactly the large frames, each alone.
    worker = start_worker(tmp_path, "w-poison", f"g-{uuid.uuid4().hex[:6]}",
                          IMASK_KAFKA_EXTRA='{"batch.size": "50000"}')
    # An operator's topic setting survives the worker's start (it used to be reset to the service default).
    assert _topic_config(admin, kafka_settings.topic_masked, "max.message.bytes") == str(MASKED_TOPIC_LIMIT)

    faces = moving_face_frames(10)
    noise = [textured(360, 480, seed=i) for i in range(6)]
    marker = end_of_stream("cam-ok", 4)
    marker.data = encode_jpeg(faces[4], 85)
    publish(kafka_settings, {"cam-ok": faces, "cam-noise": noise}, {("cam-ok", 4): marker.SerializeToString()})
    got = collect(kafka_settings, {"cam-ok", "cam-noise"})

    assert worker.proc.poll() is None, "a refused output stopped the worker"
    summary = got.ledger.summary()
    assert summary["unaccounted"] == 0 and summary["frames_in"] == 16, summary
    reasons = {(d.camera_id, d.seq): (pb.DropReason.Name(d.reason), d.detail) for d in got.drops}
    for seq in range(6):
        reason, detail = reasons[("cam-noise", seq)]
        assert reason == "DROP_REASON_INTERNAL_ERROR" and "refused by Kafka" in detail
    assert reasons[("cam-ok", 4)][0] == "DROP_REASON_INVALID_FIELDS"
    # Accounting reads frames.meta (a masked frame's meta follows its acknowledged delivery).
    assert set(got.meta_order["cam-ok"]) == set(range(10)) - {4}, reasons
    assert all(not m.frame.data for m in got.masked.values() if m.frame.end_of_stream)
    assert worker.metric("imask_outputs_refused_total", 'output="masked frame"') == 6
    assert worker.metric("imask_frames_unmasked_total") == 0
    assert stop_all([worker]) == {"w-poison": 0}
