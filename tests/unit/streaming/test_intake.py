"""The worker's intake consumer settings (imask.streaming.intake); its behaviour on a real broker is in
tests/integration/test_worker_intake.py."""

from __future__ import annotations

from imask.ops.settings import KafkaSettings
from imask.streaming.intake import INTAKE_CONSUMER_CONFIG
from imask.streaming.kafka import consumer_config


def test_the_intake_consumer_is_fetched_again_soon_after_a_resume() -> None:
    """librdkafka waits fetch.queue.backoff.ms (1 s by default) before fetching a partition whose queue it filled;
    with pauses and resumes that left a fast worker idle half the time (`python -m load.intake_bench` measures it:
    empty takes with these settings and with the default). The long poll is short for the same reason."""
    config = consumer_config(KafkaSettings(), "g", **INTAKE_CONSUMER_CONFIG)
    assert config["fetch.queue.backoff.ms"] <= 10 and config["fetch.wait.max.ms"] <= 50
