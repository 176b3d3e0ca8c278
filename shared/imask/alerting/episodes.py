"""Open alert episodes: what has fired and not yet resolved, with the topic position of the event that opened it.

The book is the service's only state and is rebuilt by reading the topic again: offsets are committed no further
than the opening event of the oldest open episode (`holds`), so after a restart the episodes still open are read
again and their alerts posted again (Alertmanager merges a repeated alert: same labels, same start). An episode
that no event ends within `max_age_s` is closed by age (its emitter may have restarted and forgotten it).
"""

from __future__ import annotations

from dataclasses import dataclass

from imask.alerting.events import Action, Alert, Meaning

Position = tuple[str, int, int]  # topic, partition, offset


@dataclass
class Episode:
    alert: Alert
    kind: str
    opened_by: Position


def _key(alert: Alert) -> tuple[str, ...]:
    """What a resolving event must match: kind, camera and identity labels (not severity or name)."""
    labels = alert.labels
    return tuple(f"{k}={labels[k]}" for k in sorted(labels) if k not in ("alertname", "severity"))


class EpisodeBook:
    def __init__(self, max_age_s: float) -> None:
        self.max_age_s = max_age_s
        self.open: dict[tuple[str, ...], Episode] = {}

    def apply(self, meaning: Meaning, at: Position) -> list[Alert]:
        """The alerts to post for this event: the opened one, the ones it resolves (none: nothing to resolve)."""
        alert = meaning.alert
        if meaning.action is Action.OPEN:
            key = _key(alert)
            known = self.open.get(key)
            if known is not None:  # the same episode again (a replay, a repeated event): keep its start
                return [known.alert]
            self.open[key] = Episode(alert, meaning.kind, at)
            return [alert]
        if meaning.action is Action.ONESHOT:
            return [alert]
        ended = [key for key, ep in self.open.items() if self._ends(meaning, ep)]
        assert alert.ends_at is not None
        return [self.open.pop(key).alert.resolved_at(alert.ends_at) for key in ended]

    @staticmethod
    def _ends(meaning: Meaning, episode: Episode) -> bool:
        if episode.kind not in meaning.resolves:
            return False
        if meaning.kind in meaning.resolves:  # `state: resolved` of the same kind: the same identity
            return _key(episode.alert) == _key(meaning.alert)
        return episode.alert.labels.get("camera") == meaning.alert.labels.get("camera")  # a camera's recovery

    def expire(self, now: float) -> list[Alert]:
        """Close episodes older than max_age_s; their alerts resolved now."""
        old = [key for key, ep in self.open.items() if now - ep.alert.starts_at > self.max_age_s]
        return [self.open.pop(key).alert.resolved_at(now) for key in old]

    def firing(self) -> list[Alert]:
        return [ep.alert for ep in self.open.values()]

    def holds(self) -> dict[tuple[str, int], int]:
        """Per partition, the offset of the oldest open episode's event: commits may not pass it."""
        held: dict[tuple[str, int], int] = {}
        for ep in self.open.values():
            topic, partition, offset = ep.opened_by
            held[(topic, partition)] = min(offset, held.get((topic, partition), offset))
        return held
