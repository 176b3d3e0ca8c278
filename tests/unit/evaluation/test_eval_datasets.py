"""Derived evaluation sets (rotated, dithered, close-ups, covered faces) and the over-masking measure."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from imask.evaluation.datasets import Face, Sample
from imask.evaluation.runner import outside_faces
from imask.evaluation.transforms import CLOSEUP_FILLS, CLOSEUP_SIZE, closeups, dither, occlude, open_spec, rotate
from imask.types import Image


def _marked(width: int = 200, height: int = 120, box: tuple[int, int, int, int] = (30, 20, 40, 50)) -> tuple[
        Sample, Image]:
    """A black picture with one white labelled box: wherever the box goes, the white pixels must go too."""
    image = np.zeros((height, width, 3), np.uint8)
    x, y, w, h = box
    image[y:y + h, x:x + w] = 255
    return Sample("marked", [Face((float(x), float(y), float(w), float(h)), True)], pixels=image), image


@pytest.mark.parametrize("turns", [1, 2, 3])
def test_rotated_boxes_follow_the_pixels(turns: int) -> None:
    sample, image = _marked()
    turned_sample, turned = rotate(sample, image, turns)
    assert turned.shape[:2] == (image.shape[:2] if turns == 2 else image.shape[1::-1])
    assert turned_sample.faces is not None
    x, y, w, h = (round(v) for v in turned_sample.faces[0].box)
    ys, xs = np.nonzero(turned[:, :, 0])
    assert (xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()) == (x, y, w, h)
    assert turned_sample.name == f"marked@rot{turns * 90}"


def test_dithered_pictures_are_black_and_white() -> None:
    gradient = np.tile(np.linspace(0, 255, 256, dtype=np.uint8), (64, 1))
    sample = Sample("g", [], pixels=cv2.cvtColor(gradient, cv2.COLOR_GRAY2BGR))
    _, out = dither(sample, sample.pixels)  # type: ignore[arg-type]
    assert set(np.unique(out)) == {0, 255}
    # error diffusion keeps the local mean: the right end is mostly white, the left mostly black
    assert out[:, -32:].mean() > 200 and out[:, :32].mean() < 55


def test_closeups_enlarge_each_face_to_each_fill() -> None:
    sample, image = _marked(box=(80, 40, 40, 40))
    made = closeups(sample, image)
    assert [s.name for s, _ in made] == [f"marked@closeup0-{round(f * 100)}" for f in CLOSEUP_FILLS]
    for (derived, pixels), fill in zip(made, CLOSEUP_FILLS, strict=True):
        assert pixels.shape == (CLOSEUP_SIZE, CLOSEUP_SIZE, 3)
        assert derived.faces is not None
        face = derived.faces[0]
        assert face.valid and face.size == pytest.approx(fill * CLOSEUP_SIZE, rel=0.01)
        assert face.attributes["fill"] == f"{round(fill * 100)}%"
        x, y, w, h = (round(v) for v in face.box)
        inner = pixels[y + h // 8:y + h - h // 8, x + w // 8:x + w - w // 8]  # edges are interpolated
        assert inner.min() > 200  # the white face is where its box says
        assert pixels[:, :max(1, x - w // 8)].max() < 50  # and nothing white outside it


def test_small_faces_make_no_closeups() -> None:
    sample, image = _marked(box=(80, 40, 12, 12))
    assert closeups(sample, image) == []


def test_covered_faces_keep_their_labels_and_the_rest_of_the_picture() -> None:
    sample, image = _marked(box=(60, 30, 60, 60))
    covered, out = occlude(sample, image)
    assert covered.faces == sample.faces
    changed = np.any(out != image, axis=2)
    assert changed[30:90, 60:120].mean() > 0.3  # the eyes' band of the one face
    assert not changed[:, :50].any() and not changed[:, 130:].any()


def test_over_masking_is_measured_outside_grown_face_boxes() -> None:
    covered = np.zeros((100, 200), bool)
    face = Face((50.0, 40.0, 20.0, 20.0), True)
    covered[35:65, 45:75] = True  # a mask a little larger than the face: inside the grown box
    assert outside_faces(covered, [face]) == 0.0
    covered[0:10, 150:200] = True  # a torso, a sign: 500 of 20,000 pixels
    assert outside_faces(covered, [face]) == pytest.approx(500 / 20_000)


def _labelled_folder(root: Path, image: Image, box: list[int]) -> Path:
    root.mkdir(parents=True)
    cv2.imwrite(str(root / "a.png"), image)
    (root / "gt.json").write_text(json.dumps({"a.png": {"faces": [{"box": box}]}}))
    return root


def test_specs_name_their_transforms_and_digest_them(tmp_path: Path, astronaut_image: Image) -> None:
    folder = str(_labelled_folder(tmp_path / "set", astronaut_image, [180, 60, 110, 120]))
    plain, turned, turned_again = open_spec(folder), open_spec(folder + "@rot90"), open_spec(folder + "@rot90")
    closeup_turned = open_spec(folder + "@closeup@rot180")
    assert turned.name == "set@rot90" and len(turned.samples) == 1
    assert turned.digest == turned_again.digest and len({plain.digest, turned.digest, closeup_turned.digest}) == 3
    assert len(closeup_turned.samples) == len(CLOSEUP_FILLS)
    assert all(s.name.endswith("@rot180") for s in closeup_turned.samples)
    with pytest.raises(ValueError, match="unknown transform 'sideways'"):
        open_spec(folder + "@sideways")
    with pytest.raises(ValueError, match="labelled"):
        open_spec("builtin:no-faces@rot90")
