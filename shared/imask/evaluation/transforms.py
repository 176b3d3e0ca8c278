"""Derived evaluation sets: a labelled dataset seen as cameras and sources send it, labels carried through.

A dataset spec may end in `@TRANSFORM`s, applied left to right (`../shared/data/wider_dev@rot90`,
`../shared/data/photos_gt@closeup@rot180`):

- `rot90`, `rot180`, `rot270`: the picture turned clockwise (a camera mounted sideways or upside down, a phone
  photo whose EXIF orientation was stripped);
- `dither`: grey, then Floyd-Steinberg to 1 bit (a printed page photographed, a thermal or fax-like source);
- `closeup`: every valid face of at least `CLOSEUP_MIN_SIDE` px cropped square around it and enlarged to
  `CLOSEUP_SIZE` until it fills 40, 65 and 90% of the frame's side (a doorbell or kiosk camera);
- `occluded`: each valid face partly covered: its eyes, its mouth, or its left or right half in turn (a hand, an
  ice pack, a scarf).

Everything here is pure: pictures in, pictures and boxes out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import replace

import cv2
import numpy as np

from imask.evaluation.datasets import MIN_VALID_SIDE, Dataset, Face, Sample, iter_images, open_dataset
from imask.types import Image

TRANSFORM_VERSION = 2  # part of a derived set's digest: change it when a transform's output changes
CLOSEUP_FILLS = (0.4, 0.65, 0.9)
CLOSEUP_SIZE = 416  # what a low-resolution doorbell or kiosk camera sends
CLOSEUP_MIN_SIDE = 24  # smaller faces enlarged 17x (90% of 416 px) are blur, not a test of the detector
OCCLUDERS = ("eyes", "mouth", "left", "right")


def rotate(sample: Sample, image: Image, quarter_turns: int) -> tuple[Sample, Image]:
    """The picture turned clockwise by 90 degrees `quarter_turns` times, with its boxes."""
    turns = quarter_turns % 4
    faces = []
    for face in sample.faces or []:
        x, y, w, h = face.box
        height, width = image.shape[:2]
        for _ in range(turns):  # one clockwise turn of a width x height picture: (x, y) -> (height - y, x)
            x, y, w, h = height - (y + h), x, h, w
            width, height = height, width
        faces.append(replace(face, box=(x, y, w, h)))
    turned = np.ascontiguousarray(np.rot90(image, k=-turns)) if turns else image
    return replace(sample, name=f"{sample.name}@rot{turns * 90}", faces=faces, path=None, pixels=turned), turned


def dither(sample: Sample, image: Image) -> tuple[Sample, Image]:
    """Grey, then Floyd-Steinberg error diffusion to black and white (Pillow's 1-bit conversion)."""
    from PIL import Image as PilImage

    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    one_bit = np.asarray(PilImage.fromarray(grey).convert("1"), np.uint8) * 255
    out = cv2.cvtColor(one_bit, cv2.COLOR_GRAY2BGR)
    return replace(sample, name=f"{sample.name}@dither", path=None, pixels=out), out


def closeups(sample: Sample, image: Image) -> list[tuple[Sample, Image]]:
    """For every valid face large enough, square crops around it enlarged to CLOSEUP_SIZE so that the face's longer
    side fills each of CLOSEUP_FILLS of the frame. Beyond the picture the border is replicated. Other faces that
    fall mostly inside a crop stay labelled; faces cut by the crop edge are labelled invalid (not counted). The
    enlarged face carries its fill as the attribute `fill` ("40%"...), so the report gives recall per fill."""
    out = []
    for index, face in enumerate(sample.faces or []):
        if not face.valid or face.size < CLOSEUP_MIN_SIDE:
            continue
        cx, cy = face.box[0] + face.box[2] / 2, face.box[1] + face.box[3] / 2
        for fill in CLOSEUP_FILLS:
            side = face.size / fill
            x0, y0 = cx - side / 2, cy - side / 2
            scale = CLOSEUP_SIZE / side
            matrix = np.array([[scale, 0, -x0 * scale], [0, scale, -y0 * scale]], np.float32)
            pixels = cv2.warpAffine(image, matrix, (CLOSEUP_SIZE, CLOSEUP_SIZE), flags=cv2.INTER_CUBIC,
                                    borderMode=cv2.BORDER_REPLICATE)
            faces = [_crop_face(other, x0, y0, side, scale, fill if other is face else None)
                     for other in sample.faces or []]
            name = f"{sample.name}@closeup{index}-{round(fill * 100)}"
            kept = [f for f in faces if f is not None]
            out.append((replace(sample, name=name, faces=kept, path=None, pixels=pixels), pixels))
    return out


def _crop_face(face: Face, x0: float, y0: float, side: float, scale: float, fill: float | None) -> Face | None:
    """`face` in the crop's pixels; `fill` is given for the crop's subject, which is labelled with it."""
    x, y, w, h = face.box
    ix = max(0.0, min(x + w, x0 + side) - max(x, x0))
    iy = max(0.0, min(y + h, y0 + side) - max(y, y0))
    inside = ix * iy / max(w * h, 1e-9)
    if inside <= 0:
        return None
    box = ((max(x, x0) - x0) * scale, (max(y, y0) - y0) * scale, ix * scale, iy * scale)
    whole = inside >= 0.99
    subject = fill is not None
    attributes = {**face.attributes, "fill": f"{round(fill * 100)}%"} if fill is not None else face.attributes
    return replace(face, box=box, valid=face.valid and (subject or whole) and max(ix, iy) * scale >= MIN_VALID_SIDE,
                   attributes=attributes)


def occlude(sample: Sample, image: Image) -> tuple[Sample, Image]:
    """Each valid face of at least MIN_VALID_SIDE px partly covered by a flat grey-blue patch with some texture:
    over the eyes, the mouth, the left or the right half, in turn. The faces stay labelled: a covered face must
    still be masked (what shows of it identifies a person)."""
    out = image.copy()
    rng = np.random.default_rng(len(sample.name))
    for index, face in enumerate(f for f in sample.faces or [] if f.valid):
        x, y, w, h = face.box
        kind = OCCLUDERS[index % len(OCCLUDERS)]
        x1, y1, x2, y2 = {
            "eyes": (x - 0.05 * w, y + 0.2 * h, x + 1.05 * w, y + 0.55 * h),
            "mouth": (x, y + 0.6 * h, x + w, y + 1.05 * h),
            "left": (x - 0.05 * w, y - 0.05 * h, x + 0.5 * w, y + 1.05 * h),
            "right": (x + 0.5 * w, y - 0.05 * h, x + 1.05 * w, y + 1.05 * h),
        }[kind]
        c1, r1 = max(0, round(x1)), max(0, round(y1))
        c2, r2 = min(out.shape[1], round(x2)), min(out.shape[0], round(y2))
        if c2 <= c1 or r2 <= r1:
            continue
        patch = np.empty((r2 - r1, c2 - c1, 3), np.float32)
        patch[:] = (170, 140, 110)  # BGR: a light blue-grey, like a cold pack or a scarf
        patch += rng.normal(0, 6, patch.shape[:2])[:, :, None]
        out[r1:r2, c1:c2] = np.clip(patch, 0, 255).astype(np.uint8)
    return replace(sample, name=f"{sample.name}@occluded", path=None, pixels=out), out


Transform = Callable[[Sample, Image], list[tuple[Sample, Image]]]

TRANSFORMS: dict[str, Transform] = {
    "rot90": lambda s, i: [rotate(s, i, 1)],
    "rot180": lambda s, i: [rotate(s, i, 2)],
    "rot270": lambda s, i: [rotate(s, i, 3)],
    "dither": lambda s, i: [dither(s, i)],
    "closeup": closeups,
    "occluded": lambda s, i: [occlude(s, i)],
}


def open_spec(spec: str) -> Dataset:
    """A dataset (see `open_dataset`), or a labelled one derived by the `@TRANSFORM`s ending its spec."""
    base_spec, *names = spec.split("@")
    base = open_dataset(base_spec)
    if not names:
        return base
    unknown = [n for n in names if n not in TRANSFORMS]
    if unknown:
        raise ValueError(f"{spec}: unknown transform {unknown[0]!r}; known: {', '.join(TRANSFORMS)}")
    if base.kind != "labelled":
        raise ValueError(f"{spec}: transforms apply to labelled datasets, {base_spec} is {base.kind}")
    pairs = list(iter_images(base))
    for name in names:
        pairs = [derived for sample, image in pairs for derived in TRANSFORMS[name](sample, image)]
    digest = hashlib.sha256(f"{base.digest}@{'@'.join(names)}/v{TRANSFORM_VERSION}".encode()).hexdigest()
    return Dataset(f"{base.name}@{'@'.join(names)}", "labelled", spec, f"sha256:{digest}",
                   [sample for sample, _ in pairs])
