"""The drift monitor: windows in, alert transitions, scores and references out. Pure: the service feeds it the
windows it reads and publishes what it returns.

Per camera:
- **References** per variant: the camera's first `reference_windows` windows under a variant (a new camera, or a
  camera after a switch that raised no regression), or what an operator captured; frozen until reset.
- **Drift** of each feature against the reference of the camera's current variant, **tamper** rules against the
  camera's picture reference (the current variant's, else its newest: pictures do not depend on the variant).
- **Each camera its own control**: when its variant changes, its next `regression_windows` windows are compared
  with its own windows under the previous variant; a fall of faces per frame or score mass raises
  `variant_regression` (labels: the new variant), which the router counts as a failed guardrail.
- **Hysteresis**: an episode opens after `breach_windows` breaching windows in a row and ends after
  `recover_windows` clean ones, so a flapping camera raises one episode.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from imask.drift import rules
from imask.drift.rules import Check, ReferenceModel, Thresholds
from imask.drift.window import Reference, Window


@dataclass
class Hysteresis:
    """One episode's state: open after `breach` breaching observations in a row, closed after `recover` clean."""

    breach: int
    recover: int
    open: bool = False
    run: int = 0  # consecutive observations against the current state

    def update(self, breached: bool) -> str | None:
        """'open', 'resolve' or None."""
        if breached != self.open:
            self.run += 1
            if self.run >= (self.breach if breached else self.recover):
                self.open, self.run = breached, 0
                return "open" if breached else "resolve"
        else:
            self.run = 0
        return None


@dataclass(frozen=True)
class MonitorConfig:
    reference_windows: int = 18
    breach_windows: int = 3
    recover_windows: int = 3
    regression_windows: int = 12  # windows after a switch compared with the camera's own before
    regression_breach_windows: int = 2
    before_windows: int = 6  # the camera's last windows under its previous variant
    thresholds: Thresholds = field(default_factory=Thresholds)

    def __post_init__(self) -> None:
        for name in ("reference_windows", "breach_windows", "recover_windows", "regression_windows",
                     "regression_breach_windows", "before_windows"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")


@dataclass(frozen=True)
class Transition:
    """An alert event to send: an episode opened or resolved."""

    kind: str
    camera_id: str
    labels: dict[str, str]  # variant, feature, test: the same in the opening and the ending event
    action: str  # open, resolve
    detail: str
    window_end_ms: int


@dataclass(frozen=True)
class Score:
    camera_id: str
    variant: str
    feature: str
    test: str
    value: float
    breached: bool  # the episode is open


@dataclass
class Result:
    transitions: list[Transition] = field(default_factory=list)
    scores: list[Score] = field(default_factory=list)
    captured: Reference | None = None


@dataclass
class _Switch:
    baseline: str
    variant: str
    before: list[Window]
    seen: int = 0


@dataclass
class CameraState:
    recent: deque[Window]
    references: dict[str, Reference] = field(default_factory=dict)
    pending: list[Window] = field(default_factory=list)
    episodes: dict[tuple[str, str, str, str], Hysteresis] = field(default_factory=dict)
    opened: dict[tuple[str, str, str, str], str] = field(default_factory=dict)  # key -> detail at opening
    variant: str | None = None
    switch: _Switch | None = None
    last_end_ms: int = 0
    models: dict[str, ReferenceModel] = field(default_factory=dict)


class DriftMonitor:
    def __init__(self, config: MonitorConfig | None = None, clock_ms: Callable[[], int] | None = None) -> None:
        import time

        self.config = config or MonitorConfig()
        self.cameras: dict[str, CameraState] = {}
        self._clock = clock_ms or (lambda: int(time.time() * 1000))

    # -- references -------------------------------------------------------------------------------------------
    def camera(self, camera_id: str) -> CameraState:
        if camera_id not in self.cameras:
            self.cameras[camera_id] = CameraState(deque(maxlen=max(self.config.before_windows * 2, 12)))
        return self.cameras[camera_id]

    def set_reference(self, reference: Reference) -> None:
        state = self.camera(reference.camera_id)
        state.references[reference.variant] = reference
        state.models.pop(reference.variant, None)
        state.pending = [w for w in state.pending if w.variant != reference.variant]

    def drop_reference(self, camera_id: str, variant: str | None = None) -> None:
        state = self.camera(camera_id)
        for v in [variant] if variant is not None else list(state.references):
            state.references.pop(v, None)
            state.models.pop(v, None)
        state.pending = []

    def _model(self, state: CameraState, variant: str) -> ReferenceModel | None:
        ref = state.references.get(variant)
        if ref is None:
            return None
        if variant not in state.models:
            state.models[variant] = ReferenceModel(ref)
        return state.models[variant]

    def _picture_model(self, state: CameraState, variant: str) -> ReferenceModel | None:
        model = self._model(state, variant)
        if model is not None and model.picture:
            return model
        for ref in sorted(state.references.values(), key=lambda r: r.created_ms, reverse=True):
            other = self._model(state, ref.variant)
            if other is not None and other.picture:
                return other
        return None

    # -- windows ----------------------------------------------------------------------------------------------
    def observe(self, window: Window) -> Result:
        """One closed window of one camera (windows of a camera in order; a repeated or older one is ignored)."""
        state = self.camera(window.camera_id)
        result = Result()
        if window.end_ms <= state.last_end_ms:
            return result
        state.last_end_ms = window.end_ms
        cfg, th = self.config, self.config.thresholds
        variant = window.variant
        if state.variant is not None and variant != state.variant:
            self._switched(state, window, result)
        state.variant = variant
        checks: list[Check] = []
        # Each camera its own control after a switch.
        switch = state.switch
        if switch is not None and switch.variant == variant:
            switch.seen += 1
            checks += rules.regression_checks(switch.before, window, th)
        model = self._model(state, variant)
        if model is not None:
            checks += rules.scalar_checks(model, window, th, picture=True)
            checks += rules.histogram_checks(model, window, th)
        picture_model = self._picture_model(state, variant)
        if picture_model is not None:
            checks += rules.tamper_checks(picture_model, window, th)
            if model is None:  # no reference of this variant yet: the picture still has one
                checks += [c for c in rules.scalar_checks(picture_model, window, th, picture=True)
                           if c.feature in ("luma_mean", "sharpness")]
        regression_open = False
        seen: set[tuple[str, str, str, str]] = set()
        for check in checks:
            key = (check.kind, variant, check.feature, check.test)
            if check.test == "psi":
                result.scores.append(Score(window.camera_id, variant, check.feature, check.test, check.score, False))
                continue
            seen.add(key)
            episode = state.episodes.get(key)
            if episode is None:
                breach = cfg.regression_breach_windows if check.kind == rules.REGRESSION else cfg.breach_windows
                episode = state.episodes[key] = Hysteresis(breach, cfg.recover_windows)
            action = episode.update(check.breached)
            if action is not None:
                self._transition(state, key, action, check.detail, window, result)
            result.scores.append(Score(window.camera_id, variant, check.feature, check.test, check.score,
                                       episode.open))
            regression_open |= check.kind == rules.REGRESSION and episode.open
        if switch is not None and switch.variant == variant and switch.seen >= cfg.regression_windows \
                and not regression_open:
            self._end_switch(state, window, result, "the comparison period passed")
        # The reference of a variant the camera has none of: its first clean windows.
        if variant not in state.references:
            if regression_open or any(state.episodes[k].open for k in state.episodes if k[0] in rules.TAMPER_KINDS):
                state.pending = []
            else:
                state.pending = [w for w in state.pending if w.variant == variant] + [window]
                if len(state.pending) >= cfg.reference_windows:
                    source = "after_switch" if len(state.references) else "first_windows"
                    ref = Reference(window.camera_id, variant, tuple(state.pending), source, self._clock())
                    self.set_reference(ref)
                    result.captured = ref
        state.recent.append(window)
        return result

    def _switched(self, state: CameraState, window: Window, result: Result) -> None:
        previous = state.variant or ""
        if state.switch is not None:
            self._end_switch(state, window, result, f"the camera moved to {window.variant}")
        # Drift episodes of the previous variant end: its reference no longer applies to this camera's frames.
        for key in [k for k, e in state.episodes.items() if e.open and k[0] == rules.DRIFT and k[1] == previous]:
            self._transition(state, key, "resolve", f"the camera moved to {window.variant}", window, result)
        before = [w for w in state.recent if w.variant == previous][-self.config.before_windows:]
        if not before and previous in state.references:
            before = list(state.references[previous].windows)[-self.config.before_windows:]
        if before:
            state.switch = _Switch(previous, window.variant, before)

    def _end_switch(self, state: CameraState, window: Window, result: Result, why: str) -> None:
        switch = state.switch
        state.switch = None
        if switch is None:
            return
        for key in [k for k in state.episodes if k[0] == rules.REGRESSION and k[1] == switch.variant]:
            if state.episodes[key].open:
                self._transition(state, key, "resolve", why, window, result)
            del state.episodes[key]

    def _transition(self, state: CameraState, key: tuple[str, str, str, str], action: str, detail: str,
                    window: Window, result: Result) -> None:
        kind, variant, feature, test = key
        episode = state.episodes.get(key)
        if episode is not None and action == "resolve":
            episode.open, episode.run = False, 0
        if action == "open":
            state.opened[key] = detail
        else:
            opened = state.opened.pop(key, "")
            detail = f"{detail} (opened with: {opened})" if opened else detail
        result.transitions.append(Transition(kind, window.camera_id, {"variant": variant, "feature": feature,
                                                                      "test": test}, action, detail,
                                             window.end_ms))

    def open_episodes(self) -> Iterable[tuple[str, tuple[str, str, str, str]]]:
        for camera, state in self.cameras.items():
            for key, episode in state.episodes.items():
                if episode.open:
                    yield camera, key
