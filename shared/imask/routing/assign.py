"""Which arm of an experiment masks a camera's frame: sticky, stable across processes, decided by frame time.

- **Sticky**: a camera's bucket is sha256(salt ":" camera id) (never Python's `hash()`, which is salted per
  process), so every worker, the router and any restart agree. Test vectors pin it.
- **Monotonic ramps**: control holds the low buckets, challengers the high ones; raising a challenger's weight only
  moves cameras control -> challenger, never back and forth.
- **Atomic switches**: every change of weights is a new config with an `effective_us` a little in the future; a
  frame takes the config in effect at its *ingest* time. Any worker that handles the frame (also after a
  rebalance, also a redelivery) picks the same arm, so a switch cuts each camera's stream at one point.
"""

from __future__ import annotations

import bisect
import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

BUCKETS = 10_000


def bucket(salt: str, camera_id: str) -> int:
    """0..BUCKETS-1, uniform and stable: the first 8 bytes of sha256(salt:camera) modulo BUCKETS."""
    digest = hashlib.sha256(f"{salt}:{camera_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


@dataclass(frozen=True)
class ArmSpec:
    name: str
    variant: str  # a built-in variant name or a registry reference NAME/VERSION
    weight: float


@dataclass(frozen=True)
class ExperimentConfig:
    """One version of an experiment's routing: its arms with weights, in effect from `effective_us` on."""

    experiment: str
    salt: str
    arms: tuple[ArmSpec, ...]
    version: int
    effective_us: int
    state: str = "running"  # running, promoted, rolled_back, stopped
    shadow_sample: float = 0.0  # share of control frames the first challenger also masks, output discarded
    reason: str = ""
    # Targeted experiments (a feature rule, routing/targeting.py): the cameras that take part; every other camera
    # is on control. None: every camera takes part.
    targets: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not self.arms:
            raise ValueError("an experiment needs arms")
        if any(a.weight < 0 for a in self.arms) or abs(sum(a.weight for a in self.arms) - 1.0) > 1e-6:
            raise ValueError(f"arm weights must be >= 0 and sum to 1, got {[a.weight for a in self.arms]}")
        if len({a.name for a in self.arms}) != len(self.arms):
            raise ValueError("arm names must differ")
        if not 0.0 <= self.shadow_sample <= 1.0:
            raise ValueError("shadow_sample is a share, 0..1")

    @property
    def control(self) -> ArmSpec:
        return self.arms[0]

    def arm_for(self, camera_id: str) -> ArmSpec:
        """Control takes buckets [0, w0); each challenger in turn takes the next range down from the top. A camera
        outside a targeted experiment's targets is on control."""
        if self.targets is not None and camera_id not in self.targets:
            return self.control
        b = bucket(self.salt, camera_id)
        upper = BUCKETS
        for arm in self.arms[1:]:
            lower = upper - round(arm.weight * BUCKETS)
            if lower <= b < upper:
                return arm
            upper = lower
        return self.control

    def shadowed(self, camera_id: str, seq: int) -> ArmSpec | None:
        """The challenger that also masks this control frame in shadow mode (a stable sample), or None."""
        if self.shadow_sample <= 0 or len(self.arms) < 2 or self.state != "running" or (
                self.targets is not None and camera_id not in self.targets):
            return None
        if bucket(f"{self.salt}:shadow", f"{camera_id}:{seq}") < self.shadow_sample * BUCKETS:
            return self.arms[1]
        return None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ExperimentConfig:
        targets = raw.get("targets")
        return cls(**{**raw, "arms": tuple(ArmSpec(**a) for a in raw["arms"]),
                      "targets": None if targets is None else tuple(targets)})


@dataclass
class ConfigHistory:
    """Every config of an experiment, by effective time: the arm of a frame is the one in effect at its ingest."""

    configs: list[ExperimentConfig] = field(default_factory=list)

    def add(self, config: ExperimentConfig) -> None:
        if any(c.version == config.version for c in self.configs):
            return
        self.configs.append(config)
        self.configs.sort(key=lambda c: (c.effective_us, c.version))

    def at(self, ingest_us: int) -> ExperimentConfig | None:
        """The config in effect for a frame ingested at `ingest_us` (None: before the experiment began)."""
        times = [c.effective_us for c in self.configs]
        i = bisect.bisect_right(times, ingest_us)
        return self.configs[i - 1] if i else None

    @property
    def latest(self) -> ExperimentConfig | None:
        return max(self.configs, key=lambda c: c.version) if self.configs else None
