"""An experiment's results from frames.meta: per-arm, per-camera aggregates and the decision they support.

The router feeds every FrameMeta of the experiment (labelled with experiment and arm by the workers) into
`ExperimentTally`; `decide` turns it into SRM checks, guardrail verdicts (always-valid, cameras as clusters, via
routing.stats) and a recommendation. Descriptive percentiles per stage come from a bounded sample per arm.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from imask.routing import stats
from imask.routing.assign import ExperimentConfig
from imask.routing.store import ExperimentSpec
from imask.v1 import frames_pb2 as pb

STAGES = ("end_to_end", "queue_wait", "inference", "mask", "encode", "publish")
SAMPLE_PER_STAGE = 4096


@dataclass(frozen=True)
class MetricDef:
    direction: stats.Direction
    kind: str  # "relative" or "absolute": how a guardrail's tolerance on it is stated
    unit: str


# What a guardrail may watch. Sums and counts per camera come from `CameraTally`.
METRICS: dict[str, MetricDef] = {
    "latency_ms": MetricDef("lower_is_better", "relative", "ms"),
    "inference_ms": MetricDef("lower_is_better", "relative", "ms"),
    "fail_closed_rate": MetricDef("lower_is_better", "absolute", "pp"),
    "faces_per_frame": MetricDef("higher_is_better", "relative", ""),
    "held_track_rate": MetricDef("lower_is_better", "absolute", "pp"),
}


@dataclass
class CameraTally:
    frames: int = 0
    latency_ms: float = 0.0
    inference_ms: float = 0.0
    fail_closed: int = 0
    faces: int = 0
    held_frames: int = 0

    def pair(self, metric: str) -> tuple[float, float]:
        value = {"latency_ms": self.latency_ms, "inference_ms": self.inference_ms,
                 "fail_closed_rate": self.fail_closed, "faces_per_frame": self.faces,
                 "held_track_rate": self.held_frames}[metric]
        return float(value), float(self.frames)


@dataclass
class ArmTally:
    cameras: dict[str, CameraTally] = field(default_factory=lambda: defaultdict(CameraTally))
    cameras_now: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # frames under the latest config
    samples: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    seen: int = 0
    shadow_frames: int = 0
    shadow_only_shadow: int = 0
    shadow_only_served: int = 0
    shadow_matched: int = 0


class ExperimentTally:
    def __init__(self, experiment: str, seed: int = 1) -> None:
        self.experiment = experiment
        self.arms: dict[str, ArmTally] = defaultdict(ArmTally)
        self.frames = 0
        self.latest_version_from_us = 0  # frames ingested from here on count for the SRM of the latest config
        self._rng = random.Random(seed)

    def add(self, meta: pb.FrameMeta) -> None:
        if meta.experiment != self.experiment or not meta.arm or meta.end_of_stream:
            return
        arm = self.arms[meta.arm]
        cam = arm.cameras[meta.camera_id]
        cam.frames += 1
        cam.latency_ms += meta.timings.end_to_end_ms
        cam.inference_ms += meta.timings.inference_ms
        cam.fail_closed += int(meta.fail_closed)
        cam.faces += meta.faces_masked
        cam.held_frames += int(any(d.held for d in meta.detections))
        if meta.ingest_ts_us >= self.latest_version_from_us:
            arm.cameras_now[meta.camera_id] += 1
        self.frames += 1
        arm.seen += 1
        for stage in STAGES:  # reservoir sample: percentiles of a long run in bounded memory
            values = arm.samples[stage]
            value = getattr(meta.timings, f"{stage}_ms")
            if len(values) < SAMPLE_PER_STAGE:
                values.append(value)
            else:
                j = self._rng.randrange(arm.seen)
                if j < SAMPLE_PER_STAGE:
                    values[j] = value
        if meta.HasField("shadow"):
            arm.shadow_frames += 1
            arm.shadow_only_shadow += meta.shadow.only_shadow
            arm.shadow_only_served += meta.shadow.only_served
            arm.shadow_matched += meta.shadow.matched

    def restart_srm_window(self, config: ExperimentConfig) -> None:
        """Weights changed: the SRM compares cameras and frames under the new weights only."""
        self.latest_version_from_us = config.effective_us
        for arm in self.arms.values():
            arm.cameras_now.clear()

    def sample(self, arm: str, metric: str) -> stats.ArmSample:
        tally = self.arms.get(arm)
        pairs = [c.pair(metric) for c in tally.cameras.values() if c.frames] if tally else []
        return stats.ArmSample.from_pairs(pairs)

    def describe(self, arm: str) -> dict[str, float]:
        tally = self.arms.get(arm)
        if tally is None:
            return {}
        out: dict[str, float] = {}
        for metric in METRICS:
            total, count = np.sum([c.pair(metric) for c in tally.cameras.values()], axis=0) if tally.cameras \
                else (0.0, 0.0)
            out[metric] = float(total / count) if count else float("nan")
        for stage, values in tally.samples.items():
            if values:
                out[f"{stage}_p50_ms"] = float(np.percentile(values, 50))
                out[f"{stage}_p95_ms"] = float(np.percentile(values, 95))
        if tally.shadow_frames:
            out["shadow_frames"] = float(tally.shadow_frames)
            out["shadow_only_shadow_per_frame"] = tally.shadow_only_shadow / tally.shadow_frames
            out["shadow_only_served_per_frame"] = tally.shadow_only_served / tally.shadow_frames
        return out


@dataclass
class Decision:
    recommendation: stats.Recommendation
    guardrails: list[stats.GuardrailResult]
    srm: dict[str, stats.SrmResult]
    arms: dict[str, dict[str, Any]]


def guardrails_of(spec: ExperimentSpec) -> list[stats.Guardrail]:
    out = []
    for g in spec.guardrails:
        if g.metric not in METRICS:
            raise ValueError(f"unknown guardrail metric {g.metric!r}; known: {sorted(METRICS)}")
        m = METRICS[g.metric]
        tolerance = {"relative": g.tolerance} if m.kind == "relative" else {"absolute": g.tolerance}
        out.append(stats.Guardrail(g.metric, m.direction, unit=m.unit, **tolerance))
    return out


def decide(tally: ExperimentTally, spec: ExperimentSpec, config: ExperimentConfig,
           previous: dict[str, stats.SequentialResult] | None = None) -> Decision:
    """Control against the first challenger: SRM under the current weights, guardrails on everything seen."""
    control, challenger = config.arms[0].name, config.arms[1].name
    weights = {a.name: a.weight for a in config.arms[:2]}
    live = {a: w for a, w in weights.items() if w > 0}
    cameras = {a: len(tally.arms[a].cameras_now) if a in tally.arms else 0 for a in weights}
    frames = {a: list(tally.arms[a].cameras_now.values()) if a in tally.arms else [] for a in weights}
    if len(live) == 2:
        srm = {"cameras": stats.srm_check(cameras, weights), "frames": stats.frame_srm_check(frames, weights)}
    else:  # all weight on one arm (promoted, rolled back, blue-green after its switch): no split to check
        none = stats.SrmResult(0.0, 1.0, False, {a: 0.0 for a in weights},
                               {a: float(cameras[a]) for a in weights})
        srm = {"cameras": none, "frames": none}
    rails = guardrails_of(spec)
    samples = {g.metric: (tally.sample(control, g.metric), tally.sample(challenger, g.metric)) for g in rails}
    # Cluster-robust variances need enough cameras per arm; fewer is the operator's explicit choice (min_cameras).
    results = stats.evaluate_guardrails(rails, samples, previous, min_cameras=max(2, spec.min_cameras))
    recommendation = stats.recommend(srm, results, spec.min_cameras, spec.min_frames)
    arms = {a: {"cameras": len(tally.arms[a].cameras) if a in tally.arms else 0,
                "frames": sum(c.frames for c in tally.arms[a].cameras.values()) if a in tally.arms else 0,
                "metrics": tally.describe(a)} for a in weights}
    return Decision(recommendation, results, srm, arms)
