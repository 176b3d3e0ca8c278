"""How often the worker's intake leaves a fast worker waiting on an empty take while frames wait in Kafka.

Two partitions of 150 KB frames and a worker at 5 ms a frame (a fast one) under the worker's own intake budget:
partitions are paused and resumed all along. Each take that comes back empty (0.2 s) while frames remain is time
the worker sat idle. Run with the intake's consumer settings and with librdkafka's default queue backoff (1 s),
in the same run, so the ratio is this machine's. Timings belong here, not in tests: a loaded CI machine can
delay a fetch without anything being wrong.

    .venv/bin/python -m load.intake_bench [--frames 500]     # out/bench/intake.json
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer

from imask.ops.settings import KafkaSettings, WorkerSettings
from imask.streaming.intake import INTAKE_CONSUMER_CONFIG, OldestFirstIntake
from imask.streaming.kafka import TopicSpec, consumer_config, delete_topics, ensure_topics, producer_config

OUT = Path("out/bench")
FRAME_BYTES = 150_000
WORK_S = 0.005
TAKE_TIMEOUT_S = 0.2


def run(settings: KafkaSettings, frames: int, consumer_overrides: dict[str, Any]) -> dict[str, Any]:
    producer = Producer(producer_config(settings))
    for _ in range(frames // 2):
        for partition in (0, 1):
            producer.produce(settings.topic_raw, b"f" * FRAME_BYTES, partition=partition)
        producer.poll(0)
    if producer.flush(30) != 0:
        raise RuntimeError("the backlog could not be produced")
    consumer = Consumer(consumer_config(settings, f"intake-bench-{uuid.uuid4().hex[:6]}", **consumer_overrides))
    consumer.subscribe([settings.topic_raw])
    intake = OldestFirstIntake(consumer, WorkerSettings.model_fields["intake_kbytes"].default * 1024)
    served = empty = most_paused = 0
    started = time.monotonic()
    deadline = started + 120
    try:
        while served < frames and time.monotonic() < deadline:
            batch = intake.take(TAKE_TIMEOUT_S, 1)
            most_paused = max(most_paused, len(intake.paused))
            if batch:
                served += 1
                time.sleep(WORK_S)
            elif served:
                empty += 1
    finally:
        consumer.close()
    elapsed = time.monotonic() - started
    return {"served": served, "empty_takes": empty, "idle_s": round(empty * TAKE_TIMEOUT_S, 2),
            "elapsed_s": round(elapsed, 2), "most_paused": most_paused}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=500)
    args = parser.parse_args(argv)
    report: dict[str, Any] = {"frames": args.frames, "frame_bytes": FRAME_BYTES, "work_ms": WORK_S * 1e3}
    default_backoff = {**INTAKE_CONSUMER_CONFIG, "fetch.queue.backoff.ms": 1000}
    for label, overrides in (("intake_config", INTAKE_CONSUMER_CONFIG), ("default_queue_backoff", default_backoff)):
        suffix = uuid.uuid4().hex[:8]
        settings = KafkaSettings(topic_raw=f"bench-intake-{suffix}.raw", partitions=2)
        ensure_topics(settings, [TopicSpec(settings.topic_raw, 2)])
        try:
            report[label] = run(settings, args.frames, overrides)
        finally:
            delete_topics(settings, [settings.topic_raw])
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "intake.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
