"""Inputs for the fuzz tests: real face pictures in every encoding, channel layout, bit depth and orientation the
decoders meet, the hypothesis strategies and settings the targets share, and a tally of what happened to them
(written to out/reliability/ for the reliability report).

The targets: the worker's frame processing (tests/unit/pipeline/test_fuzz_worker_frames.py), mask-api over real
gRPC (tests/unit/maskapi/test_fuzz_mask_api.py) and `imask mask` on files (tests/unit/filemask/
test_fuzz_mask_files.py). `make test` runs FUZZ_EXAMPLES (300) per target; `make reliability` runs 10,000 and
writes the tallies into out/reliability/ for the report."""

from __future__ import annotations

import json
import os
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from imask.devstack.settings import REPO_ROOT
from imask.evaluation.leakcheck import check_leak
from imask.loadtest.samples import astronaut
from imask.types import Image

# make test runs a few hundred per target; make reliability sets FUZZ_EXAMPLES=10000 (not an IMASK_* name: the
# services refuse unknown ones).
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
# make test replays the same inputs every run (a red build then always says the same thing); make reliability
# sets FUZZ_RANDOM=1 and explores new ones each time.
RANDOM = os.environ.get("FUZZ_RANDOM") == "1"
REPORT_DIR = REPO_ROOT / "out" / "reliability"
FACE = (60, 40, 125, 120)  # x1, y1, x2, y2 of the face inside the 160x160 crop


@dataclass(frozen=True)
class Encoded:
    name: str
    data: bytes
    pixels: Image  # what a correct decoder returns (BGR)
    face: tuple[int, int, int, int] | None  # the face box in those pixels, when the geometry is unchanged


def _exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """A JPEG with an APP1 Exif segment whose Orientation tag says the picture is rotated."""
    tiff = b"MM\x00\x2a\x00\x00\x00\x08" + struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0)
    tiff += b"\x00\x00\x00\x00"
    payload = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def face_pool() -> list[Encoded]:
    crop = np.ascontiguousarray(astronaut()[40:200, 160:320])
    gray = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)
    pool: list[Encoded] = []

    def add(name: str, ext: str, image: Image, params: list[int] | None = None, face: bool = True) -> None:
        ok, buf = cv2.imencode(ext, image, params or [])
        assert ok
        data = buf.tobytes()
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        pool.append(Encoded(name, data, decoded, FACE if face else None))

    for quality in (30, 60, 95):
        add(f"jpeg-q{quality}", ".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, quality])
    add("jpeg-progressive", ".jpg", crop, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    add("jpeg-gray", ".jpg", gray)
    add("png", ".png", crop)
    add("png-gray", ".png", gray)
    add("png-16bit", ".png", crop.astype(np.uint16) * 257)
    add("png-rgba", ".png", cv2.cvtColor(crop, cv2.COLOR_BGR2BGRA))
    add("jpeg-small", ".jpg", cv2.resize(crop, (80, 80)), face=False)
    add("jpeg-large", ".jpg", cv2.resize(crop, (320, 320)), face=False)
    base = pool[1].data
    for orientation in (3, 6, 8):  # rotated by 180, 90, 270: decoders apply it, sizes change for 6 and 8
        data = _exif_orientation(base, orientation)
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        pool.append(Encoded(f"jpeg-exif{orientation}", data, decoded, None))
    return pool


@dataclass
class Tally:
    """What the fuzzed inputs became; the property checks raise, this only counts for the report."""

    target: str
    outcomes: Counter[str] = field(default_factory=Counter)
    raw_egress: int = 0
    leaks_checked: int = 0

    def record(self, outcome: str) -> None:
        self.outcomes[outcome] += 1

    def write(self) -> Path:
        REPORT_DIR.mkdir(parents=True, exist_ok=True)
        path = REPORT_DIR / f"fuzz-{self.target}.json"
        path.write_text(json.dumps({"target": self.target, "inputs": sum(self.outcomes.values()),
                                    "outcomes": dict(self.outcomes), "crashes": 0, "raw_egress": self.raw_egress,
                                    "leak_checked": self.leaks_checked}, indent=2))
        return path


def assert_no_face_out(tally: Tally, original: Image | None, output: Image, face: tuple[int, int, int, int] | None,
                       fail_closed: bool) -> None:
    """The property every target shares: nothing of a face in the input survives in an output."""
    if fail_closed:
        assert int(output.max()) - int(output.min()) <= 2, "a fail-closed output carries an image"
        return
    if original is None or original.shape != output.shape:
        return
    if face is not None:
        x1, y1, x2, y2 = face
        diff = float(np.abs(original[y1:y2, x1:x2].astype(np.int16) - output[y1:y2, x1:x2].astype(np.int16)).mean())
        if diff < 6:
            tally.raw_egress += 1
        assert diff >= 6, f"the face region came out unchanged (mean difference {diff:.1f})"
    tally.leaks_checked += 1
    leak = check_leak(original, output)
    assert leak.reliable_leaks == [], f"YuNet re-found a face confidently: {leak.reliable_leaks}"


POOL = face_pool()
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=not RANDOM,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])

CAMERAS = ["lobby", "cam-1", "site.3:door"]
camera_ids = st.one_of(st.sampled_from(CAMERAS), st.text(max_size=140))


@st.composite
def image_bytes(draw: st.DrawFn) -> tuple[bytes, Encoded, bool]:
    """(bytes, the picture they came from, intact?): whole files, truncated, bit-flipped, spliced or garbage."""
    enc = draw(st.sampled_from(POOL))
    data = bytearray(enc.data)
    how = draw(st.sampled_from(["intact"] * 3 + ["truncate", "flip", "flip", "splice", "garbage"]))
    if how == "truncate":
        data = data[:draw(st.integers(0, max(0, len(data) - 1)))]
    elif how == "flip":
        for _ in range(draw(st.integers(1, 16))):
            pos = draw(st.integers(0, len(data) - 1))
            data[pos] = draw(st.integers(0, 255))
    elif how == "splice":
        start = draw(st.integers(0, len(data)))
        data[start:start] = draw(st.binary(max_size=512))
    elif how == "garbage":
        data = bytearray(draw(st.binary(max_size=4096)))
    return bytes(data), enc, how == "intact"


def _decoded(data: bytes) -> np.ndarray | None:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    return image
