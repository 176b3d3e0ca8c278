"""`imask run`'s own consumer groups: the run masks and records its own frames, whatever waits in the topics.

frames.raw (and frames.masked) may hold a backlog that earlier producers left for the regular consumer groups
(imask-workers, imask-recorder): a replay with no worker running, say. Read from those groups' committed offsets, a
run would first mask all of it, and its own cameras would wait behind it. So the run's workers (and recorder) join
a group of the run's own whose offsets are set, before its producers start, to each partition's end: they read
the run's frames and nothing older.

Nothing is lost: the regular group's offsets are not touched while it has a backlog, so the backlog stays where it
was, and the summary says how large it was. Where the regular group had nothing waiting on a partition at start
(and no one moved it meanwhile), the run hands its own position over at the end, so the regular consumers do not
mask the run's frames a second time; where it had a backlog, the run's frames stay behind it, and the summary
counts them. The run's group is deleted at the end.
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from imask.ops.settings import KafkaSettings
from imask.streaming.kafka import common_config
from imask.streaming.lag import PartitionLag, group_lag

log = logging.getLogger("imask.run")


@dataclass
class RunGroup:
    topic: str
    regular: str                   # the regular consumers' group (IMASK_WORKER_GROUP_ID / IMASK_RECORDER_GROUP_ID)
    group: str                     # the run's own
    start: dict[int, int]          # partition -> offset the run's group starts at (its end before the run)
    backlog: list[PartitionLag]    # the regular group's lag per partition at start
    handed_over: list[int] = field(default_factory=list)  # partitions whose regular offset moved past the run's frames
    behind_backlog: int = 0        # the run's messages left behind a backlog for the regular group
    error: str = ""

    @property
    def waiting(self) -> int:
        return sum(p.lag for p in self.backlog)

    def as_dict(self) -> dict[str, object]:
        return {"topic": self.topic, "regular_group": self.regular, "run_group": self.group,
                "backlog_at_start": self.waiting,
                "backlog_partitions": {str(p.partition): p.lag for p in self.backlog if p.lag},
                "backlog_oldest_age_s": max((p.oldest_age_s for p in self.backlog), default=0.0),
                "handed_over_partitions": self.handed_over, "run_messages_behind_backlog": self.behind_backlog,
                **({"error": self.error} if self.error else {})}


def run_group_id(regular: str, run_id: str) -> str:
    return f"{regular}-{run_id}-{uuid.uuid4().hex[:6]}"


def _commit(settings: KafkaSettings, group: str, offsets: list[TopicPartition], timeout: float = 10.0) -> None:
    """Commit offsets for a group without joining it; the broker refuses it (UNKNOWN_MEMBER_ID) while the group has
    members, so a running consumer's position is never moved from outside."""
    consumer = Consumer({**common_config(settings), "group.id": group, "enable.auto.commit": False})
    try:
        for tp in consumer.commit(offsets=offsets, asynchronous=False) or []:
            if tp.error is not None:
                raise KafkaException(tp.error)
    finally:
        consumer.close()


def start(settings: KafkaSettings, topic: str, regular: str, run_id: str) -> RunGroup:
    """The regular group's backlog on `topic`, and a group of the run's own positioned at the topic's end."""
    backlog = group_lag(settings, regular, topic)
    group = run_group_id(regular, run_id)
    begin = {p.partition: p.end for p in backlog}
    _commit(settings, group, [TopicPartition(topic, p, o) for p, o in begin.items()])
    if any(p.lag for p in backlog):
        log.warning("%s: %d messages wait for group %s (oldest %.0f s); this run reads only its own, from the "
                    "end, in group %s", topic, sum(p.lag for p in backlog), regular,
                    max(p.oldest_age_s for p in backlog), group)
    return RunGroup(topic, regular, group, begin, backlog)


def finish(settings: KafkaSettings, run: RunGroup) -> None:
    """After the run's consumers stopped: hand the run's position to the regular group where that skips only the
    run's own messages, count those left behind a backlog, and delete the run's group."""
    try:
        now = {p.partition: p for p in group_lag(settings, run.group, run.topic)}
        regular_now = {p.partition: p for p in group_lag(settings, run.regular, run.topic)}
        moves = []
        for before in run.backlog:
            done = now.get(before.partition)
            if done is None or done.committed < 0:
                continue
            consumed = max(0, done.committed - run.start.get(before.partition, done.committed))
            later = regular_now.get(before.partition)
            untouched = later is not None and later.committed == before.committed
            if before.lag == 0 and untouched and consumed:
                moves.append(TopicPartition(run.topic, before.partition, done.committed))
            elif before.lag:
                run.behind_backlog += consumed
        if moves:
            try:
                _commit(settings, run.regular, moves)
                run.handed_over = sorted(tp.partition for tp in moves)
            except KafkaException as exc:  # the regular group has members now: its consumers read on their own
                run.error = f"position not handed to {run.regular}: {exc}"
                run.behind_backlog += sum(tp.offset - run.start[tp.partition] for tp in moves)
    except KafkaException as exc:
        run.error = f"{run.topic}: {exc}"
    delete_group(settings, run.group)


def delete_group(settings: KafkaSettings, group: str, timeout: float = 10.0) -> None:
    admin = AdminClient(common_config(settings))
    try:
        admin.delete_consumer_groups([group], request_timeout=timeout)[group].result(timeout)
    except Exception as exc:  # a leftover empty group is harmless: say so and go on
        log.warning("could not delete the run's consumer group %s: %s", group, exc)


def regular_groups() -> dict[str, str]:
    """The regular groups the run's workers and recorder stand in for, as their services would name them."""
    return {"worker": os.environ.get("IMASK_WORKER_GROUP_ID", "imask-workers"),
            "recorder": os.environ.get("IMASK_RECORDER_GROUP_ID", "imask-recorder")}
