"""Targeting an experiment by a feature rule: only the cameras whose current features match take part (for example
`face_size_p50 < 24`: cameras whose median face is under 24 px get the high-resolution challenger); every other
camera stays on control.

The router judges the rule every check interval, reading the cameras it has seen in frames.meta through the
`FeatureReader` (Feast's online store), and writes the matching cameras into a new config version (`targets`,
effective a little later like any change), so every worker routes a camera the same way at the same frame. A camera
matches only with fresh features (its newest window within the reader's `stale_after_s`): a stale or missing row
never counts as a match, whatever it holds.

Rule features: any number of the view (`fail_closed_rate`, `faces_mean`, `luma_mean`, ...), or a percentile of a
histogram, `face_size_pNN` / `score_pNN` (nearest rank over the fixed bins, reported as the bin's middle; the
open last bin as its lower edge). Face size is sqrt(box area) in pixels, close to the height of a detector's boxes.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from imask.features.schema import FEATURE_NAMES, VIEW_60S, VIEWS
from imask.features.store import CameraFeatures, FeatureReader
from imask.features.windows import FACE_SIZE_EDGES, SCORE_EDGES

OPS: dict[str, Callable[[float, float], bool]] = {"<": operator.lt, "<=": operator.le, ">": operator.gt,
                                                  ">=": operator.ge, "==": operator.eq, "!=": operator.ne}
HISTOGRAMS = {"face_size": ("face_size_hist", FACE_SIZE_EDGES), "score": ("score_hist", SCORE_EDGES)}
_RULE = re.compile(r"^\s*(?:(?P<view>[a-z0-9_]+)\.)?(?P<feature>[a-z0-9_]+)\s*(?P<op><=|>=|==|!=|<|>)\s*"
                   r"(?P<value>[-+0-9.eE]+)\s*$")
_PERCENTILE = re.compile(r"^(?P<hist>face_size|score)_p(?P<q>[0-9]{1,2})$")

# Cameras -> those whose fresh features match the rule (the router's view of the feature store).
Targeter = Callable[["FeatureRule", list[str]], set[str]]


def histogram_percentile(counts: list[int], edges: tuple[float, ...], q: float) -> float | None:
    """Nearest-rank q-th percentile of fixed-bin counts, as its bin's middle (None: empty)."""
    total = sum(counts)
    if total == 0:
        return None
    rank = max(1, math.ceil(q / 100 * total - 1e-9))
    seen = 0
    for i, count in enumerate(counts):
        seen += count
        if seen >= rank:
            lo, hi = edges[i], edges[i + 1]
            return float(lo if math.isinf(hi) else (lo + hi) / 2)
    raise AssertionError("unreachable: rank <= total")


@dataclass(frozen=True)
class FeatureRule:
    feature: str
    op: str
    value: float
    view: str = VIEW_60S.name

    @classmethod
    def parse(cls, text: str) -> FeatureRule:
        """`FEATURE OP NUMBER` or `VIEW.FEATURE OP NUMBER` (view: camera_stats_10s or camera_stats_60s, default
        60 s); ValueError naming what is wrong."""
        match = _RULE.match(text)
        if match is None:
            raise ValueError(f"feature rule {text!r}: expected FEATURE OP NUMBER, e.g. face_size_p50 < 24 "
                             f"(OP one of {' '.join(OPS)})")
        try:
            value = float(match["value"])
        except ValueError:
            raise ValueError(f"feature rule {text!r}: {match['value']!r} is not a number") from None
        rule = cls(match["feature"], match["op"], value, match["view"] or VIEW_60S.name)
        camera_views = {v.name for v in VIEWS if not v.by_variant}
        if rule.view not in camera_views:
            raise ValueError(f"feature rule {text!r}: view {rule.view!r} is not one of {sorted(camera_views)}")
        percentile = _PERCENTILE.match(rule.feature)
        if percentile is not None:
            if not 0 < int(percentile["q"]) <= 100:
                raise ValueError(f"feature rule {text!r}: percentile out of 1..99")
        elif rule.feature not in FEATURE_NAMES or rule.feature in ("variant", "arm", "score_hist", "face_size_hist"):
            raise ValueError(f"feature rule {text!r}: {rule.feature!r} is not a numeric feature (nor "
                             "face_size_pNN / score_pNN)")
        return rule

    def __str__(self) -> str:
        return f"{self.view}.{self.feature} {self.op} {self.value:g}"

    def value_of(self, values: Mapping[str, Any]) -> float | None:
        """The rule's feature in one view's values (None: no value)."""
        percentile = _PERCENTILE.match(self.feature)
        if percentile is not None:
            name, edges = HISTOGRAMS[percentile["hist"]]
            counts = values.get(name)
            return None if counts is None else histogram_percentile(list(counts), edges, int(percentile["q"]))
        raw = values.get(self.feature)
        return None if raw is None else float(raw)

    def matches(self, features: CameraFeatures) -> bool:
        """Whether a camera matches: fresh features whose value satisfies the rule (stale or missing: never)."""
        if not features.fresh:
            return False
        values = features.values.get(self.view) or {}
        if values.get("window_end_ms") is None:  # this view has no row, though another is fresh
            return False
        value = self.value_of(values)
        return value is not None and not math.isnan(value) and OPS[self.op](value, self.value)


def matching(rule: FeatureRule, reader: FeatureReader, cameras: Iterable[str], now: float | None = None) -> set[str]:
    """The cameras whose fresh features match, read in one call (a reader of a service keyed by camera)."""
    asked = sorted(set(cameras))
    if not asked:
        return set()
    answer = reader.read(asked, now)
    return {camera for camera in asked if rule.matches(answer[camera])}


def reader_targeter(reader: FeatureReader) -> Targeter:
    return lambda rule, cameras: matching(rule, reader, cameras)
