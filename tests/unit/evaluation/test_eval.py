"""`imask eval`: datasets and their digests, variant overrides, the report on real labelled photos."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest

from imask.cli.eval import apply_overrides
from imask.cli.eval import main as eval_main
from imask.engine import default_variant
from imask.evaluation.datasets import NO_FACES, open_dataset
from imask.ops.settings import ConfigError
from imask.types import Image


def _tiny_dataset(root: Path, image: Image, box: list[float]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(root / "a.png"), image)
    (root / "gt.json").write_text(json.dumps({"a.png": {"faces": [{"box": box, "blur": 2, "pose": 1}]}}))
    return root


def test_digest_follows_files_and_labels(tmp_path: Path, astronaut_image: Image) -> None:
    one = open_dataset(str(_tiny_dataset(tmp_path / "one", astronaut_image, [180, 60, 110, 120])))
    same = open_dataset(str(_tiny_dataset(tmp_path / "same", astronaut_image, [180, 60, 110, 120])))
    relabelled = open_dataset(str(_tiny_dataset(tmp_path / "other", astronaut_image, [181, 60, 110, 120])))
    assert one.digest == same.digest != relabelled.digest
    face = one.samples[0].faces[0]  # type: ignore[index]
    assert face.valid and face.size_bucket == ">=64"
    assert face.attributes == {"blur": "heavy", "pose": "atypical"}


def test_builtin_no_faces_set() -> None:
    dataset = open_dataset(NO_FACES)
    # scikit-image's 22 pictures, 5 of them also seen close (filling a 416 px frame), and three drawn round things.
    assert dataset.kind == "negatives" and len(dataset.samples) == 22 + 5 + 3
    assert all(s.image().ndim == 3 and s.faces == [] for s in dataset.samples)
    close = [s for s in dataset.samples if s.name.endswith("@close") or s.name in ("ball", "wall-clock", "full-moon")]
    assert len(close) == 8 and all(s.image().shape == (416, 416, 3) for s in close)
    assert open_dataset(NO_FACES).digest == dataset.digest  # drawn pictures are the same every time


def test_bad_dataset_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no gt\.json"):
        open_dataset(str(tmp_path))


def test_overrides_are_typed_and_checked() -> None:
    v = apply_overrides(default_variant(), ["threshold=0.05", "flip=true", "input_width=768", "mask.scale=1.3"])
    assert (v.threshold, v.flip, v.input_width, v.mask.scale) == (0.05, True, 768, 1.3)
    for bad in ["threshold", "nonsense=1", "flip=maybe", "mask.colour=red", "mask.scale=9"]:
        with pytest.raises(ConfigError):
            apply_overrides(default_variant(), [bad])


def test_eval_reports_recall_leaks_and_over_masking(tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "eval"
    assert eval_main([str(data_dir / "photos_gt"), NO_FACES, "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["schema"] == "imask.eval/1" and report["variant"]["name"] == "default"
    photos, negatives = report["datasets"]
    assert photos["digest"].startswith("sha256:") and photos["files"] == 9
    assert (photos["recall"]["masked"], photos["recall"]["faces"]) == (43, 43)
    assert photos["leaks"]["confident_refound"] == 0 and photos["fail_closed"] == 0
    assert 0 < photos["masked_area_fraction"]["mean"] < 0.5
    assert [p["threshold"] for p in photos["threshold_curve"]] == [0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5]
    # Group photos are crowds: a lower crowd threshold masks more of them, never less.
    context = photos["context_curve"]
    assert [p["context_threshold"] for p in context] == [0.02, 0.03, 0.05, 0.07, 0.1]
    masks = [p["masks_per_image"] for p in context]
    assert masks == sorted(masks, reverse=True) and masks[0] > masks[-1]
    # The default never masks more than 1% of a picture with no face; the lowest threshold does (the trade-off).
    assert negatives["false_masks"]["over_1pct"] == []
    assert negatives["threshold_curve"][0]["images_over_1pct"] >= 1
    assert (out / "eval.png").stat().st_size > 10_000
    assert "recall 1.0 of 43 faces" in (out / "summary.txt").read_text()
