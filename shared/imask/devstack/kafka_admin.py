"""Operations on the stack's running Kafka: the frame topics, client quotas."""

from __future__ import annotations

import logging
import os
import subprocess

from imask.devstack.kafka import java
from imask.devstack.settings import StackSettings
from imask.devstack.supervisor import StackError

logger = logging.getLogger(__name__)


def create_topics(settings: StackSettings) -> None:
    """The frame topics with the partition counts and retention from IMASK_* config (idempotent); replicated 3
    times on a cluster of three or more unless IMASK_REPLICATION_FACTOR says otherwise."""
    from imask.ops.settings import KafkaSettings, load_settings
    from imask.streaming.kafka import ensure_topics, frame_topics

    rf = None if "IMASK_REPLICATION_FACTOR" in os.environ else settings.replication_factor
    kafka = load_settings(KafkaSettings, bootstrap_servers=settings.bootstrap_servers, replication_factor=rf)
    ensure_topics(kafka)
    logger.info("topics ready: %s", ", ".join(f"{t.name} ({t.partitions} partitions)" for t in frame_topics(kafka)))


def set_client_quota(client_id: str, producer_byte_rate: int | None, settings: StackSettings | None = None) -> None:
    """Throttle (or, with None, stop throttling) a Kafka client's produce rate: a real slow downstream for tests
    and load experiments. Client quotas have no librdkafka admin API, so Kafka's own ConfigCommand runs."""
    s = settings or StackSettings()
    change = (["--add-config", f"producer_byte_rate={producer_byte_rate}"] if producer_byte_rate
              else ["--delete-config", "producer_byte_rate"])
    cmd = [java(), "-cp", str(s.kafka_libs_dir / "*"), "kafka.admin.ConfigCommand", "--bootstrap-server",
           s.bootstrap_servers, "--alter", *change, "--entity-type", "clients", "--entity-name", client_id]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise StackError(f"setting the quota of {client_id} failed: {done.stderr.strip()[-500:]}")
