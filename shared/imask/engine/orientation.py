"""Which way up a camera's pictures are, and detections on a turned picture mapped back to the original.

A camera mounted sideways or upside down (a corridor camera, a ceiling camera, a phone photo whose EXIF orientation
was stripped) sends pictures the detector reads badly: on WIDER crowds turned 90/180/270 degrees CenterFace finds
0.44/0.57/0.49 of the faces it finds upright. A camera's orientation is either configured (the turn that makes its
pictures upright) or estimated: the detector runs on the picture turned each of four ways and the turn whose faces
are surest wins, upright unless another turn has clearly more evidence. The estimate is made on a camera's first
frame and again every so many frames; an upright picture with several sure faces needs no estimate.

Measured on wider_dev and photos_gt, each upright and turned (the rule below: evidence = sum of scores >= 0.3; a
turn wins with more than 1.2x upright's evidence and a face of at least 0.4): the right turn chosen for 93-98 of 103
turned crowds and for 112 of 129 upside-down close-ups; no upright crowd, photo or close-up turned (0 of 241), nor
any of 22 face-free pictures (without the 0.4 floor the motorcycle turned on one box at 0.37 and its faint boxes
then read as a crowd: 17% of it masked). The engine keeps the upright pass and adds the chosen turn's faces, so a
wrong estimate can cost extra masks, never a face the upright pass finds.
"""

from __future__ import annotations

import numpy as np

from imask.engine.detectors.base import Detections
from imask.types import Image

EVIDENCE_SCORE = 0.3  # detections counted as evidence of faces
WIN_RATIO = 1.2  # a turn other than upright must have this much more evidence
WIN_TOP_SCORE = 0.4  # and one face at least this sure
# A crowd of faint faces (every box under EVIDENCE_SCORE at every turn) is told by its faint boxes instead: a turn
# where FAINT_COUNT or more reach FAINT_SCORE (the crowd rule's anchors, engine/context.py) with FAINT_RATIO times
# upright's faint evidence. On wider_dev turned 90 and 180 degrees it brings back a marching band of 35 faces that
# scores 0.22 at best; no upright picture, close-up or face-free picture turns by it.
FAINT_SCORE = 0.1
FAINT_COUNT = 5
FAINT_RATIO = 2.0
SURE_SCORE = 0.7
SURE_FACES = 3  # upright with this many faces at SURE_SCORE: no estimate needed (28 of 103 upright crowds)


def turn(image: Image, quarter_turns: int) -> Image:
    """The picture turned clockwise by `quarter_turns` quarter turns."""
    turns = quarter_turns % 4
    return image if turns == 0 else np.ascontiguousarray(np.rot90(image, k=-turns))


def turn_back(dets: Detections, quarter_turns: int, height: int, width: int) -> Detections:
    """Detections found on the picture turned by `quarter_turns`, in the coordinates of the original
    (`height` x `width`) picture."""
    turns = quarter_turns % 4
    if turns == 0 or len(dets) == 0:
        return dets
    boxes = dets.boxes.astype(np.float32)
    points = dets.landmarks.astype(np.float32)

    def back(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # (u, v) on the turned picture; one clockwise turn maps (x, y) to (height - y, x).
        if turns == 1:
            return v, height - u
        if turns == 2:
            return width - u, height - v
        return width - v, u

    x1, y1 = back(boxes[:, 0], boxes[:, 1])
    x2, y2 = back(boxes[:, 2], boxes[:, 3])
    px, py = back(points[:, :, 0], points[:, :, 1])
    out = np.stack([np.minimum(x1, x2), np.minimum(y1, y2), np.maximum(x1, x2), np.maximum(y1, y2)], axis=1)
    return Detections(boxes=out.astype(np.float32), scores=dets.scores,
                      landmarks=np.stack([px, py], axis=2).astype(np.float32))


def evidence(dets: Detections) -> float:
    """How sure a pass is that it sees faces: the sum of its scores at EVIDENCE_SCORE or more."""
    scores = dets.scores
    return float(scores[scores >= EVIDENCE_SCORE].sum())


def upright_is_sure(dets: Detections) -> bool:
    return int((dets.scores >= SURE_SCORE).sum()) >= SURE_FACES


def choose(by_turn: dict[int, Detections]) -> int:
    """The winning quarter turn: upright unless another has more than WIN_RATIO times its evidence and a face of
    at least WIN_TOP_SCORE; where no turn has any evidence, the faint-crowd rule (FAINT_*) decides."""
    scores = {t: evidence(dets) for t, dets in by_turn.items()}
    best = max(scores, key=lambda t: (scores[t], -t))
    if scores[best] == 0.0:
        return _faint_crowd_turn(by_turn)
    top = float(by_turn[best].scores.max()) if len(by_turn[best]) else 0.0
    return best if best != 0 and scores[best] > WIN_RATIO * scores.get(0, 0.0) and top >= WIN_TOP_SCORE else 0


def _faint_crowd_turn(by_turn: dict[int, Detections]) -> int:
    faint = {t: dets.scores[dets.scores >= FAINT_SCORE] for t, dets in by_turn.items()}
    best = max(faint, key=lambda t: (float(faint[t].sum()), -t))
    upright = float(faint[0].sum()) if 0 in faint else 0.0
    wins = len(faint[best]) >= FAINT_COUNT and float(faint[best].sum()) > FAINT_RATIO * upright
    return best if best != 0 and wins else 0
