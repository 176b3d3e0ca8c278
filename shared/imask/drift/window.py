"""One camera window as the drift monitor reads it (a row of the features stream's 10 s view), and a reference:
the windows a camera's later windows are compared with, with their time range and a digest."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from imask.features.windows import FACE_SIZE_EDGES, SCORE_EDGES

SCORE_CENTRES: tuple[float, ...] = tuple((a + b) / 2 for a, b in itertools.pairwise(SCORE_EDGES))
# Face sizes are compared on a log2 scale (a face a third the size is the same shift at any size); the open last
# bin [512, inf) sits at 724 (one half-octave above its edge), the first [0, 8) at 5.66.
FACE_SIZE_LOG2: tuple[float, ...] = tuple(
    math.log2(math.sqrt(max(a, 4.0) * (b if math.isfinite(b) else a * 2))) for a, b in
    itertools.pairwise(FACE_SIZE_EDGES))
SCALARS = ("faces_mean", "luma_mean", "luma_std", "sharpness", "dark_fraction", "bright_fraction", "scene_change",
           "scene_change_max", "fail_closed_rate", "held_track_rate", "latency_p95_ms", "scene_offset")


@dataclass(frozen=True)
class Window:
    camera_id: str
    variant: str
    arm: str
    start_ms: int
    end_ms: int
    frames: int
    faces_mean: float
    score_hist: tuple[int, ...]
    face_size_hist: tuple[int, ...]
    picture_frames: int = 0
    luma_mean: float = 0.0
    luma_std: float = 0.0
    sharpness: float = 0.0
    dark_fraction: float = 0.0
    bright_fraction: float = 0.0
    scene_change: float = 0.0
    scene_change_max: float = 0.0
    fail_closed_rate: float = 0.0
    held_track_rate: float = 0.0
    latency_p95_ms: float = 0.0
    scene_offset: float = 0.0

    @classmethod
    def from_features(cls, camera_id: str, row: Mapping[str, Any]) -> Window | None:
        """From a feature row (the 10 s view's names); None when the row is missing or has no masked frame."""
        if row.get("window_end_ms") is None or not row.get("frames_out"):
            return None

        def f(name: str) -> float:
            value = row.get(name)
            return float(value) if value is not None else 0.0

        return cls(camera_id, str(row.get("variant") or ""), str(row.get("arm") or ""),
                   int(row.get("window_start_ms") or 0), int(row["window_end_ms"]), int(row["frames_out"]),
                   f("faces_mean"), tuple(int(v) for v in row.get("score_hist") or [0] * len(SCORE_CENTRES)),
                   tuple(int(v) for v in row.get("face_size_hist") or [0] * len(FACE_SIZE_LOG2)),
                   int(row.get("picture_frames") or 0), f("luma_mean"), f("luma_std"), f("sharpness"),
                   f("dark_fraction"), f("bright_fraction"), f("scene_change"), f("scene_change_max"),
                   f("fail_closed_rate"), f("held_track_rate"), f("end_to_end_ms_p95"), f("scene_offset"))

    @property
    def detections(self) -> int:
        return int(sum(self.score_hist))

    @property
    def score_mass(self) -> float:
        """Detection scores summed per frame: falls when a detector finds fewer faces or finds them less surely."""
        return float(np.dot(self.score_hist, SCORE_CENTRES)) / self.frames if self.frames else 0.0

    @property
    def has_picture(self) -> bool:
        return self.picture_frames > 0

    @property
    def sharpness_norm(self) -> float:
        """Sharpness against contrast (Laplacian variance / grey variance): a darker or flatter-lit picture keeps
        it, blur loses it."""
        return self.sharpness / max(self.luma_std ** 2, 1.0)

    def value(self, name: str) -> float:
        return float(getattr(self, name))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["score_hist"], out["face_size_hist"] = list(self.score_hist), list(self.face_size_hist)
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Window:
        return cls(**{**raw, "score_hist": tuple(raw["score_hist"]), "face_size_hist": tuple(raw["face_size_hist"])})


def digest_of(windows: Sequence[Window]) -> str:
    text = json.dumps([w.to_dict() for w in windows], sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Reference:
    """A camera's reference under one variant: the windows, their time range, how it was taken and a digest of the
    windows (what `imask drift reference show` prints, and what a stored copy is checked against)."""

    camera_id: str
    variant: str
    windows: tuple[Window, ...]
    source: str  # first_windows, after_switch, capture (by an operator)
    created_ms: int
    digest: str = field(default="")

    def __post_init__(self) -> None:
        if not self.windows:
            raise ValueError("a reference needs windows")
        if not self.digest:
            object.__setattr__(self, "digest", digest_of(self.windows))

    @property
    def start_ms(self) -> int:
        return min(w.start_ms for w in self.windows)

    @property
    def end_ms(self) -> int:
        return max(w.end_ms for w in self.windows)

    def values(self, name: str) -> np.ndarray[Any, np.dtype[np.float64]]:
        return np.asarray([w.value(name) for w in self.windows], dtype=np.float64)

    def picture_values(self, name: str) -> np.ndarray[Any, np.dtype[np.float64]]:
        return np.asarray([getattr(w, name) for w in self.windows if w.has_picture], dtype=np.float64)

    def pooled(self, hist: str) -> np.ndarray[Any, np.dtype[np.float64]]:
        return np.asarray(np.sum([getattr(w, hist) for w in self.windows], axis=0), dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        return {"camera_id": self.camera_id, "variant": self.variant, "source": self.source,
                "created_ms": self.created_ms, "start_ms": self.start_ms, "end_ms": self.end_ms,
                "digest": self.digest, "windows": [w.to_dict() for w in self.windows]}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Reference:
        windows = tuple(Window.from_dict(w) for w in raw["windows"])
        digest = digest_of(windows)
        if raw.get("digest") and raw["digest"] != digest:
            raise ValueError(f"reference of {raw.get('camera_id')!r}: digest {raw['digest']} does not match its "
                             f"windows ({digest})")
        return cls(raw["camera_id"], raw["variant"], windows, raw["source"], int(raw["created_ms"]), digest)

    def describe(self) -> str:
        return (f"{self.camera_id} ({self.variant or '-'}): {len(self.windows)} windows "
                f"{self.start_ms}..{self.end_ms} ms, {self.source}, {self.digest[:19]}")
