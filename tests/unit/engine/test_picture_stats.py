"""Picture statistics: the camera-side signals (covered, defocused, moved, blinded) each move the statistic that
is meant to tell them, and the engine reports them for every detected frame."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from conftest import textured
from imask.engine import FrameInput, MaskingEngine
from imask.engine.picture_stats import grey_sample, picture_stats, thumbnail, thumbnail_change
from imask.frames.meta import build_meta
from imask.types import Image
from imask.v1 import frames_pb2 as pb


def _stats(image: Image, previous: Image | None = None) -> tuple[float, ...]:
    grey = grey_sample(image)
    change = thumbnail_change(thumbnail(grey), None if previous is None else thumbnail(grey_sample(previous)))
    s = picture_stats(grey, change)
    return s.luma_mean, s.luma_std, s.sharpness, s.dark_fraction, s.bright_fraction, s.scene_change


def test_each_tamper_moves_its_own_statistic(astronaut_image: Image) -> None:
    scene = cv2.resize(astronaut_image, (1280, 720))
    mean, std, sharp, dark, bright, change = _stats(scene, scene)
    assert 40 < mean < 200 and std > 20 and sharp > 50 and change == 0.0 and dark < 0.5 and bright < 0.5
    covered = np.full_like(scene, 5)
    c_mean, c_std, c_sharp, c_dark, _, _ = _stats(covered)
    assert c_mean < 10 and c_std < 1 and c_sharp < 1 and c_dark == 1.0
    blurred = cv2.GaussianBlur(scene, (0, 0), 6)
    assert _stats(blurred)[2] < sharp / 10  # defocused: sharpness collapses, brightness does not
    assert abs(_stats(blurred)[0] - mean) < 3
    blinded = np.full_like(scene, 250)
    assert _stats(blinded)[4] == 1.0
    moved = np.roll(scene, 400, axis=1)
    assert _stats(moved, scene)[5] > 10 > _stats(scene, scene)[5]
    halved = (scene // 2).astype(np.uint8)
    assert abs(_stats(halved)[0] - mean / 2) < 2


def test_the_sample_is_at_the_detector_scale_and_grey() -> None:
    assert grey_sample(textured(720, 1280)).shape == (180, 320)
    assert grey_sample(textured(100, 200)).shape == (100, 200)


def test_engine_reports_picture_stats_in_the_frame_meta(engine: MaskingEngine, astronaut_image: Image) -> None:
    scene = cv2.resize(astronaut_image, (1280, 720))
    moved = np.roll(scene, 400, 1)
    first, second = engine.process([FrameInput("stats-cam", 0, scene), FrameInput("stats-cam", 1, moved)])
    assert first.picture is not None and second.picture is not None
    assert first.picture.scene_change == 0.0 and second.picture.scene_change > 10
    meta = build_meta(engine, "w", second, scene, pb.StageTimings(), camera_id="stats-cam", seq=1)
    assert meta.HasField("picture") and abs(meta.picture.luma_mean - second.picture.luma_mean) < 1e-3
    assert meta.brightness == meta.picture.luma_mean
    snow = np.random.default_rng(0).integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    refused = engine.process([FrameInput("stats-snow", 0, snow)])[0]
    assert refused.fail_closed and refused.picture is not None  # an unreadable frame still says what it looked like


def test_the_baseline_offset_stays_high_after_a_camera_moved_and_light_barely_moves_it(
        engine: MaskingEngine, astronaut_image: Image) -> None:
    scene = cv2.resize(astronaut_image, (640, 360))
    moved = np.ascontiguousarray(np.roll(scene, 200, axis=1))
    brighter = np.clip(scene.astype(np.int16) + 40, 0, 255).astype(np.uint8)
    frames = [scene] * 5 + [moved] * 10
    results = engine.process([FrameInput("offset-cam", i, f) for i, f in enumerate(frames)])
    offsets = [r.picture.scene_offset for r in results if r.picture is not None]
    changes = [r.picture.scene_change for r in results if r.picture is not None]
    assert offsets[:5] == pytest.approx([0.0] * 5, abs=0.5)
    assert min(offsets[5:]) > 15  # every frame after the move, not just the cut
    assert changes[5] > 15 and max(changes[6:]) < 1  # the frame-to-frame change is one spike
    lit = engine.process([FrameInput("lit-cam", 0, scene), FrameInput("lit-cam", 1, brighter)])[1]
    assert lit.picture is not None and lit.picture.scene_offset < min(offsets[5:]) / 3
