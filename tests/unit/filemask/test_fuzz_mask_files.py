"""Fuzzing `imask mask` on files with hypothesis (inputs, strategies and the shared property: tests/fuzzing.py): no
crash, no hang, one report per file, and no output carries the input's face."""

from __future__ import annotations

import uuid
from pathlib import Path

import cv2
from fuzzing import FUZZ, Encoded, Tally, assert_no_face_out, image_bytes
from hypothesis import given, note
from hypothesis import strategies as st

from imask.engine import MaskingEngine
from imask.filemask import mask_files


def test_fuzz_imask_mask_files(engine: MaskingEngine, tmp_path: Path) -> None:
    tally = Tally("imask_mask")

    @FUZZ
    @given(image_bytes(), st.sampled_from([".jpg", ".jpeg", ".png", ".JPG", ".bmp", ".txt", ""]))
    def one(case: tuple[bytes, Encoded, bool], suffix: str) -> None:
        data, enc, intact = case
        note(f"picture {enc.name}, intact {intact}, {len(data)} bytes, suffix {suffix!r}")
        folder = tmp_path / uuid.uuid4().hex[:8]
        folder.mkdir()
        source = folder / f"in{suffix}"
        source.write_bytes(data)
        reports = mask_files(engine, [source], folder / "out", progress=False)
        assert len(reports) == 1
        report = reports[0]
        if report.error or report.output is None:
            tally.record("refused")
            return
        tally.record("fail_closed" if report.fail_closed else "masked")
        output = cv2.imread(str(report.output), cv2.IMREAD_COLOR)
        assert output is not None
        assert_no_face_out(tally, cv2.imread(str(source), cv2.IMREAD_COLOR), output,
                           enc.face if intact else None, bool(report.fail_closed))

    try:
        one()
    finally:
        tally.write()
