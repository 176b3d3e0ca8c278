"""The evaluation gate (`imask eval --min-recall ...`), the builtin set of real faces, and the gate CI runs."""

from __future__ import annotations

import json
import re
import shlex
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from imask.cli.eval import main as eval_main
from imask.evaluation.datasets import LFW_FACES, NO_FACES, open_dataset
from imask.evaluation.gate import FIGURES, check, parse_limit
from imask.evaluation.lfw_faces import FACE_MAX_SIDE, FACE_MIN_SIDE, HEIGHT, WIDTH
from imask.ops.settings import ConfigError

REPO = Path(__file__).resolve().parents[3]


def _report(*datasets: dict[str, Any]) -> dict[str, Any]:
    return {"datasets": list(datasets)}


def _labelled(name: str, recall: float | None, confident: int = 0) -> dict[str, Any]:
    return {"name": name, "kind": "labelled", "source": f"../data/{name}", "recall": {"recall": recall},
            "leaks": {"confident_refound": confident}}


def _negatives(masks: int, over: list[str]) -> dict[str, Any]:
    return {"name": "no-faces", "kind": "negatives", "source": NO_FACES,
            "false_masks": {"masks": masks, "over_1pct": over}}


def test_limits_parse_a_value_or_a_dataset_and_a_value() -> None:
    every = parse_limit("min-recall", "0.93")
    assert (every.figure.option, every.value, every.dataset) == ("min-recall", 0.93, None)
    one = parse_limit("max-false-masks", "no-faces=3")
    assert (one.value, one.dataset) == (3, "no-faces")
    assert parse_limit("min-recall", "wider_dev@rot90=0.9").dataset == "wider_dev@rot90"
    for option, bad in [("min-recall", "abc"), ("min-recall", "=0.9"), ("min-recall", "1.5"),
                        ("max-false-masks", "-1"), ("min-recall", "nan"), ("max-everything", "1")]:
        with pytest.raises(ValueError):
            parse_limit(option, bad)


def test_recall_under_the_minimum_fails_naming_dataset_and_figure() -> None:
    report = _report(_labelled("lfw-faces", 0.91), _labelled("photos_gt", 1.0))
    verdicts = check(report, [parse_limit("min-recall", "0.93")])
    assert [(v.dataset, v.passed) for v in verdicts] == [("lfw-faces", False), ("photos_gt", True)]
    assert verdicts[0].message() == "lfw-faces: recall 0.91 (must be at least 0.93: --min-recall 0.93)"
    assert check(report, [parse_limit("min-recall", "lfw-faces=0.91")])[0].passed  # the limit itself passes


def test_a_limit_for_one_dataset_checks_only_that_one_by_name_or_spec() -> None:
    report = _report(_labelled("wider_dev", 0.5), _labelled("photos_gt", 1.0))
    assert [v.dataset for v in check(report, [parse_limit("min-recall", "photos_gt=1")])] == ["photos_gt"]
    assert [v.dataset for v in check(report, [parse_limit("min-recall", "../data/wider_dev=0.4")])] == ["wider_dev"]


def test_face_free_limits_count_masks_and_pictures_over_one_percent() -> None:
    report = _report(_negatives(masks=4, over=["moon.png"]), _labelled("lfw-faces", 0.97))
    verdicts = check(report, [parse_limit("max-false-masks", "3"), parse_limit("max-over-1pct", "1"),
                              parse_limit("max-over-1pct", "0")])
    assert [(v.value, v.passed) for v in verdicts] == [(4, False), (1, True), (1, False)]
    assert "no-faces: masks on face-free pictures 4 (must be at most 3" in verdicts[0].message()


def test_confident_leaks_apply_to_labelled_sets_and_clips() -> None:
    clips = {"name": "video", "kind": "clips", "source": "video", "leaks": {"confident_refound": 2}}
    verdicts = check(_report(_labelled("photos_gt", 1.0, confident=0), clips),
                     [parse_limit("max-confident-leaks", "0")])
    assert [(v.dataset, v.passed) for v in verdicts] == [("photos_gt", True), ("video", False)]


def test_a_limit_that_checks_nothing_fails() -> None:
    only_negatives = _report(_negatives(0, []))
    missing_kind, = check(only_negatives, [parse_limit("min-recall", "0.9")])
    assert not missing_kind.passed and "no labelled dataset in this run" in missing_kind.message()
    missing_name, = check(_report(_labelled("lfw-faces", 1.0)), [parse_limit("min-recall", "wider_dev=0.9")])
    assert not missing_name.passed and "no dataset 'wider_dev'" in missing_name.message()


def test_a_recall_with_no_faces_to_count_fails() -> None:
    verdict, = check(_report(_labelled("empty", None)), [parse_limit("min-recall", "0.5")])
    assert not verdict.passed and "recall none" in verdict.message()


def test_the_cli_exits_1_naming_what_failed_and_writes_the_report(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import imask.evaluation.run

    report = {"variant": {"name": "default", "model_version": "m", "execution_provider": "cpu"},
              "datasets": [{**_labelled("lfw-faces", 0.9), "files": 25, "cpu_ms_per_frame": {"mean": 1.0},
                            "recall": {"recall": 0.9, "faces": 100, "by_size": {}}, "masks_per_image": 4,
                            "masks_per_labelled_face": 1, "masked_outside_faces": {"p50": 0, "p90": 0, "max": 0},
                            "fail_closed": 0, "leaks": {"refound": 0, "referee_faces": 0, "confident_refound": 0}}]}

    def fake_run(*_: Any, **__: Any) -> tuple[dict[str, Any], Path]:
        path = tmp_path / "report.json"
        path.write_text(json.dumps(report))
        return report, path

    monkeypatch.setattr(imask.evaluation.run, "run_evaluation", fake_run)
    argv = [LFW_FACES, "--out", str(tmp_path), "--max-confident-leaks", "0"]
    assert eval_main([*argv, "--min-recall", "0.93"]) == 1
    out = capsys.readouterr()
    assert "GATE FAILED: lfw-faces: recall 0.9 (must be at least 0.93: --min-recall 0.93)" in out.err
    assert "gate passed: lfw-faces: faces confidently re-found by the referee 0" in out.out
    assert (tmp_path / "report.json").is_file()
    assert eval_main([*argv, "--min-recall", "lfw-faces=0.9"]) == 0


def test_every_figure_has_an_option_of_the_cli() -> None:
    with pytest.raises(ConfigError, match="max-false-masks"):
        eval_main([NO_FACES, "--max-false-masks", "many"])  # checked before anything is evaluated
    assert set(FIGURES) == {"min-recall", "max-confident-leaks", "max-false-masks", "max-over-1pct"}


def test_builtin_lfw_faces_set() -> None:
    dataset = open_dataset(LFW_FACES)
    assert (dataset.name, dataset.kind, dataset.source) == ("lfw-faces", "labelled", LFW_FACES)
    assert len(dataset.samples) == 25
    faces = [f for s in dataset.samples for f in s.faces or []]
    assert len(faces) == 100 and all(f.valid for f in faces)
    sides = sorted(f.size for f in faces)
    assert sides[0] == FACE_MIN_SIDE and sides[-1] == FACE_MAX_SIDE
    assert {f.size_bucket for f in faces} == {"32-63", ">=64"}
    for sample in dataset.samples:
        image = sample.image()
        assert image.shape == (HEIGHT, WIDTH, 3) and image.dtype == np.uint8
        assert (image[..., 0] == image[..., 2]).all()  # grey, as the crops are
        boxes = [f.box for f in sample.faces or []]
        for i, (x, y, w, h) in enumerate(boxes):  # inside the picture, and no two faces overlap
            assert min(x, y) >= 0 and x + w <= WIDTH and y + h <= HEIGHT
            for ox, oy, ow, oh in boxes[i + 1:]:
                assert x + w <= ox or ox + ow <= x or y + h <= oy or oy + oh <= y
    again = open_dataset(LFW_FACES)
    assert again.digest == dataset.digest  # the same pictures every time
    assert all((a.image() == b.image()).all() for a, b in zip(again.samples, dataset.samples, strict=True))
    assert dataset.digest != open_dataset(NO_FACES).digest


def test_builtin_lfw_faces_take_transforms() -> None:
    from imask.evaluation.transforms import open_spec

    turned = open_spec(f"{LFW_FACES}@rot90")
    assert turned.name == "lfw-faces@rot90" and turned.samples[0].image().shape == (WIDTH, HEIGHT, 3)


def _ci_gate() -> list[str]:
    """The limits `make eval-gate` applies to the builtin sets (EVAL_GATE_BUILTIN in the Makefile)."""
    text = (REPO / "Makefile").read_text().replace("\\\n", " ")
    match = re.search(r"^EVAL_GATE_BUILTIN\s*:?=(.*)$", text, re.M)
    assert match, "EVAL_GATE_BUILTIN is not set in the Makefile"
    return shlex.split(match.group(1))


def test_ci_gate_passes_on_the_builtin_sets(tmp_path: Path) -> None:
    """The real evaluation of the default variant on both builtin sets at CI's limits (about 15 s on 2 cores)."""
    limits = _ci_gate()
    assert {"--min-recall", "--max-false-masks"} <= set(limits)
    started = time.monotonic()
    assert eval_main([LFW_FACES, NO_FACES, "--no-curve", "--no-plot", "--out", str(tmp_path), *limits]) == 0
    assert time.monotonic() - started < 120
    lfw, negatives = json.loads((tmp_path / "report.json").read_text())["datasets"]
    assert lfw["name"] == "lfw-faces" and lfw["recall"]["faces"] == 100
    assert negatives["name"] == "no-faces"
