"""Evaluation datasets: labelled images, pictures with no face, video clips; each with a content digest."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from imask.media import IMAGE_SUFFIXES, VIDEO_SUFFIXES
from imask.types import Image

NO_FACES = "builtin:no-faces"
LFW_FACES = "builtin:lfw-faces"  # real faces that ship in scikit-image, composed into pictures (lfw_faces.py)
MIN_VALID_SIDE = 16  # WIDER's own evaluation ignores faces smaller than this
LABEL_FILES = ("gt.json", "dlib_faces_gt.json")
# Pictures that ship inside scikit-image's wheel and hold no human face: textures, animals, objects, text, space,
# microscopy. (astronaut.png, camera.png and lfw_subset hold faces and are left out.)
NO_FACE_PICTURES = (
    "brick.png", "cell.png", "chelsea.png", "chessboard_RGB.png", "clock_motion.png", "coffee.png", "coins.png",
    "color.png", "grass.png", "gravel.png", "horse.png", "ihc.png", "logo.png", "microaneurysms.png", "moon.png",
    "motorcycle_left.png", "page.png", "phantom.png", "text.png", "hubble_deep_field.jpg", "retina.jpg",
    "rocket.jpg",
)
# Round things and animals as a doorbell or kiosk camera sees them close, filling the frame (what the close-up pass
# must not take for a face): squares cut from the pictures above (x, y, side in their pixels) and enlarged to
# CLOSE_NON_FACE_SIZE, besides three drawn ones: a ball, a wall clock and the full moon.
CLOSE_NON_FACES = {
    "chelsea.png": (20, 0, 300),  # the cat's head
    "coffee.png": (160, 13, 240),  # the cup seen from above
    "clock_motion.png": (128, 128, 256),
    "horse.png": (280, 0, 120),  # the head, in silhouette
    "phantom.png": (100, 100, 200),  # a head phantom: two dark ellipses in a round outline
}
CLOSE_NON_FACE_SIZE = 416
WIDER_ATTRIBUTES = {
    "blur": ("clear", "normal", "heavy"),
    "occlusion": ("none", "partial", "heavy"),
    "pose": ("typical", "atypical"),
}


@dataclass(frozen=True)
class Face:
    box: tuple[float, float, float, float]  # x, y, w, h in the image's pixels
    valid: bool
    attributes: dict[str, str] = field(default_factory=dict)

    @property
    def size(self) -> float:
        return max(self.box[2], self.box[3])

    @property
    def size_bucket(self) -> str:
        return "<32" if self.size < 32 else "32-63" if self.size < 64 else ">=64"


@dataclass
class Sample:
    name: str
    faces: list[Face] | None  # None: unlabelled (no-face pictures have an empty list)
    path: Path | None = None
    pixels: Image | None = None  # built-in pictures live in memory

    def image(self) -> Image:
        if self.pixels is not None:
            return self.pixels
        assert self.path is not None
        image = cv2.imread(str(self.path), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"{self.path} is not a readable image")
        return image


@dataclass
class Dataset:
    name: str
    kind: str  # "labelled" | "negatives" | "clips"
    source: str
    digest: str
    samples: list[Sample] = field(default_factory=list)
    clips: list[Path] = field(default_factory=list)


def open_dataset(spec: str) -> Dataset:
    """A dataset from a folder, a video file, `builtin:no-faces` or `builtin:lfw-faces`; ValueError says what is
    wrong."""
    if spec == NO_FACES:
        return _no_faces()
    if spec == LFW_FACES:
        from imask.evaluation.lfw_faces import compose

        pictures, parts, tag = compose()
        return Dataset("lfw-faces", "labelled", LFW_FACES, _digest(parts, tag),
                       [Sample(name, [Face(box, True) for box in boxes], pixels=pixels)
                        for name, pixels, boxes in pictures])
    path = Path(spec)
    if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
        return _clips(path.stem, [path], spec)
    if not path.is_dir():
        raise ValueError(f"dataset {spec!r} is neither a folder, a video file, {NO_FACES!r} nor {LFW_FACES!r}")
    labels = next((path / name for name in LABEL_FILES if (path / name).is_file()), None)
    if labels is None:
        clips = sorted(p for p in path.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)
        if not clips:
            raise ValueError(f"{spec}: no {' or '.join(LABEL_FILES)} and no video clips")
        return _clips(path.name, clips, spec)
    return _labelled(path, labels, spec)


def _labelled(root: Path, labels: Path, spec: str) -> Dataset:
    truth: dict[str, Any] = json.loads(labels.read_text())
    samples = []
    for name in sorted(truth):
        image_path = root / name
        if not image_path.is_file() or image_path.suffix.lower() not in IMAGE_SUFFIXES:
            raise ValueError(f"{labels}: labelled file {name!r} is missing or not an image")
        samples.append(Sample(name, [_face(f) for f in truth[name].get("faces", [])], image_path))
    digest = _digest([(s.name, s.path.read_bytes()) for s in samples if s.path], labels.read_bytes())
    return Dataset(root.name, "labelled", spec, digest, samples)


def _face(raw: dict[str, Any]) -> Face:
    x, y, w, h = (float(v) for v in raw["box"])
    attributes = {name: values[int(raw[name])] for name, values in WIDER_ATTRIBUTES.items()
                  if name in raw and 0 <= int(raw[name]) < len(values)}
    return Face((x, y, w, h), not raw.get("invalid", 0) and max(w, h) >= MIN_VALID_SIDE, attributes)


def _no_faces() -> Dataset:
    import importlib.resources

    folder = importlib.resources.files("skimage") / "data"
    samples, parts = [], []
    for name in NO_FACE_PICTURES:
        data = (folder / name).read_bytes()
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)  # gray and RGBA become BGR
        if decoded is None:
            raise ValueError(f"scikit-image's {name} did not decode")
        samples.append(Sample(name, [], pixels=decoded))
        parts.append((name, data))
        if name in CLOSE_NON_FACES:
            samples.append(Sample(f"{name}@close", [], pixels=_close_up(decoded, *CLOSE_NON_FACES[name])))
        if name == "moon.png":
            samples.append(Sample("full-moon", [], pixels=_full_moon(decoded)))
    for name, drawn in (("ball", _ball()), ("wall-clock", _wall_clock())):
        samples.append(Sample(name, [], pixels=drawn))
    return Dataset("no-faces", "negatives", NO_FACES, _digest(parts, b"close-ups/v1"), samples)


def _close_up(image: Image, x: int, y: int, side: int) -> Image:
    return cv2.resize(image[y:y + side, x:x + side], (CLOSE_NON_FACE_SIZE, CLOSE_NON_FACE_SIZE),
                      interpolation=cv2.INTER_CUBIC)


def _full_moon(surface: Image) -> Image:
    """The moon's disk, textured with the lunar surface picture, on a black sky."""
    size = CLOSE_NON_FACE_SIZE
    texture = cv2.resize(surface, (size, size), interpolation=cv2.INTER_AREA)
    picture = np.zeros_like(texture)
    disk = np.zeros((size, size), np.uint8)
    cv2.circle(disk, (size // 2, size // 2), int(size * 0.4), 255, -1)
    picture[disk > 0] = texture[disk > 0]
    return picture


def _ball() -> Image:
    """A shaded orange ball with a seam, filling most of a grass-green frame."""
    size = CLOSE_NON_FACE_SIZE
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    centre, radius = size / 2, size * 0.4
    r2 = ((xx - centre) ** 2 + (yy - centre) ** 2) / radius ** 2
    inside = r2 <= 1
    normal_z = np.sqrt(np.clip(1 - r2, 0, 1))
    light = 0.25 + 0.75 * np.clip((-(xx - centre) - (yy - centre)) / radius * 0.5 + normal_z * 0.7, 0, 1)
    out = np.empty((size, size, 3), np.float32)
    out[:] = (40, 140, 60)
    for channel, value in enumerate((30, 120, 235)):
        out[..., channel] = np.where(inside, value * light, out[..., channel])
    picture = np.clip(out, 0, 255).astype(np.uint8)
    cv2.ellipse(picture, (int(centre), int(centre)), (int(radius * 0.35), int(radius)), 0, 0, 360, (20, 40, 60), 4)
    return picture


def _wall_clock() -> Image:
    """A round wall clock seen straight on: rim, twelve ticks, two hands, on a beige wall."""
    size = CLOSE_NON_FACE_SIZE
    picture = np.full((size, size, 3), (170, 200, 215), np.uint8)
    centre, radius = (size // 2, size // 2), int(size * 0.42)
    cv2.circle(picture, centre, radius, (245, 245, 245), -1)
    cv2.circle(picture, centre, radius, (30, 30, 30), 10)
    for hour in range(12):
        angle = hour * np.pi / 6
        outer = (centre[0] + np.sin(angle) * radius * 0.88, centre[1] - np.cos(angle) * radius * 0.88)
        inner = (centre[0] + np.sin(angle) * radius * 0.75, centre[1] - np.cos(angle) * radius * 0.75)
        cv2.line(picture, (int(inner[0]), int(inner[1])), (int(outer[0]), int(outer[1])), (20, 20, 20), 6)
    cv2.line(picture, centre, (centre[0] + int(radius * 0.45), centre[1] - int(radius * 0.2)), (20, 20, 20), 9)
    cv2.line(picture, centre, (centre[0] - int(radius * 0.1), centre[1] - int(radius * 0.7)), (20, 20, 20), 6)
    cv2.circle(picture, centre, 10, (20, 20, 20), -1)
    return picture


def _clips(name: str, clips: list[Path], spec: str) -> Dataset:
    return Dataset(name, "clips", spec, _digest([(str(p.name), p.read_bytes()) for p in clips], b""), clips=clips)


def _digest(files: list[tuple[str, bytes]], labels: bytes) -> str:
    """sha256 over every file's name and content and the labels: two reports compare only if these match."""
    outer = hashlib.sha256()
    for name, data in sorted(files):
        outer.update(f"{name}\0{hashlib.sha256(data).hexdigest()}\n".encode())
    outer.update(b"labels\0" + hashlib.sha256(labels).hexdigest().encode())
    return "sha256:" + outer.hexdigest()


def iter_images(dataset: Dataset) -> Iterator[tuple[Sample, Image]]:
    for sample in dataset.samples:
        yield sample, sample.image()
