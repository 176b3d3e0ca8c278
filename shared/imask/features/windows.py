"""Window arithmetic for the features stream: pure functions, no Kafka, no Feast.

A record becomes an observation (a small tuple: what it contributes to a window); observations fold into an
accumulator (a JSON-able dict, kept in the stream app's state store and changelog); accumulators merge (six closed
10 s windows make one 60 s window); a closed window's accumulator becomes one feature row.

A window keeps one accumulator per variant (`Parts`, variant -> accumulator; drop records name no variant and go
under ""): the camera's row is their merge, and each named variant gets a row of its own.

Every statistic is mergeable, so a 60 s window is exactly the merge of its six 10 s windows:
- counts and sums (frames, drops by reason, fail-closed frames, faces, held faces, picture statistics);
- fixed-bin histograms: detection scores (`SCORE_EDGES`), face sizes (`FACE_SIZE_EDGES`), faces per frame
  (one bin per count: exact);
- stage latencies in log bins of `LATENCY_RATIO` (4%) from `LATENCY_MIN_MS`: a percentile is the nearest-rank
  percentile of the latencies, reported as the geometric centre of its bin (within 2% of the exact value; a
  latency of 0 is its own bin, reported as 0).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from imask.v1 import frames_pb2 as pb

# Detection scores: 20 bins of 0.05 over [0, 1] (a score of 1.0 counts in the last).
SCORE_EDGES: tuple[float, ...] = tuple(round(i * 0.05, 2) for i in range(21))
# Face sizes: sqrt(box area) in frame pixels; the last bin is [512, inf).
FACE_SIZE_EDGES: tuple[float, ...] = (0, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, math.inf)
LATENCY_MIN_MS = 0.01
LATENCY_RATIO = 1.04
_LOG_RATIO = math.log(LATENCY_RATIO)
STAGES: tuple[str, ...] = ("decode", "queue_wait", "preprocess", "inference", "postprocess", "mask", "encode",
                           "publish", "end_to_end")
PERCENTILES: tuple[int, ...] = (50, 95, 99)
# Drop reasons as the feature names spell them (DROP_REASON_INGEST_STALE -> ingest_stale), in enum order.
DROP_REASONS: tuple[str, ...] = tuple(value.name.removeprefix("DROP_REASON_").lower()
                                      for value in pb.DropReason.DESCRIPTOR.values)
# scene_change last: the window also keeps its max (the accumulator's last slot).
PICTURE_FIELDS: tuple[str, ...] = ("luma_mean", "luma_std", "sharpness", "dark_fraction", "bright_fraction",
                                   "scene_offset", "scene_change")

META, DROP = 0, 1

# An observation: (kind, event_ms, ...). Meta: (META, event_ms, variant, arm, faces, fail_closed, held,
# score_bins, size_bins, latency_bins, picture or None). Drop: (DROP, event_ms, reason index).
Observation = tuple[Any, ...]
Accumulator = dict[str, Any]
Parts = dict[str, Accumulator]  # variant -> accumulator ("": records that name no variant)


def latency_bin(ms: float) -> int:
    """Log bin of a latency: -1 for 0 (and negatives), else floor(log(ms / LATENCY_MIN_MS) / log(LATENCY_RATIO)),
    latencies under LATENCY_MIN_MS in bin 0."""
    if not ms > 0:  # also NaN
        return -1
    if ms <= LATENCY_MIN_MS:
        return 0
    return int(math.log(ms / LATENCY_MIN_MS) / _LOG_RATIO)


def latency_value(bin_index: int) -> float:
    """The value a latency bin reports: its geometric centre (0 for bin -1)."""
    if bin_index < 0:
        return 0.0
    return float(LATENCY_MIN_MS * LATENCY_RATIO ** (bin_index + 0.5))


def fixed_bin(value: float, edges: Sequence[float]) -> int:
    """Index of the bin [edges[i], edges[i+1]) holding value, clipped to the first and last bins."""
    last = len(edges) - 2
    if not value > edges[0]:
        return 0
    lo, hi = 0, last
    while lo < hi:  # the largest i with edges[i] <= value
        mid = (lo + hi + 1) // 2
        if edges[mid] <= value:
            lo = mid
        else:
            hi = mid - 1
    return lo


def clamp_event_ms(event_ms: int, now_ms: int, max_future_ms: int) -> tuple[int, bool]:
    """An event time no later than now + max_future_ms (one record stamped in the future would otherwise hold its
    partition's clock ahead and make every other record late); returns the time and whether it was clamped."""
    limit = now_ms + max_future_ms
    return (limit, True) if event_ms > limit else (event_ms, False)


def window_start(event_ms: int, size_ms: int) -> int:
    return event_ms - event_ms % size_ms


def hop_windows(event_ms: int, size_ms: int, step_ms: int) -> list[tuple[int, int]]:
    """Every [start, end) of a hopping window (size, step) holding event_ms, oldest first."""
    last = window_start(event_ms, step_ms)
    return [(start, start + size_ms) for start in range(last - size_ms + step_ms, last + 1, step_ms)]


def is_late(event_ms: int, watermark_ms: int, size_ms: int, grace_ms: int) -> bool:
    """Whether a record's (tumbling) window has closed: the clock (the largest event time seen) passed its end plus
    the grace period. Records inside the grace period still count in their window."""
    return window_start(event_ms, size_ms) + size_ms + grace_ms <= watermark_ms


def observe_meta(meta: pb.FrameMeta, event_ms: int) -> Observation:
    """What one frames.meta record contributes to its window."""
    held = 0
    scores: list[int] = []
    sizes: list[int] = []
    for det in meta.detections:
        if det.held:
            held += 1
            continue
        scores.append(fixed_bin(det.score, SCORE_EDGES))
        sizes.append(fixed_bin(math.sqrt(max(det.x2 - det.x1, 0.0) * max(det.y2 - det.y1, 0.0)), FACE_SIZE_EDGES))
    t = meta.timings
    latencies = (latency_bin(t.decode_ms), latency_bin(t.queue_wait_ms), latency_bin(t.preprocess_ms),
                 latency_bin(t.inference_ms), latency_bin(t.postprocess_ms), latency_bin(t.mask_ms),
                 latency_bin(t.encode_ms), latency_bin(t.publish_ms), latency_bin(t.end_to_end_ms))
    picture = None
    if meta.HasField("picture"):
        p = meta.picture
        picture = (p.luma_mean, p.luma_std, p.sharpness, p.dark_fraction, p.bright_fraction, p.scene_offset,
                   p.scene_change)
    return (META, event_ms, meta.variant, meta.arm, meta.faces_masked, meta.fail_closed, held, scores, sizes,
            latencies, picture)


def observe_drop(record: pb.DropRecord, event_ms: int) -> Observation:
    reason = record.reason if 0 <= record.reason < len(DROP_REASONS) else 0
    return (DROP, event_ms, reason)


def new_accumulator() -> Accumulator:
    return {
        "frames": 0, "drops": [0] * len(DROP_REASONS), "fail_closed": 0, "faces": 0, "held": 0,
        "faces_hist": {},  # str(faces in a frame) -> frames
        "scores": [0] * (len(SCORE_EDGES) - 1), "sizes": [0] * (len(FACE_SIZE_EDGES) - 1),
        "latency": [{} for _ in STAGES],  # per stage: str(latency bin) -> frames
        "picture": [0, *([0.0] * len(PICTURE_FIELDS)), 0.0],  # frames with picture stats, sums, max scene change
        "variants": {}, "arms": {},
    }


def add(acc: Accumulator, obs: Observation) -> Accumulator:
    """Fold one observation into an accumulator (in place; returned for reduce-style callers)."""
    if obs[0] == DROP:
        acc["drops"][obs[2]] += 1
        return acc
    _, _, variant, arm, faces, fail_closed, held, scores, sizes, latencies, picture = obs
    acc["frames"] += 1
    acc["faces"] += faces
    acc["held"] += held
    if fail_closed:
        acc["fail_closed"] += 1
    key = str(faces)
    hist = acc["faces_hist"]
    hist[key] = hist.get(key, 0) + 1
    counts = acc["scores"]
    for index in scores:
        counts[index] += 1
    counts = acc["sizes"]
    for index in sizes:
        counts[index] += 1
    for stage_hist, index in zip(acc["latency"], latencies, strict=True):
        key = str(index)
        stage_hist[key] = stage_hist.get(key, 0) + 1
    if picture is not None:
        sums = acc["picture"]
        sums[0] += 1
        for i, value in enumerate(picture, start=1):
            sums[i] += value
        sums[-1] = max(sums[-1], picture[-1])
    names = acc["variants"]
    names[variant] = names.get(variant, 0) + 1
    names = acc["arms"]
    names[arm] = names.get(arm, 0) + 1
    return acc


def _merge_counts(into: dict[str, int], other: dict[str, int]) -> None:
    for key, count in other.items():
        into[key] = into.get(key, 0) + count


def merge(accs: Iterable[Accumulator]) -> Accumulator:
    """One accumulator holding every record of the given ones (windows of the same camera)."""
    out = new_accumulator()
    for acc in accs:
        for key in ("frames", "fail_closed", "faces", "held"):
            out[key] += acc[key]
        for key in ("drops", "scores", "sizes"):
            out[key] = [a + b for a, b in zip(out[key], acc[key], strict=True)]
        for key in ("faces_hist", "variants", "arms"):
            _merge_counts(out[key], acc[key])
        for into, other in zip(out["latency"], acc["latency"], strict=True):
            _merge_counts(into, other)
        sums, other_sums = out["picture"], acc["picture"]
        for i in range(len(sums) - 1):
            sums[i] += other_sums[i]
        sums[-1] = max(sums[-1], other_sums[-1])
    return out


def add_part(parts: Parts, obs: Observation) -> Parts:
    """Fold an observation into its variant's accumulator (in place)."""
    variant = obs[2] if obs[0] == META else ""
    acc = parts.get(variant)
    if acc is None:
        acc = parts[variant] = new_accumulator()
    add(acc, obs)
    return parts


def merge_parts(windows: Iterable[Parts]) -> Parts:
    """Per variant, the merge of its accumulators in the given windows."""
    grouped: dict[str, list[Accumulator]] = {}
    for parts in windows:
        for variant, acc in parts.items():
            grouped.setdefault(variant, []).append(acc)
    return {variant: merge(accs) for variant, accs in grouped.items()}


def nearest_rank(hist: dict[str, int], q: float) -> int | None:
    """The nearest-rank q-th percentile (0 < q <= 100) of a histogram {str(bin): count}: the smallest bin whose
    cumulative count reaches ceil(q/100 * n). None for an empty histogram."""
    total = sum(hist.values())
    if total == 0:
        return None
    rank = max(1, math.ceil(q / 100 * total - 1e-9))
    seen = 0
    for key in sorted(hist, key=int):
        seen += hist[key]
        if seen >= rank:
            return int(key)
    raise AssertionError("unreachable: rank <= total")


def _top(counts: dict[str, int]) -> str:
    """The most frequent name (ties: the smallest), "" when none."""
    return min(counts, key=lambda name: (-counts[name], name)) if counts else ""


def _rate(part: float, whole: float) -> float:
    return part / whole if whole else 0.0


def feature_row(acc: Accumulator, window_s: float, late_frames: int = 0) -> dict[str, Any]:
    """A closed window's features (names in schema.py), without the camera id and timestamps."""
    frames = acc["frames"]
    drops = sum(acc["drops"])
    frames_in = frames + drops
    row: dict[str, Any] = {
        "frames_in": frames_in, "frames_out": frames, "drops": drops,
        "fps_in": frames_in / window_s, "fps_out": frames / window_s,
        "faces_mean": _rate(acc["faces"], frames),
        "faces_p95": float(nearest_rank(acc["faces_hist"], 95) or 0),
        "fail_closed_rate": _rate(acc["fail_closed"], frames),
        "held_track_rate": _rate(acc["held"], acc["faces"]),
        "drop_rate": _rate(drops, frames_in),
        "late_frames": late_frames,
        "score_hist": list(acc["scores"]), "face_size_hist": list(acc["sizes"]),
        "variant": _top(acc["variants"]), "arm": _top(acc["arms"]),
    }
    for reason, count in zip(DROP_REASONS, acc["drops"], strict=True):
        row[f"drop_rate_{reason}"] = _rate(count, frames_in)
    sums = acc["picture"]
    pictures = sums[0]
    row["picture_frames"] = pictures
    for i, name in enumerate(PICTURE_FIELDS, start=1):
        row[name] = _rate(sums[i], pictures)
    row["scene_change_max"] = float(sums[-1])
    for stage, hist in zip(STAGES, acc["latency"], strict=True):
        for q in PERCENTILES:
            index = nearest_rank(hist, q)
            row[f"{stage}_ms_p{q}"] = 0.0 if index is None else latency_value(index)
    return row


class HopWindows:
    """Hopping windows (size, step) from the tumbling windows of size `step` of one camera: each closed step
    window, merged with the camera's earlier closed ones still inside the hop, is the hop window ending with it.
    The state is a list [[start, parts], ...] of the closed step windows the next hop window still holds
    (JSON-able, for a state store)."""

    def __init__(self, size_ms: int, step_ms: int) -> None:
        if size_ms % step_ms:
            raise ValueError(f"hop size {size_ms} ms is not a multiple of its step {step_ms} ms")
        self.size_ms = size_ms
        self.step_ms = step_ms

    def close(self, kept: list[list[Any]], start: int, parts: Parts) -> tuple[Parts, list[list[Any]]]:
        """The hop window [start + step - size, start + step) and the state to keep after it."""
        end = start + self.step_ms
        inside = [item for item in kept if end - self.size_ms <= item[0] < start]
        merged = merge_parts([*(item[1] for item in inside), parts])
        keep = [item for item in [*inside, [start, parts]] if item[0] >= end + self.step_ms - self.size_ms]
        return merged, keep
