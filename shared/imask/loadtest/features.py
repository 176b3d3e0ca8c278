"""Synthetic frames.meta and frames.dlq records with known values (features stream tests and benchmark), and an
independent reference of what their windows must hold (plain lists, numpy percentiles: not the stream's
accumulator)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from imask.features import windows as w
from imask.v1 import frames_pb2 as pb


@dataclass(frozen=True)
class Record:
    topic: str  # "meta" or "dlq"
    camera_id: str
    capture_ms: int
    value: bytes


def meta_record(camera_id: str, seq: int, capture_ms: int, variant: str = "default") -> Record:
    """A frames.meta record whose values all follow from (camera, seq)."""
    faces = seq % 4
    meta = pb.FrameMeta(camera_id=camera_id, seq=seq, capture_ts_us=capture_ms * 1000, width=1280, height=720,
                        variant=variant, arm="control" if seq % 5 else "", faces_masked=faces,
                        fail_closed=seq % 17 == 0, fail_closed_reason="timeout" if seq % 17 == 0 else "")
    for i in range(faces):
        side = 6 + (seq * 7 + i * 29) % 300
        meta.detections.add(x1=10, y1=20, x2=10 + side, y2=20 + side, score=((seq * 13 + i * 7) % 100) / 100,
                            held=(seq + i) % 6 == 0)
    t = meta.timings
    t.decode_ms, t.queue_wait_ms, t.preprocess_ms = 1.5 + seq % 7 * 0.25, (seq * 37) % 400 * 1.0, 0.8
    t.inference_ms, t.postprocess_ms, t.mask_ms = 20 + (seq * 11) % 30, 0.3, 2.0 + seq % 3
    t.encode_ms, t.publish_ms = 4.0, 1.0 + seq % 5
    t.end_to_end_ms = t.queue_wait_ms + t.inference_ms + 10
    if seq % 3:  # detected frames carry picture statistics
        p = meta.picture
        p.luma_mean, p.luma_std, p.sharpness = 100 + seq % 50, 30 + seq % 10, 500 + seq % 200
        p.dark_fraction, p.bright_fraction, p.scene_change = (seq % 10) / 100, (seq % 7) / 100, float(seq % 13)
        p.scene_offset = (seq % 17) / 2
    return Record("meta", camera_id, capture_ms, meta.SerializeToString())


def drop_record(camera_id: str, seq: int, ts_ms: int, reason: int) -> Record:
    record = pb.DropRecord(camera_id=camera_id, seq=seq, reason=reason, ts_us=ts_ms * 1000, stage="test")  # type: ignore[arg-type]
    return Record("dlq", camera_id, ts_ms, record.SerializeToString())


def _percentile_value(values: list[float], q: int) -> float:
    """Nearest-rank percentile, quantised to its latency bin the way the stream reports it."""
    exact = float(np.percentile(np.asarray(values), q, method="inverted_cdf"))
    return w.latency_value(w.latency_bin(exact))


def reference_row(records: list[Record], window_s: float) -> dict[str, Any]:
    """What the stream must report for a window holding exactly these records (one camera)."""
    metas = [pb.FrameMeta.FromString(r.value) for r in records if r.topic == "meta"]
    drops = [pb.DropRecord.FromString(r.value) for r in records if r.topic == "dlq"]
    frames_in = len(metas) + len(drops)
    faces = [m.faces_masked for m in metas]
    dets = [d for m in metas for d in m.detections]
    held = sum(d.held for d in dets)
    row: dict[str, Any] = {
        "frames_in": frames_in, "frames_out": len(metas), "drops": len(drops),
        "fps_in": frames_in / window_s, "fps_out": len(metas) / window_s,
        "faces_mean": sum(faces) / len(metas) if metas else 0.0,
        "faces_p95": float(np.percentile(faces, 95, method="inverted_cdf")) if metas else 0.0,
        "fail_closed_rate": sum(m.fail_closed for m in metas) / len(metas) if metas else 0.0,
        "held_track_rate": held / sum(faces) if sum(faces) else 0.0,
        "drop_rate": len(drops) / frames_in if frames_in else 0.0,
    }
    for index, reason in enumerate(w.DROP_REASONS):
        row[f"drop_rate_{reason}"] = sum(d.reason == index for d in drops) / frames_in if frames_in else 0.0
    scores = [0] * (len(w.SCORE_EDGES) - 1)
    sizes = [0] * (len(w.FACE_SIZE_EDGES) - 1)
    for d in dets:
        if d.held:
            continue
        scores[min(int(d.score / 0.05 + 1e-9), len(scores) - 1)] += 1
        side = math.sqrt((d.x2 - d.x1) * (d.y2 - d.y1))
        sizes[max(i for i, edge in enumerate(w.FACE_SIZE_EDGES[:-1]) if edge <= side)] += 1
    row["score_hist"], row["face_size_hist"] = scores, sizes
    pictures = [m.picture for m in metas if m.HasField("picture")]
    row["picture_frames"] = len(pictures)
    for name in w.PICTURE_FIELDS:
        row[name] = sum(getattr(p, name) for p in pictures) / len(pictures) if pictures else 0.0
    row["scene_change_max"] = max((p.scene_change for p in pictures), default=0.0)
    for stage in w.STAGES:
        values = [getattr(m.timings, f"{stage}_ms") for m in metas]
        for q in w.PERCENTILES:
            row[f"{stage}_ms_p{q}"] = _percentile_value(values, q) if values else 0.0
    return row
