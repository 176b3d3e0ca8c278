"""ExperimentService over gRPC: the router's operations and results as protobuf (imask/v1/experiment_service)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from imask.routing.assign import ArmSpec, ExperimentConfig
from imask.routing.results import Decision
from imask.routing.router import Router
from imask.routing.store import TERMINAL, ExperimentError, ExperimentSpec, Guardrail
from imask.v1 import experiment_service_pb2 as epb
from imask.v1 import experiment_service_pb2_grpc as epb_grpc

log = logging.getLogger(__name__)
T = TypeVar("T")

STRATEGIES = {epb.STRATEGY_CANARY: "canary", epb.STRATEGY_BLUE_GREEN: "blue_green", epb.STRATEGY_ROLLING: "rolling",
              epb.STRATEGY_UNSPECIFIED: "canary"}
STATES = {"running": epb.EXPERIMENT_STATE_RUNNING, "promoted": epb.EXPERIMENT_STATE_PROMOTED,
          "rolled_back": epb.EXPERIMENT_STATE_ROLLED_BACK, "stopped": epb.EXPERIMENT_STATE_STOPPED}


def spec_from_pb(msg: epb.ExperimentSpec) -> ExperimentSpec:
    defaults = ExperimentSpec("", ())
    return ExperimentSpec(
        name=msg.name, salt=msg.salt, strategy=STRATEGIES[msg.strategy],
        arms=tuple(ArmSpec(a.name, a.variant, a.weight) for a in msg.arms),
        ramp=tuple((r.at_s, r.weight) for r in msg.ramp),
        guardrails=tuple(Guardrail(g.metric, g.tolerance) for g in msg.guardrails),
        interval_s=msg.interval_s or defaults.interval_s,
        max_failed_checks=msg.max_failed_checks or defaults.max_failed_checks,
        shadow_sample=msg.shadow_sample, min_cameras=msg.min_cameras or defaults.min_cameras,
        min_frames=msg.min_frames or defaults.min_frames, target=msg.target)


def spec_to_pb(spec: ExperimentSpec) -> epb.ExperimentSpec:
    strategy = next(k for k, v in STRATEGIES.items() if v == spec.strategy and k != epb.STRATEGY_UNSPECIFIED)
    return epb.ExperimentSpec(
        name=spec.name, salt=spec.salt, strategy=strategy,
        arms=[epb.Arm(name=a.name, variant=a.variant, weight=a.weight) for a in spec.arms],
        ramp=[epb.RampStep(at_s=t, weight=w) for t, w in spec.ramp],
        guardrails=[epb.Guardrail(metric=g.metric, tolerance=g.tolerance) for g in spec.guardrails],
        interval_s=spec.interval_s, max_failed_checks=spec.max_failed_checks, shadow_sample=spec.shadow_sample,
        min_cameras=spec.min_cameras, min_frames=spec.min_frames, target=spec.target)


def status_pb(spec: ExperimentSpec, config: ExperimentConfig) -> epb.ExperimentStatus:
    return epb.ExperimentStatus(
        spec=spec_to_pb(spec), state=STATES[config.state], config_version=config.version,
        effective_ts_us=config.effective_us,
        arms=[epb.Arm(name=a.name, variant=a.variant, weight=a.weight) for a in config.arms],
        last_change=config.reason)


def results_pb(status: epb.ExperimentStatus, decision: Decision, failed_checks: int) -> epb.ExperimentResults:
    out = epb.ExperimentResults(status=status, recommendation=decision.recommendation.action,
                                reasons=decision.recommendation.reasons, failed_checks=failed_checks,
                                srm_cameras=decision.srm["cameras"].mismatch,
                                srm_frames=decision.srm["frames"].mismatch,
                                srm_cameras_p=decision.srm["cameras"].p_value,
                                srm_frames_p=decision.srm["frames"].p_value)
    for name, arm in decision.arms.items():
        out.arms.add(arm=name, cameras=arm["cameras"], frames=arm["frames"],
                     metrics={k: float(v) for k, v in arm["metrics"].items() if v == v})  # NaN: no data yet
    for r in decision.guardrails:
        out.guardrails.add(metric=r.guardrail.metric, outcome=r.status, estimate=r.change,
                           ci_low=r.change_ci[0], ci_high=r.change_ci[1], p_value=r.sequential.p_value)
    control = next(iter(decision.arms))  # shadowed frames are control frames the challenger also masked
    for key, value in decision.arms[control]["metrics"].items():
        if key.startswith("shadow_"):
            out.shadow[key] = float(value)
    return out


class ExperimentServicer(epb_grpc.ExperimentServiceServicer):
    def __init__(self, router: Router) -> None:
        self.router = router

    def _call(self, context: grpc.ServicerContext, body: Callable[[], T]) -> T:
        try:
            return body()
        except ExperimentError as exc:
            code = grpc.StatusCode.NOT_FOUND if "no experiment" in str(exc) else grpc.StatusCode.FAILED_PRECONDITION
            context.abort(code, str(exc))
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        raise AssertionError("unreachable")

    def _status(self, name: str) -> epb.ExperimentStatus:
        store = self.router.store
        return status_pb(store.spec(name), store.latest(name))

    def _name(self, name: str) -> str:
        found = name or self.router.store.active()
        if not found:
            raise ExperimentError("no experiment named and none active")
        return found

    def Create(self, request: epb.ExperimentSpec, context: Any) -> epb.ExperimentStatus:
        return self._call(context, lambda: (self.router.create(spec_from_pb(request)), self._status(request.name))[1])

    def Status(self, request: epb.ExperimentRef, context: Any) -> epb.ExperimentStatus:
        return self._call(context, lambda: self._status(self._name(request.name)))

    def List(self, request: epb.ExperimentRef, context: Any) -> epb.ExperimentList:
        return self._call(context, lambda: epb.ExperimentList(
            experiments=[self._status(n) for n in self.router.store.names()]))

    def Ramp(self, request: epb.RampRequest, context: Any) -> epb.ExperimentStatus:
        def body() -> epb.ExperimentStatus:
            name = self._name(request.name)
            if not 0.0 <= request.weight <= 1.0:
                raise ValueError("weight is the challenger's share, 0..1")
            self.router.ramp(name, request.weight, request.reason or f"ramp to {request.weight:g}")
            return self._status(name)
        return self._call(context, body)

    def Promote(self, request: epb.ChangeRequest, context: Any) -> epb.ExperimentStatus:
        def body() -> epb.ExperimentStatus:
            name = self._name(request.name)
            self.router.promote(name, request.reason, request.force)
            return self._status(name)
        return self._call(context, body)

    def Rollback(self, request: epb.ChangeRequest, context: Any) -> epb.ExperimentStatus:
        def body() -> epb.ExperimentStatus:
            name = self._name(request.name)
            self.router.rollback(name, request.reason)
            return self._status(name)
        return self._call(context, body)

    def Stop(self, request: epb.ChangeRequest, context: Any) -> epb.ExperimentStatus:
        def body() -> epb.ExperimentStatus:
            name = self._name(request.name)
            self.router.stop(name, request.reason)
            return self._status(name)
        return self._call(context, body)

    def Assign(self, request: epb.AssignRequest, context: Any) -> epb.AssignReply:
        def body() -> epb.AssignReply:
            config = self.router.store.latest(self._name(request.name))
            return epb.AssignReply(arms={c: config.arm_for(c).name for c in request.camera_ids})
        return self._call(context, body)

    def Results(self, request: epb.ExperimentRef, context: Any) -> epb.ExperimentResults:
        def body() -> epb.ExperimentResults:
            name = self._name(request.name)
            decision = self.router.results(name)
            watch = self.router.watches.get(name)
            status = self._status(name)
            if self.router.store.latest(name).state in TERMINAL and watch is not None and watch.last is not None:
                decision = watch.last  # what the last live check saw (e.g. the rollback's reasons)
            return results_pb(status, decision, watch.failed_checks if watch else 0)
        return self._call(context, body)
