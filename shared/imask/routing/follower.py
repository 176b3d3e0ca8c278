"""A worker's view of its fleet's experiment: the config history, refreshed from Redis in the background.

Redis away: the worker keeps routing by the history it last read (a change written meanwhile reaches it late) and
`imask_experiment_config_age_seconds` grows; it never stops masking for it.
"""

from __future__ import annotations

import logging
import threading
import time

from imask.ops import metrics
from imask.routing.assign import ConfigHistory, ExperimentConfig
from imask.routing.store import ExperimentStore

log = logging.getLogger(__name__)


class ExperimentFollower:
    def __init__(self, store: ExperimentStore, refresh_s: float = 0.5) -> None:
        self.store = store
        self.refresh_s = refresh_s
        self.name: str | None = None
        self.history = ConfigHistory()
        self.read_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def refresh(self) -> None:
        try:
            name = self.store.active()
            history = self.store.history(name) if name else ConfigHistory()
        except Exception as exc:  # Redis away: keep the last history
            if not self._failing:
                log.warning("experiment config unreadable; routing by the last one read", extra={"error": str(exc)})
            self._failing = True
            return
        if self._failing:
            log.info("experiment config readable again")
        self._failing = False
        latest, before = history.latest, self.history.latest
        if name != self.name or (latest and (before is None or latest.version != before.version)):
            log.info("experiment config", extra={"experiment": name, "version": latest.version if latest else 0,
                                                 "weights": {a.name: a.weight for a in latest.arms} if latest else {},
                                                 "effective_us": latest.effective_us if latest else 0})
        self.name, self.history, self.read_at = name, history, time.monotonic()

    def config_at(self, ingest_us: int) -> ExperimentConfig | None:
        return self.history.at(ingest_us)

    def variants(self) -> set[str]:
        """Every variant an arm of the current experiment names (engines a worker should have loaded)."""
        latest = self.history.latest
        return {a.variant for a in latest.arms} if latest else set()

    def start(self) -> ExperimentFollower:
        self.refresh()
        self._thread = threading.Thread(target=self._loop, name="experiment-follower", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.refresh_s):
            self.refresh()
            if self.read_at:
                metrics.EXPERIMENT_CONFIG_AGE.set(time.monotonic() - self.read_at)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
