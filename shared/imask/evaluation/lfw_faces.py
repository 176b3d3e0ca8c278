"""`builtin:lfw-faces`: a labelled set of real faces that ships inside scikit-image's wheel, for a recall gate
that needs no downloaded data.

`skimage.data.lfw_subset()` holds 200 grayscale 25x25 crops from Labeled Faces in the Wild: the first 100 are faces,
the other 100 background patches (left out: they are patches, not pictures). Each face crop is enlarged to a size
between FACE_MIN_SIDE and FACE_MAX_SIDE (spread evenly on a log scale over the 100 faces, in a shuffled order) and
placed at a random spot in one quarter of an 800x600 picture, four faces a picture, 25 pictures, on scikit-image's
brick, grass and gravel textures or a plain grey wall in turn, as 3-channel BGR.

The crops are tight (brows to chin, little hair, no shoulders) and a face pasted with its square edge is a hard-edged
tile no real picture has. So each crop is first extended by MARGIN of its side on every side with its own border
replicated and blurred (the skin, hair and backdrop at its edge smeared outward), the crop itself kept sharp, and the
whole patch blended into the background with a soft edge. The labelled box is the enlarged crop alone, which is the
face as WIDER FACE boxes it (brows to chin, cheek to cheek). Everything is drawn from a seeded generator: the same
pictures and boxes every time.
"""

from __future__ import annotations

import importlib.resources
import io
import json

import cv2
import numpy as np

COMPOSITION_VERSION = 1  # part of the digest: change it when the pictures or boxes change
CROP = 25  # lfw_subset's crops are 25x25
FACES = 100  # the first 100 crops are faces
FACES_PER_PICTURE = 4  # one in each quarter of the picture
WIDTH, HEIGHT = 800, 600
FACE_MIN_SIDE, FACE_MAX_SIDE = 40, 160
MARGIN = 0.3  # the blurred border around each face, as a share of its side
BORDER_BLUR = 2.0  # Gaussian sigma of that border, in the crop's 25 px
BACKGROUNDS = ("brick.png", "grass.png", "gravel.png", None)  # None: a plain grey wall
PLAIN_GREY = 128
SEED = 25


Box = tuple[float, float, float, float]


def compose() -> tuple[list[tuple[str, np.ndarray, list[Box]]], list[tuple[str, bytes]], bytes]:
    """The pictures (name, BGR pixels, face boxes x, y, w, h), the files they were made from, and a tag of the
    composition and boxes: what `datasets.open_dataset` makes the set and its digest of."""
    folder = importlib.resources.files("skimage") / "data"
    subset = (folder / "lfw_subset.npy").read_bytes()  # what skimage.data.lfw_subset() loads
    crops = face_crops(subset)
    rng = np.random.default_rng(SEED)
    sides = np.round(np.geomspace(FACE_MIN_SIDE, FACE_MAX_SIDE, FACES)).astype(int)[rng.permutation(FACES)]
    order = rng.permutation(FACES)  # which crop goes into which picture
    parts = [("lfw_subset.npy", subset)]
    backgrounds: dict[str | None, np.ndarray] = {}
    for name in BACKGROUNDS:
        if name is None:
            backgrounds[name] = np.full((HEIGHT, WIDTH), PLAIN_GREY, np.float32)
        else:
            data = (folder / name).read_bytes()
            parts.append((name, data))
            backgrounds[name] = _background(data)
    pictures: list[tuple[str, np.ndarray, list[Box]]] = []
    labels = {}
    for picture in range(FACES // FACES_PER_PICTURE):
        canvas = backgrounds[BACKGROUNDS[picture % len(BACKGROUNDS)]].copy()
        boxes = []
        for quarter in range(FACES_PER_PICTURE):
            index = picture * FACES_PER_PICTURE + quarter
            boxes.append(place_face(canvas, crops[order[index]], int(sides[index]), quarter, rng))
        name = f"lfw-{picture:02d}"
        pixels = cv2.cvtColor(np.clip(np.round(canvas), 0, 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)
        pictures.append((name, pixels, boxes))
        labels[name] = [list(box) for box in boxes]
    tag = json.dumps({"version": COMPOSITION_VERSION, "boxes": labels}, sort_keys=True).encode()
    return pictures, parts, tag


def face_crops(subset: bytes) -> np.ndarray:
    """The 100 face crops of lfw_subset.npy (200 crops of 25x25, 0-1 floats), as float32 0-255."""
    crops = np.load(io.BytesIO(subset), allow_pickle=False)
    if crops.shape != (2 * FACES, CROP, CROP):
        raise ValueError(f"scikit-image's lfw_subset.npy holds {crops.shape}, not {(2 * FACES, CROP, CROP)}")
    scale = 255.0 if crops.max() <= 1.0 else 1.0
    return np.asarray(crops[:FACES], np.float32) * scale


def _background(data: bytes) -> np.ndarray:
    """A scikit-image picture, grey, its top 4:3 part enlarged to WIDTH x HEIGHT."""
    grey = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if grey is None:
        raise ValueError("a scikit-image background picture did not decode")
    height, width = grey.shape
    keep = min(height, width * HEIGHT // WIDTH)
    return cv2.resize(grey[:keep, :keep * WIDTH // HEIGHT], (WIDTH, HEIGHT),
                      interpolation=cv2.INTER_CUBIC).astype(np.float32)


def face_patch(crop: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The crop enlarged to `side` px inside a margin of its own blurred border: (patch, alpha, margin in px).
    Alpha is 1 over the face and the inner part of the margin and falls to 0 at the patch's edge."""
    margin = round(side * MARGIN)
    pad = max(1, round(CROP * margin / side))
    extended = cv2.copyMakeBorder(crop, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    blurred = cv2.GaussianBlur(extended, (0, 0), BORDER_BLUR)
    inside = np.zeros(extended.shape, np.float32)
    inside[pad:pad + CROP, pad:pad + CROP] = 1.0
    sharp = cv2.GaussianBlur(inside, (0, 0), 1.0)  # a soft seam between the crop and its border
    sharp[pad + 1:pad + CROP - 1, pad + 1:pad + CROP - 1] = 1.0
    mixed = sharp * extended + (1.0 - sharp) * blurred
    full = side + 2 * margin
    patch = cv2.resize(mixed, (full, full), interpolation=cv2.INTER_CUBIC)
    yy, xx = np.mgrid[0:full, 0:full]
    edge = np.minimum(np.minimum(xx, yy), np.minimum(full - 1 - xx, full - 1 - yy)).astype(np.float32)
    alpha = np.clip(edge / max(1.0, margin * 0.6), 0.0, 1.0)
    return patch, alpha, margin


def place_face(canvas: np.ndarray, crop: np.ndarray, side: int, quarter: int,
               rng: np.random.Generator) -> tuple[float, float, float, float]:
    """Blends a face into `canvas` at a random spot of the given quarter (0-3, row by row); its box (x, y, w, h)."""
    patch, alpha, margin = face_patch(crop, side)
    full = patch.shape[0]
    cell_w, cell_h = WIDTH // 2, HEIGHT // 2
    if full > min(cell_w, cell_h):
        raise ValueError(f"a face of {side} px with its margin does not fit a quarter of the picture")
    left = (quarter % 2) * cell_w + int(rng.integers(0, cell_w - full + 1))
    top = (quarter // 2) * cell_h + int(rng.integers(0, cell_h - full + 1))
    region = canvas[top:top + full, left:left + full]
    canvas[top:top + full, left:left + full] = alpha * patch + (1.0 - alpha) * region
    return (float(left + margin), float(top + margin), float(side), float(side))

