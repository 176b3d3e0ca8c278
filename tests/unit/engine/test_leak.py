"""No face that an independent detector (YuNet) finds in the original survives masking, on real footage."""

from __future__ import annotations

from pathlib import Path

import cv2
import pytest

from imask.engine import FrameInput, MaskingEngine
from imask.evaluation.leakcheck import check_leak
from imask.media import iter_video, open_video
from imask.types import Image

CLIPS = [
    "video/short_hamilton_clip.mp4",
    "video/facenet_pytorch_crowd_1080p.mp4",
    "video/Megamind.avi",
    "video/intel_ccby4/asl_gestures/*.mkv",
    "video/intel_ccby4/*.gif",
]
SAMPLE_EVERY = 3
# Measured with the default variant: 53 of 1,337 YuNet faces at confidence >= 0.5 are re-found after masking
# (4.0%: cartoon faces in Megamind, hands YuNet takes for faces in the sign-language clips, motion-blurred
# profile close-ups in Hamilton, head-shaped blur blobs); no confident face re-found confidently. The rate bound
# catches a regression.
MAX_LEAK_RATE_ALL = 0.05


def _clips(data_dir: Path) -> list[Path]:
    out: list[Path] = []
    for pattern in CLIPS:
        out += sorted(data_dir.glob(pattern))
    return out


def test_no_leak_on_astronaut(engine: MaskingEngine, astronaut_image: Image) -> None:
    result = engine.process([FrameInput("leak-astro", 0, astronaut_image)])[0]
    check = check_leak(astronaut_image, result.image)
    # YuNet gives the featureless oval left by the mask ~0.5 (a head-shaped blob), never a confident face.
    assert check.reliable_faces == 1 and check.reliable_leaks == []


@pytest.mark.long  # ~2 min on 2 cores; `make eval` reports the same check on the same clips
def test_no_leak_on_sample_clips(engine: MaskingEngine, data_dir: Path) -> None:
    clips = _clips(data_dir)
    assert len(clips) >= 20
    faces = reliable = 0
    leaks: list[str] = []
    reliable_leaks: list[str] = []
    for clip in clips:
        cap, _ = open_video(clip)
        try:
            for seq, frame in enumerate(iter_video(cap)):
                # Every frame goes through the engine (the tracker needs the sequence); YuNet checks a sample.
                result = engine.process([FrameInput(f"leak:{clip.name}", seq, frame)])[0]
                if seq % SAMPLE_EVERY:
                    continue
                check = check_leak(frame, result.image)
                faces += len(check.original_confidences)
                reliable += check.reliable_faces
                leaks += [f"{clip.name}#{seq}" for _ in check.leaked]
                reliable_leaks += [f"{clip.name}#{seq} {c0:.2f}->{c1:.2f} at {tuple(round(v) for v in box)}"
                                   for c0, c1, box in check.reliable_leaks]
        finally:
            cap.release()
    assert reliable > 500, f"YuNet found only {reliable} confident faces: the check would prove little"
    assert reliable_leaks == [], f"{len(reliable_leaks)} confident faces survived masking: {reliable_leaks[:10]}"
    assert len(leaks) / faces <= MAX_LEAK_RATE_ALL, f"{len(leaks)} of {faces} faces re-found: {leaks[:20]}"


@pytest.mark.parametrize("name", ["facenet_multiface.jpg", "two_people.jpg", "obama_and_biden.jpg"])
def test_no_leak_on_photos(engine: MaskingEngine, data_dir: Path, name: str) -> None:
    image = cv2.imread(str(data_dir / "photos" / name))
    result = engine.process([FrameInput(f"leak:{name}", 0, image)])[0]
    check = check_leak(image, result.image)
    assert check.reliable_faces >= 2 and check.reliable_leaks == []
