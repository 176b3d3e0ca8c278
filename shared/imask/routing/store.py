"""Experiments in Redis: the spec, an append-only history of routing configs, and an audit of every change.

Keys, per fleet (the worker consumer group the experiment routes):
  imask:exp:<fleet>:active              name of the experiment the fleet follows
  imask:exp:<fleet>:<name>:spec         the experiment as created (JSON)
  imask:exp:<fleet>:<name>:configs      list of ExperimentConfig (JSON), versions 1, 2, ... (WATCH/MULTI appends)
  imask:exp:<fleet>:<name>:events       list of audit events (JSON): who changed what, when, why

Every change takes effect `delay_s` after it is written (frames are routed by ingest time), so each worker has
read it before the first frame it applies to arrives.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import redis

from imask.frames.clock import now_us
from imask.routing.assign import ArmSpec, ConfigHistory, ExperimentConfig

DEFAULT_DELAY_S = 2.0
TERMINAL = ("promoted", "rolled_back", "stopped")


class ExperimentError(ValueError):
    """An experiment operation that cannot be done (unknown name, one already running, bad weights)."""


@dataclass(frozen=True)
class Guardrail:
    metric: str
    tolerance: float


@dataclass(frozen=True)
class ExperimentSpec:
    name: str
    arms: tuple[ArmSpec, ...]
    salt: str = ""
    strategy: str = "canary"  # canary, blue_green, rolling
    ramp: tuple[tuple[float, float], ...] = ()  # (seconds after start, challenger weight)
    guardrails: tuple[Guardrail, ...] = ()
    interval_s: float = 10.0
    max_failed_checks: int = 3
    shadow_sample: float = 0.0
    min_cameras: int = 16  # per arm, before guardrails judge (cluster-robust variances need clusters)
    min_frames: int = 200
    created_us: int = 0
    target: str = ""  # a feature rule (routing/targeting.py): only matching cameras take part; "": every camera

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "arms": [a.__dict__ for a in self.arms],
                "guardrails": [g.__dict__ for g in self.guardrails], "ramp": [list(r) for r in self.ramp]}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ExperimentSpec:
        return cls(**{**raw, "arms": tuple(ArmSpec(**a) for a in raw["arms"]),
                      "guardrails": tuple(Guardrail(**g) for g in raw.get("guardrails", [])),
                      "ramp": tuple((float(t), float(w)) for t, w in raw.get("ramp", []))})



@dataclass
class ExperimentStore:
    url: str
    fleet: str = "imask-workers"
    delay_s: float = DEFAULT_DELAY_S
    client: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.client is None:
            self.client = redis.Redis.from_url(self.url, socket_timeout=2.0, socket_connect_timeout=2.0)

    def _key(self, *parts: str) -> str:
        return ":".join(("imask:exp", self.fleet, *parts))

    # -- reading -----------------------------------------------------------------------------------------------
    def active(self) -> str | None:
        raw = self.client.get(self._key("active"))
        return raw.decode() if raw else None

    def spec(self, name: str) -> ExperimentSpec:
        raw = self.client.get(self._key(name, "spec"))
        if raw is None:
            raise ExperimentError(f"no experiment {name!r} in fleet {self.fleet!r}")
        return ExperimentSpec.from_dict(json.loads(raw))

    def history(self, name: str) -> ConfigHistory:
        history = ConfigHistory()
        for raw in self.client.lrange(self._key(name, "configs"), 0, -1):
            history.add(ExperimentConfig.from_dict(json.loads(raw)))
        return history

    def latest(self, name: str) -> ExperimentConfig:
        config = self.history(name).latest
        if config is None:
            raise ExperimentError(f"no experiment {name!r} in fleet {self.fleet!r}")
        return config

    def events(self, name: str) -> list[dict[str, Any]]:
        return [json.loads(raw) for raw in self.client.lrange(self._key(name, "events"), 0, -1)]

    def names(self) -> list[str]:
        prefix = self._key("")
        return sorted({k.decode()[len(prefix):].rsplit(":", 1)[0]
                       for k in self.client.scan_iter(match=prefix + "*:spec")})

    # -- writing -----------------------------------------------------------------------------------------------
    def create(self, spec: ExperimentSpec, reason: str = "created") -> ExperimentConfig:
        current = self.active()
        if current and current != spec.name and self.latest(current).state not in TERMINAL:
            raise ExperimentError(f"experiment {current!r} still routes fleet {self.fleet!r}: promote, roll back "
                                  "or stop it first")
        if self.client.exists(self._key(spec.name, "spec")):
            raise ExperimentError(f"experiment {spec.name!r} exists already")
        spec = ExperimentSpec(**{**spec.__dict__, "salt": spec.salt or spec.name, "created_us": now_us()})
        self.client.set(self._key(spec.name, "spec"), json.dumps(spec.to_dict()))
        # A targeted experiment starts with no camera in it: the router adds those that match at its first check.
        config = self._append(spec.name, {a.name: a.weight for a in spec.arms}, "running", reason, spec,
                              targets=() if spec.target else None)
        self.client.set(self._key("active"), spec.name)
        return config

    def set_weights(self, name: str, weights: dict[str, float], state: str = "running", reason: str = "",
                    actor: str = "operator") -> ExperimentConfig:
        latest = self.latest(name)
        if latest.state in TERMINAL:
            raise ExperimentError(f"experiment {name!r} is {latest.state}; create a new one")
        unknown = set(weights) - {a.name for a in latest.arms}
        if unknown:
            raise ExperimentError(f"unknown arm(s) {sorted(unknown)}")
        return self._append(name, weights, state, reason, self.spec(name), actor, latest.targets)

    def set_targets(self, name: str, cameras: set[str], reason: str, actor: str = "router") -> ExperimentConfig:
        """A new config with the same weights and these cameras taking part (a targeted experiment)."""
        latest = self.latest(name)
        if latest.state in TERMINAL:
            raise ExperimentError(f"experiment {name!r} is {latest.state}; create a new one")
        return self._append(name, {a.name: a.weight for a in latest.arms}, latest.state, reason, self.spec(name),
                            actor, tuple(sorted(cameras)))

    def _append(self, name: str, weights: dict[str, float], state: str, reason: str, spec: ExperimentSpec,
                actor: str = "operator", targets: tuple[str, ...] | None = None) -> ExperimentConfig:
        key = self._key(name, "configs")
        with self.client.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    version = int(pipe.llen(key)) + 1
                    arms = tuple(ArmSpec(a.name, a.variant, float(weights.get(a.name, 0.0))) for a in spec.arms)
                    try:
                        config = ExperimentConfig(name, spec.salt or name, arms, version,
                                                  now_us() + int(self.delay_s * 1e6), state, spec.shadow_sample,
                                                  reason, targets)
                    except ValueError as exc:
                        raise ExperimentError(str(exc)) from None
                    pipe.multi()
                    pipe.rpush(key, json.dumps(config.to_dict()))
                    pipe.rpush(self._key(name, "events"), json.dumps({
                        "ts_us": now_us(), "version": version, "state": state, "actor": actor, "reason": reason,
                        "weights": {a.name: a.weight for a in arms}, "effective_us": config.effective_us,
                        **({} if targets is None else {"targets": len(targets)})}))
                    pipe.execute()
                    return config
                except redis.WatchError:
                    continue  # another writer appended first: number after it

