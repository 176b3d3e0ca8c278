"""The features of a camera's window: names and types, one list for the Feast definitions (repo.py), the rows the
stream pushes (windows.feature_row) and the readers. No Feast import here (it takes seconds).

Views: `camera_stats_10s` (tumbling 10 s) and `camera_stats_60s` (60 s hopping every 10 s), keyed by the entity
`camera` (join key `camera_id`): every record of the camera. `camera_variant_stats_10s` and `_60s`, keyed by
`camera` and `variant` (join keys `camera_id`, `variant`): the camera's frames masked by that variant (drop records
name no variant: they count in the camera's rows only). Same features, but the variant views have no `variant`
feature (it is their key). Each row's event timestamp is its window's end.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from imask.features.windows import DROP_REASONS, PERCENTILES, PICTURE_FIELDS, STAGES

Kind = Literal["int", "float", "str", "int_list"]
ENTITY = "camera"
JOIN_KEY = "camera_id"
VARIANT_ENTITY = "variant"
VARIANT_KEY = "variant"
EVENT_TIMESTAMP = "event_timestamp"
CREATED = "created"


@dataclass(frozen=True)
class Feature:
    name: str
    kind: Kind
    doc: str


FEATURES: tuple[Feature, ...] = (
    Feature("window_start_ms", "int", "start of the window, ms since the epoch (event time: capture time)"),
    Feature("window_end_ms", "int", "end of the window (exclusive), ms since the epoch; the row's event timestamp; "
            "freshness is now minus this"),
    Feature("frames_in", "int", "frames that entered: frames.meta records plus frames.dlq records"),
    Feature("frames_out", "int", "masked frames (frames.meta records, fail-closed ones included)"),
    Feature("drops", "int", "frames.dlq records"),
    Feature("fps_in", "float", "frames_in per second of window"),
    Feature("fps_out", "float", "frames_out per second of window"),
    Feature("faces_mean", "float", "faces masked per frame, mean"),
    Feature("faces_p95", "float", "faces masked per frame, 95th percentile (nearest rank)"),
    Feature("fail_closed_rate", "float", "share of masked frames that failed closed"),
    Feature("held_track_rate", "float", "share of masked faces held by the tracker (detector missed them)"),
    Feature("drop_rate", "float", "drops / frames_in"),
    *(Feature(f"drop_rate_{reason}", "float", f"drops for reason {reason} / frames_in") for reason in DROP_REASONS),
    Feature("late_frames", "int", "records of this camera that came after their window had closed (past the grace "
            "period), counted in the camera's next 10 s window (0 in 60 s and per-variant rows)"),
    Feature("score_hist", "int_list", "detection scores (held tracks excluded), counts in windows.SCORE_EDGES bins"),
    Feature("face_size_hist", "int_list", "sqrt(box area) in pixels of detected faces, counts in "
            "windows.FACE_SIZE_EDGES bins"),
    Feature("picture_frames", "int", "frames carrying picture statistics (detected frames)"),
    *(Feature(name, "float", f"PictureStats.{name}, mean over picture_frames") for name in PICTURE_FIELDS),
    Feature("scene_change_max", "float", "PictureStats.scene_change, max"),
    *(Feature(f"{stage}_ms_p{q}", "float", f"StageTimings.{stage}_ms, {q}th percentile (nearest rank, 4% bins)")
      for stage in STAGES for q in PERCENTILES),
    Feature("variant", "str", "the variant of most frames"),
    Feature("arm", "str", "the experiment arm of most frames (\"\" when none)"),
)
FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)


@dataclass(frozen=True)
class View:
    name: str
    size_s: int
    step_s: int
    ttl_s: int  # Feast's TTL (not enforced on online reads: readers judge freshness from window_end_ms)
    by_variant: bool = False

    @property
    def push_source(self) -> str:
        return f"{self.name}_push"

    @property
    def keys(self) -> tuple[str, ...]:
        return (JOIN_KEY, VARIANT_KEY) if self.by_variant else (JOIN_KEY,)

    @property
    def features(self) -> tuple[Feature, ...]:
        return tuple(f for f in FEATURES if f.name not in self.keys)


VIEW_10S = View("camera_stats_10s", 10, 10, ttl_s=300)
VIEW_60S = View("camera_stats_60s", 60, 10, ttl_s=900)
VARIANT_VIEW_10S = View("camera_variant_stats_10s", 10, 10, ttl_s=300, by_variant=True)
VARIANT_VIEW_60S = View("camera_variant_stats_60s", 60, 10, ttl_s=900, by_variant=True)
VIEWS: tuple[View, ...] = (VIEW_10S, VIEW_60S, VARIANT_VIEW_10S, VARIANT_VIEW_60S)

# One FeatureService per consumer: the features it reads. The router compares arms: its rows are per camera and
# variant (entity rows name both); drift and operators read per camera.
ROUTER_FEATURES = ("window_end_ms", "frames_out", "fps_in", "fail_closed_rate", "held_track_rate", "faces_mean",
                   "inference_ms_p95", "end_to_end_ms_p95", "end_to_end_ms_p99", "arm")
DRIFT_FEATURES = ("window_end_ms", "frames_out", "faces_mean", "faces_p95", "score_hist", "face_size_hist",
                  "picture_frames", *PICTURE_FIELDS, "scene_change_max")
SERVICES: dict[str, tuple[tuple[View, tuple[str, ...]], ...]] = {
    "router": ((VARIANT_VIEW_60S, ROUTER_FEATURES),),
    "drift": ((VIEW_60S, DRIFT_FEATURES),),
    "operators": ((VIEW_10S, FEATURE_NAMES), (VIEW_60S, FEATURE_NAMES)),
}


def ms_to_datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def feast_row(camera_id: str, start_ms: int, end_ms: int, features: dict[str, Any], created: datetime,
              variant: str | None = None) -> dict[str, Any]:
    """A row to push: join key(s) (`variant` given: a row of a variant view), timestamps, then the view's features
    in FEATURES order."""
    row: dict[str, Any] = {JOIN_KEY: camera_id}
    if variant is not None:
        row[VARIANT_KEY] = variant
    row.update({EVENT_TIMESTAMP: ms_to_datetime(end_ms), CREATED: created, "window_start_ms": start_ms,
                "window_end_ms": end_ms})
    for name in FEATURE_NAMES[2:]:
        if variant is None or name != VARIANT_KEY:
            row[name] = features[name]
    return row
