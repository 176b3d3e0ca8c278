"""The router's logic: experiment operations, the tally of frames.meta, guardrail checks and automated actions.

Strategies are weight schedules written to the store (workers follow them by frame ingest time):
- canary: the challenger starts at its weight and steps up along `ramp` while no guardrail fails;
- rolling: the same with a schedule meant to reach 1.0;
- blue-green: weights 0/1 at creation, `promote` flips them all at one effective time;
- rollback (by an operator, or by the router after `max_failed_checks` consecutive failed checks): control 1.0.

Promotion of a challenger that is a registry version also moves the registry's `champion` alias through the
registry's gate (imask.registry); a refused gate refuses the promotion unless forced with a reason.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from imask.ops import metrics
from imask.routing import stats
from imask.routing.assign import ExperimentConfig
from imask.routing.results import Decision, ExperimentTally, decide, guardrails_of
from imask.routing.store import TERMINAL, ExperimentError, ExperimentSpec, ExperimentStore
from imask.routing.targeting import FeatureRule, Targeter
from imask.v1 import frames_pb2 as pb

log = logging.getLogger(__name__)


@dataclass
class Watch:
    """What the router keeps per experiment between checks."""

    tally: ExperimentTally
    previous: dict[str, stats.SequentialResult] = field(default_factory=dict)
    failed_checks: int = 0
    last_check: float = 0.0
    last: Decision | None = None
    config_version: int = 0


# Moves a registry alias for a promotion: (challenger's variant ref, force, reason) -> refusal reason or "".
AliasMover = Callable[[str, bool, str], str]
# Open variant_regression flags of the drift service: (challenger's variant, experiment start in ms) -> reasons.
RegressionReader = Callable[[str, int], list[str]]


MAX_CAMERAS_SEEN = 100_000


class Router:
    def __init__(self, store: ExperimentStore, move_alias: AliasMover | None = None,
                 regressions: RegressionReader | None = None, targeter: Targeter | None = None) -> None:
        self.store = store
        self.move_alias = move_alias
        self.regressions = regressions
        self.targeter = targeter  # targeted experiments: which cameras match their feature rule
        self.watches: dict[str, Watch] = {}
        self.cameras: set[str] = set()  # every camera seen in frames.meta (the candidates of a feature rule)
        self._lock = threading.RLock()

    # -- operations ------------------------------------------------------------------------------------------
    def create(self, spec: ExperimentSpec) -> ExperimentConfig:
        guardrails_of(spec)  # unknown metrics refused before anything is written
        if spec.target:
            try:
                FeatureRule.parse(spec.target)
            except ValueError as exc:
                raise ExperimentError(str(exc)) from None
            if self.targeter is None:
                raise ExperimentError("this router reads no features: a targeted experiment needs them")
        if len(spec.arms) != 2:
            raise ExperimentError("an experiment has two arms: control and one challenger")
        if spec.strategy == "blue_green" and spec.arms[1].weight not in (0.0, 1.0):
            raise ExperimentError("blue-green starts with the challenger at weight 0 (or 1) and switches at once")
        config = self.store.create(spec)
        with self._lock:
            self.watches[spec.name] = Watch(ExperimentTally(spec.name), config_version=config.version)
        return config

    def ramp(self, name: str, weight: float, reason: str, actor: str = "operator") -> ExperimentConfig:
        spec = self.store.spec(name)
        control, challenger = spec.arms[0].name, spec.arms[1].name
        config = self.store.set_weights(name, {control: 1.0 - weight, challenger: weight}, reason=reason, actor=actor)
        self._restart_srm(name, config)
        return config

    def promote(self, name: str, reason: str, force: bool = False) -> ExperimentConfig:
        spec = self.store.spec(name)
        challenger = spec.arms[1]
        if self.move_alias is not None and ("/" in challenger.variant or "@" in challenger.variant):
            refused = self.move_alias(challenger.variant, force, reason)
            if refused:
                raise ExperimentError(f"the registry's gate refuses {challenger.variant}: {refused}")
        config = self.store.set_weights(name, {spec.arms[0].name: 0.0, challenger.name: 1.0}, state="promoted",
                                        reason=reason or "promoted")
        self._restart_srm(name, config)
        return config

    def rollback(self, name: str, reason: str, actor: str = "operator") -> ExperimentConfig:
        spec = self.store.spec(name)
        config = self.store.set_weights(name, {spec.arms[0].name: 1.0, spec.arms[1].name: 0.0},
                                        state="rolled_back", reason=reason or "rolled back", actor=actor)
        metrics.EXPERIMENT_ROLLBACKS.labels(name, actor).inc()
        self._restart_srm(name, config)
        return config

    def stop(self, name: str, reason: str) -> ExperimentConfig:
        spec = self.store.spec(name)
        config = self.store.set_weights(name, {spec.arms[0].name: 1.0, spec.arms[1].name: 0.0}, state="stopped",
                                        reason=reason or "stopped")
        self._restart_srm(name, config)
        return config

    def _restart_srm(self, name: str, config: ExperimentConfig) -> None:
        with self._lock:
            watch = self._watch(name)
            watch.tally.restart_srm_window(config)
            watch.config_version = config.version

    def _watch(self, name: str) -> Watch:
        if name not in self.watches:
            self.watches[name] = Watch(ExperimentTally(name))
        return self.watches[name]

    # -- data ------------------------------------------------------------------------------------------------
    def on_meta(self, meta: pb.FrameMeta) -> None:
        if meta.camera_id and len(self.cameras) < MAX_CAMERAS_SEEN:
            self.cameras.add(meta.camera_id)
        if not meta.experiment:
            return
        with self._lock:
            self._watch(meta.experiment).tally.add(meta)

    def results(self, name: str) -> Decision:
        spec, config = self.store.spec(name), self.store.latest(name)
        with self._lock:
            watch = self._watch(name)
            return decide(watch.tally, spec, config, watch.previous)

    # -- the check loop ---------------------------------------------------------------------------------------
    def tick(self, now: float | None = None) -> None:
        """Check the active experiment if its interval passed: guardrails, automated rollback, ramp steps."""
        now = time.monotonic() if now is None else now
        name = self.store.active()
        if not name:
            return
        config = self.store.latest(name)
        if config.state in TERMINAL:
            return
        spec = self.store.spec(name)
        with self._lock:
            watch = self._watch(name)
            if config.version != watch.config_version:  # changed by someone else (CLI, another router)
                watch.tally.restart_srm_window(config)
                watch.config_version = config.version
        # The drift service's per-camera comparison (each camera its own control across its switch) protects
        # fleets too small for the between-camera statistics: an open variant_regression flag on the challenger
        # is a failed guardrail check, and a decisive one (the drift service already required it to persist over
        # consecutive windows), so it is looked at every tick and rolls back at once.
        flagged = self.regressions(spec.arms[1].variant, spec.created_us // 1000) if self.regressions else []
        if flagged:
            with self._lock:
                watch.failed_checks = max(watch.failed_checks + 1, spec.max_failed_checks)
                failed_checks = watch.failed_checks
            metrics.EXPERIMENT_FAILED_CHECKS.labels(name).set(failed_checks)
            reason = f"variant_regression on {len(flagged)} camera(s): " + "; ".join(flagged[:3])
            log.warning("rolling back on its own", extra={"experiment": name, "reason": reason})
            self.rollback(name, reason, actor="router")
            return
        with self._lock:
            if now - watch.last_check < spec.interval_s:
                return
            watch.last_check = now
        if spec.target:
            config = self._retarget(name, spec, config)
        with self._lock:
            decision = decide(watch.tally, spec, config, watch.previous)
            watch.previous = {r.guardrail.metric: r.sequential for r in decision.guardrails}
            watch.last = decision
            failing = decision.recommendation.action == "rollback"
            watch.failed_checks = watch.failed_checks + 1 if failing else 0
            failed_checks = watch.failed_checks
        metrics.EXPERIMENT_FAILED_CHECKS.labels(name).set(failed_checks)
        log.info("experiment checked", extra={"experiment": name, "action": decision.recommendation.action,
                                              "failed_checks": failed_checks,
                                              "reasons": decision.recommendation.reasons[:4]})
        if failing and failed_checks >= spec.max_failed_checks:
            reason = (f"{failed_checks} consecutive failed checks: "
                      + "; ".join(decision.recommendation.reasons[:3]))
            log.warning("rolling back on its own", extra={"experiment": name, "reason": reason})
            self.rollback(name, reason, actor="router")
            return
        if not failing:
            self._ramp_step(name, spec, config)

    def _retarget(self, name: str, spec: ExperimentSpec, config: ExperimentConfig) -> ExperimentConfig:
        """A targeted experiment's cameras: those whose fresh features match its rule now (a new config when they
        changed). Features unreadable: the cameras stay as they are."""
        if self.targeter is None:
            return config
        rule = FeatureRule.parse(spec.target)
        try:
            matched = self.targeter(rule, sorted(self.cameras))
        except Exception as exc:  # Redis away: keep the current cameras, try again next check
            log.warning("features unreadable; experiment cameras unchanged", extra={"experiment": name,
                                                                                     "error": repr(exc)})
            return config
        if config.targets is not None and matched == set(config.targets):
            return config
        log.info("experiment cameras", extra={"experiment": name, "rule": str(rule), "cameras": len(matched)})
        config = self.store.set_targets(name, matched, f"feature rule {rule}: {len(matched)} camera(s) match")
        self._restart_srm(name, config)
        return config

    def _ramp_step(self, name: str, spec: ExperimentSpec, config: ExperimentConfig) -> None:
        if spec.strategy not in ("canary", "rolling") or not spec.ramp:
            return
        elapsed = (time.time_ns() // 1000 - spec.created_us) / 1e6
        due = [w for at, w in spec.ramp if at <= elapsed]
        current = config.arms[1].weight
        if due and due[-1] > current:
            self.ramp(name, due[-1], f"ramp schedule: {due[-1]:g} after {elapsed:.0f} s", actor="router")
