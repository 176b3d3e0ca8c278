"""The alerting service's logic as a sink of the library's sink consumer: events in, alerts to Alertmanager out,
offsets committed only as far as every event before them was delivered and no open episode needs them again.

- Each event becomes at most a few alerts (`events.interpret`, `EpisodeBook.apply`). Malformed events are logged,
  counted and passed over (their offsets are done).
- Alerts wait in one queue keyed by fingerprint: a newer state of the same alert replaces the waiting one (a replay
  of "down, then recovered" posts only "recovered"). The queue is posted in batches once the consumer has caught up
  (a poll without a record) or the oldest alert has waited `flush_after_s`.
- Alertmanager unavailable: the batch stays, the next try waits a capped exponential backoff; nothing is dropped
  and no offset moves. Above `max_pending` events waiting the consumer is paused (it stays in its group).
- Alertmanager refusing a batch (4xx): its alerts are posted one by one; one refused alone is dropped and counted.
- Firing alerts are posted again every `resend_s` with endsAt 4 resends ahead, so Alertmanager keeps them firing
  only while this service says so; episodes older than `max_age_s` are resolved by age.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from imask.alerting import metrics
from imask.alerting.client import AlertmanagerClient, Refused, Unavailable
from imask.alerting.episodes import EpisodeBook, Position
from imask.alerting.events import KINDS, Action, Alert, Malformed, decode, interpret
from imask.ops.metrics import zero_series
from imask.streaming.kafka import OffsetTracker
from imask.streaming.loop import Inbound
from imask.streaming.sink import PartitionKey, SinkControl

log = logging.getLogger(__name__)


# imask_alerting_events_total's outcomes besides the actions' own (opened, resolved, oneshot).
NOTHING_TO_RESOLVE = "nothing_to_resolve"  # a resolving event with no open episode
MALFORMED = "malformed"  # counted under kind "-"


def zero_event_series() -> None:
    """imask_alerting_events_total at 0 for every catalogued kind with the outcomes its events have (a condition
    opens and is resolved, a recovery resolves, a fact fires once) and for malformed events, so the event panels
    read 0 before the first event. Kinds outside the catalogue appear when they first come."""
    for kind, spec in KINDS.items():
        if spec.resolves:
            outcomes: tuple[str, ...] = (Action.RESOLVE.value, NOTHING_TO_RESOLVE)
        elif spec.oneshot:
            outcomes = (Action.ONESHOT.value,)
        else:
            outcomes = (Action.OPEN.value, Action.RESOLVE.value, NOTHING_TO_RESOLVE)
        zero_series(metrics.EVENTS, kind=[kind], outcome=outcomes)
    zero_series(metrics.EVENTS, kind=["-"], outcome=[MALFORMED])


@dataclass(frozen=True)
class DeliveryPolicy:
    runbook_base: str = "docs/OPERATIONS.md"
    resend_s: float = 60.0
    oneshot_hold_s: float = 3600.0
    max_age_s: float = 86400.0
    retry_initial_s: float = 0.5
    retry_max_s: float = 30.0
    flush_after_s: float = 0.2
    max_batch: int = 500
    max_pending: int = 10_000


@dataclass
class _Waiting:
    alert: Alert
    positions: list[Position] = field(default_factory=list)
    since: float = 0.0  # monotonic
    event_ts: float | None = None  # for the delivery-time histogram: the event that made this state


class AlertSink:
    def __init__(self, client: AlertmanagerClient, control: SinkControl, policy: DeliveryPolicy,
                 details: dict[str, object] | None = None, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.control = control
        self.policy = policy
        self.details = details if details is not None else {}
        self.clock = clock
        self.monotonic = monotonic
        self.book = EpisodeBook(policy.max_age_s)
        self.waiting: dict[str, _Waiting] = {}
        self.tracker = OffsetTracker()
        self.done_to: dict[PartitionKey, int] = {}  # next offset of each partition's delivered prefix
        self.events_waiting = 0
        self.paused = False
        self.next_try = 0.0
        self.backoff = 0.0
        self.split = False  # post one by one after a refused batch
        self.last_resend = monotonic()
        self._wrote = False
        self.delivered_alerts = 0
        self.retries = 0

    # -- Sink ------------------------------------------------------------------------------------------------

    def write(self, record: Inbound) -> None:
        self._wrote = True
        position = (record.topic, record.partition, record.offset)
        self.tracker.add(*position)
        self.events_waiting += 1
        try:
            event = decode(record.value)
            meaning = interpret(event, self.clock(), self.policy.runbook_base, self.policy.oneshot_hold_s)
        except Malformed as exc:
            metrics.EVENTS.labels("-", MALFORMED).inc()
            log.warning("malformed alert event skipped", extra={"offset": record.offset, "error": str(exc)})
            self._done([position])
            return
        alerts = self.book.apply(meaning, position)
        outcome = meaning.action.value if alerts or meaning.action is not Action.RESOLVE else NOTHING_TO_RESOLVE
        metrics.EVENTS.labels(meaning.kind, outcome).inc()
        if not alerts:
            self._done([position])
        for i, alert in enumerate(alerts):
            # The event's position rides with its last alert: done once every one of them was delivered.
            self._enqueue(alert, [position] if i == len(alerts) - 1 else [], meaning.alert.starts_at)
        metrics.OPEN_EPISODES.set(len(self.book.open))

    def tick(self) -> None:
        now = self.monotonic()
        caught_up, self._wrote = not self._wrote, False
        for alert in self.book.expire(self.clock()):
            log.warning("episode resolved by age", extra={"labels": alert.labels})
            self._enqueue(alert, [], None)
        if now - self.last_resend >= self.policy.resend_s:
            self.last_resend = now
            for alert in self.book.firing():
                if alert.fingerprint not in self.waiting:
                    self._enqueue(alert, [], None)
        if self.waiting and now >= self.next_try:
            oldest = min(w.since for w in self.waiting.values())
            if caught_up or now - oldest >= self.policy.flush_after_s or len(self.waiting) >= self.policy.max_batch:
                self.flush()
        self._pace()
        self._gauges()

    def committable(self) -> dict[PartitionKey, int]:
        held = self.book.holds()
        return {key: min(offset, held.get(key, offset)) for key, offset in self.done_to.items()}

    def finish(self, clean: bool) -> dict[PartitionKey, int]:
        if self.waiting:
            self.flush()  # one last try; what is still waiting is read again after the restart
        return self.committable()

    # -- delivery --------------------------------------------------------------------------------------------

    def flush(self) -> None:
        """Post what waits, in batches; on a failure stop and back off (what was not taken stays)."""
        now = self.monotonic()
        batch_size = 1 if self.split else self.policy.max_batch
        firing_until = self.clock() + 4 * self.policy.resend_s
        while self.waiting:
            batch = list(self.waiting.items())[:batch_size]
            try:
                self.client.post([w.alert.payload(firing_until) for _, w in batch])
            except Unavailable as exc:
                metrics.POSTS.labels("unavailable").inc()
                self.retries += 1
                self.backoff = min(self.policy.retry_max_s, max(self.policy.retry_initial_s, self.backoff * 2))
                self.next_try = now + self.backoff
                self.details["alertmanager"] = f"unavailable: {exc}"
                log.warning("alertmanager unavailable; retrying", extra={"error": str(exc), "waiting":
                            len(self.waiting), "retry_in_s": self.backoff})
                return
            except Refused as exc:
                metrics.POSTS.labels("refused").inc()
                if len(batch) > 1:
                    self.split = True
                    batch_size = 1
                    continue
                fp, waiting = batch[0]
                metrics.ALERTS_REFUSED.inc()
                log.error("alertmanager refused an alert; dropped", extra={"labels": waiting.alert.labels,
                                                                           "error": str(exc)})
                self._delivered(fp, waiting, accepted=False)
                continue
            metrics.POSTS.labels("ok").inc()
            self.backoff = 0.0
            self.details["alertmanager"] = "ok"
            for fp, waiting in batch:
                self._delivered(fp, waiting, accepted=True)
        self.split = False

    def _delivered(self, fp: str, waiting: _Waiting, accepted: bool) -> None:
        if self.waiting.get(fp) is waiting:
            del self.waiting[fp]
        if accepted:
            self.delivered_alerts += 1
            if waiting.event_ts is not None:
                metrics.DELIVERY.observe(max(0.0, self.clock() - waiting.event_ts))
        self._done(waiting.positions)

    def _enqueue(self, alert: Alert, positions: list[Position], event_ts: float | None) -> None:
        fp = alert.fingerprint
        known = self.waiting.get(fp)
        if known is None:
            self.waiting[fp] = _Waiting(alert, list(positions), self.monotonic(), event_ts)
        else:  # a newer state of the same alert replaces the waiting one; it now carries both events
            known.alert = alert
            known.positions += positions
            known.event_ts = event_ts if event_ts is not None else known.event_ts

    def _done(self, positions: list[Position]) -> None:
        for topic, partition, offset in positions:
            self.events_waiting -= 1
            advanced = self.tracker.finish(topic, partition, offset)
            if advanced is not None:
                self.done_to[(topic, partition)] = advanced

    def _pace(self) -> None:
        if not self.paused and self.events_waiting > self.policy.max_pending:
            self.paused = True
            self.control.pause()
            log.warning("too many events waiting for Alertmanager; consumer paused",
                        extra={"waiting": self.events_waiting})
        elif self.paused and self.events_waiting <= self.policy.max_pending // 2:
            self.paused = False
            self.control.resume()
            log.info("consumer resumed", extra={"waiting": self.events_waiting})

    def _gauges(self) -> None:
        now = self.monotonic()
        metrics.PENDING.set(len(self.waiting))
        metrics.PENDING_EVENTS.set(self.events_waiting)
        metrics.OLDEST_PENDING.set(max((now - w.since for w in self.waiting.values()), default=0.0))
        self.details.update(waiting_alerts=len(self.waiting), waiting_events=self.events_waiting,
                            open_episodes=len(self.book.open), delivered_alerts=self.delivered_alerts,
                            retries=self.retries)
