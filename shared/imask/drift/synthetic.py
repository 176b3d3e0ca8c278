"""Synthetic camera windows with window-to-window noise like a real scene's, and the camera-side changes the drift
monitor must tell (unit tests, `make drift-scenarios`)."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterator

import numpy as np

from imask.drift.window import FACE_SIZE_LOG2, SCORE_CENTRES, Window

Change = Callable[[Window, np.random.Generator], Window]


@dataclasses.dataclass(frozen=True)
class Scene:
    faces: float = 2.0  # faces per frame
    face_px: float = 60.0  # median sqrt(box area)
    luma: float = 110.0
    contrast: float = 45.0
    sharp_ratio: float = 1.6  # Laplacian variance / grey variance
    fps: float = 6.0
    window_s: float = 10.0
    latency_ms: float = 150.0


def windows(camera_id: str, scene: Scene, count: int, seed: int = 0, variant: str = "default",
            start_ms: int = 1_700_000_000_000) -> Iterator[Window]:
    """`count` consecutive 10 s windows of a steady scene."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        yield window(camera_id, scene, rng, variant, start_ms + int(i * scene.window_s * 1000))


def window(camera_id: str, scene: Scene, rng: np.random.Generator, variant: str = "default",
           start_ms: int = 1_700_000_000_000) -> Window:
    frames = int(scene.fps * scene.window_s)
    faces_mean = max(0.0, rng.normal(scene.faces, 0.08 * scene.faces + 0.05))
    detections = round(faces_mean * frames)
    scores = np.clip(rng.beta(8, 2, detections), 0, 0.9999)
    score_hist = np.bincount(np.minimum((scores / 0.05).astype(int), len(SCORE_CENTRES) - 1),
                             minlength=len(SCORE_CENTRES))
    # A window's faces are a few people seen in every frame: sizes cluster around a per-window median.
    median = scene.face_px * float(np.exp(rng.normal(0, 0.08)))
    sizes = median * np.exp(rng.normal(0, 0.25, detections))
    edges = [2 ** (a + b) / 2 for a, b in itertools.pairwise(FACE_SIZE_LOG2)]
    size_hist = np.bincount(np.searchsorted(np.log2(edges), np.log2(np.maximum(sizes, 1))),
                            minlength=len(FACE_SIZE_LOG2))
    luma = rng.normal(scene.luma, 0.04 * scene.luma)
    contrast = max(1.0, rng.normal(scene.contrast, 0.05 * scene.contrast))
    sharpness = contrast ** 2 * scene.sharp_ratio * float(np.exp(rng.normal(0, 0.12)))
    return Window(camera_id, variant, "", start_ms, start_ms + int(scene.window_s * 1000), frames, faces_mean,
                  tuple(int(v) for v in score_hist), tuple(int(v) for v in size_hist), frames, luma, contrast,
                  sharpness, max(0.0, rng.normal(0.03, 0.005)), max(0.0, rng.normal(0.02, 0.004)),
                  abs(rng.normal(1.5, 0.3)), abs(rng.normal(6.0, 1.5)), max(0.0, rng.normal(0.002, 0.002)),
                  max(0.0, rng.normal(0.05, 0.01)), rng.normal(scene.latency_ms, 8.0),
                  scene_offset=2.0)  # a steady view: a couple of grey levels off its baseline (people walking)


def halve_luminance(w: Window, rng: np.random.Generator) -> Window:
    return dataclasses.replace(w, luma_mean=w.luma_mean / 2, luma_std=w.luma_std / 2, sharpness=w.sharpness / 4,
                               dark_fraction=min(1.0, w.dark_fraction * 3), bright_fraction=0.0)


def faces_to_a_third(w: Window, rng: np.random.Generator) -> Window:
    """Every face a third the size (sqrt area /3: 1.58 octaves down the log bins)."""
    size = np.zeros(len(w.face_size_hist), dtype=int)
    for i, count in enumerate(w.face_size_hist):
        target = FACE_SIZE_LOG2[i] - np.log2(3)
        j = int(np.argmin(np.abs(np.asarray(FACE_SIZE_LOG2) - target)))
        size[j] += count
    return dataclasses.replace(w, face_size_hist=tuple(int(v) for v in size))


def cover(w: Window, rng: np.random.Generator) -> Window:
    return dataclasses.replace(w, faces_mean=0.0, score_hist=(0,) * len(w.score_hist),
                               face_size_hist=(0,) * len(w.face_size_hist), luma_mean=abs(rng.normal(3, 1)),
                               luma_std=abs(rng.normal(1.0, 0.3)), sharpness=abs(rng.normal(0.5, 0.2)),
                               dark_fraction=1.0, bright_fraction=0.0, scene_change_max=0.5)


def blur(w: Window, rng: np.random.Generator) -> Window:
    """A defocused lens: Laplacian variance falls ~40x, contrast a little; fewer faces found."""
    contrast = w.luma_std * 0.85
    return dataclasses.replace(w, luma_std=contrast, sharpness=contrast ** 2 * 0.04 * float(np.exp(rng.normal(0, 0.1))),
                               faces_mean=w.faces_mean * 0.6)


def shift(w: Window, rng: np.random.Generator) -> Window:
    """The camera turned to another part of the scene: other light, other texture."""
    contrast = w.luma_std * 0.6
    return dataclasses.replace(w, luma_mean=w.luma_mean * 1.35, luma_std=contrast,
                               sharpness=contrast ** 2 * w.sharpness_norm * 2.2, dark_fraction=w.dark_fraction + 0.1,
                               scene_change_max=max(w.scene_change_max, 40.0), scene_offset=max(w.scene_offset, 30.0))


def blind(w: Window, rng: np.random.Generator) -> Window:
    return dataclasses.replace(w, luma_mean=235.0, luma_std=15.0, sharpness=60.0, bright_fraction=0.8,
                               dark_fraction=0.0, faces_mean=0.1)


def weaker_detector(found: float) -> Change:
    """The same frames masked by a detector that finds `found` of the faces (and with lower scores)."""
    def change(w: Window, rng: np.random.Generator) -> Window:
        scores = np.asarray(w.score_hist, dtype=float) * found
        shifted = np.zeros_like(scores)
        shifted[:-2] = scores[2:]
        shifted[0] += scores[:2].sum()
        return dataclasses.replace(w, faces_mean=w.faces_mean * found,
                                   score_hist=tuple(round(v) for v in shifted),
                                   face_size_hist=tuple(round(v * found) for v in w.face_size_hist))
    return change


CHANGES: dict[str, Change] = {"halved_luminance": halve_luminance, "faces_to_a_third": faces_to_a_third,
                              "covered": cover, "defocused": blur, "shifted": shift, "blinded": blind}


# ------------------------------------------------------------------------------------------- frames.meta records

PictureChange = Callable[[dict[str, float]], dict[str, float]]


def covered_picture(p: dict[str, float]) -> dict[str, float]:
    """A lens covered: near-black and flat (what the engine's picture statistics give for a taped lens)."""
    return {**p, "luma_mean": 3.0, "luma_std": 1.0, "sharpness": 0.5, "dark_fraction": 1.0, "bright_fraction": 0.0}


def meta_records(camera_id: str, scene: Scene, start_ms: int, seconds: float, seed: int = 0,
                 variant: str = "default", seq0: int = 0, picture: PictureChange | None = None,
                 faces: float | None = None) -> list[tuple[int, bytes]]:
    """A steady camera's frames.meta records, (capture ms, serialized FrameMeta), at `scene.fps` from `start_ms`:
    faces (detections with scores and sizes), stage timings and picture statistics around the scene's values,
    with a per-10 s drift of the scene's light and face sizes like a real one's. `picture` changes each frame's
    picture statistics (a tamper), `faces` the faces per frame."""
    from imask.v1 import frames_pb2 as pb

    rng = np.random.default_rng(seed)
    out = []
    n_frames = int(seconds * scene.fps)
    per_window: dict[int, tuple[float, float]] = {}
    for n in range(n_frames):
        ts = start_ms + round(n * 1000 / scene.fps)
        slot = (ts - start_ms) // int(scene.window_s * 1000)
        if slot not in per_window:
            per_window[slot] = (float(np.exp(rng.normal(0, 0.03))), float(np.exp(rng.normal(0, 0.08))))
        light, size = per_window[slot]
        count = int(rng.poisson(scene.faces if faces is None else faces))
        meta = pb.FrameMeta(camera_id=camera_id, seq=seq0 + n, capture_ts_us=ts * 1000, width=1280, height=720,
                            variant=variant, faces_masked=count)
        for _ in range(count):
            side = scene.face_px * size * float(np.exp(rng.normal(0, 0.25)))
            x, y = float(rng.uniform(0, 1280 - side)), float(rng.uniform(0, 720 - min(side, 700)))
            meta.detections.add(x1=x, y1=y, x2=x + side, y2=y + side,
                                score=float(np.clip(rng.beta(8, 2), 0.0, 0.9999)))
        t = meta.timings
        t.inference_ms = float(rng.normal(25, 3))
        t.end_to_end_ms = float(max(1.0, rng.normal(scene.latency_ms, 15)))
        contrast = max(1.0, scene.contrast * light * float(np.exp(rng.normal(0, 0.03))))
        values = {"luma_mean": scene.luma * light + float(rng.normal(0, 1.5)), "luma_std": contrast,
                  "sharpness": contrast ** 2 * scene.sharp_ratio * float(np.exp(rng.normal(0, 0.1))),
                  "dark_fraction": max(0.0, float(rng.normal(0.03, 0.005))),
                  "bright_fraction": max(0.0, float(rng.normal(0.02, 0.004))),
                  "scene_change": abs(float(rng.normal(1.5, 0.3))),
                  "scene_offset": abs(float(rng.normal(2.0, 0.4)))}
        if picture is not None:
            values = picture(values)
        meta.picture.CopyFrom(pb.PictureStats(**values))
        out.append((ts, meta.SerializeToString()))
    return out
