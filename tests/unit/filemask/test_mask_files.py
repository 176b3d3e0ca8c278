"""`imask mask` on files (imask.filemask): a picture whose rotation tag lies is masked both ways up."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from imask.engine import MaskingEngine


def test_file_with_a_lying_rotation_tag_is_masked_both_ways(engine: MaskingEngine, tmp_path: Path) -> None:
    import cv2
    from fuzzing import _exif_orientation, face_pool

    from imask.evaluation.leakcheck import check_leak
    from imask.filemask import mask_files

    # An upright face tagged "rotate 180": shown upside down, where CenterFace does not find it.
    source = tmp_path / "flipped.jpg"
    source.write_bytes(_exif_orientation(face_pool()[1].data, 3))
    [report] = mask_files(engine, [source], tmp_path / "out", progress=False)
    assert report.output is not None and report.faces >= 1
    shown = cv2.imread(str(source), cv2.IMREAD_COLOR)
    out = cv2.imread(str(report.output), cv2.IMREAD_COLOR)
    assert check_leak(shown, out).reliable_leaks == []
    assert check_leak(np.ascontiguousarray(shown[::-1, ::-1]), np.ascontiguousarray(out[::-1, ::-1])).leaked == []
