"""Collecting a load run from frames.meta / frames.dlq / frames.masked, and its report (JSON, PNG plots, text).

Latency is exact per frame (capture to masked frame acknowledged, from the worker's own timings); throughput and
output gaps come from masked timestamps; lag is sampled from the workers' group while the run goes on; masking
correctness is the independent-detector leak check on a sample of the replayed frames.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imask.loadtest.accounting import StreamLedger, summarize
from imask.loadtest.replay import Source
from imask.media import decode_any
from imask.ops.settings import KafkaSettings
from imask.streaming.kafka import TopicReader
from imask.streaming.lag import group_lag
from imask.v1 import frames_pb2 as pb

log = logging.getLogger(__name__)


@dataclass
class Collection:
    ledger: StreamLedger
    latency: list[tuple[float, float]] = field(default_factory=list)  # (masked at, s since start; end-to-end ms)
    masked_at: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    latency_by_camera: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    lag: list[tuple[float, int, float]] = field(default_factory=list)  # (t, messages, oldest age s)
    leak_checked: int = 0
    leak_faces: int = 0
    leaks: list[str] = field(default_factory=list)
    reliable_leaks: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.time)


class Collector:
    def __init__(self, settings: KafkaSettings, cameras: set[str], start: dict[tuple[str, int], int],
                 group_id: str | None = None, originals: dict[str, Source] | None = None,
                 leak_sample_every: int = 0) -> None:
        self.settings = settings
        self.group_id = group_id
        self.originals = originals or {}
        self.leak_every = leak_sample_every
        topics = [settings.topic_meta, settings.topic_dlq]
        if leak_sample_every and originals:
            topics.append(settings.topic_masked)
        self.reader = TopicReader(settings, {tp: off for tp, off in start.items() if tp[0] in topics})
        self.result = Collection(StreamLedger(cameras))

    def run(self, timeout_s: float, lag_every_s: float = 1.0) -> Collection:
        res = self.result
        deadline = time.monotonic() + timeout_s
        next_lag = 0.0
        try:
            while not res.ledger.complete() and time.monotonic() < deadline:
                if self.group_id and time.monotonic() >= next_lag:
                    next_lag = time.monotonic() + lag_every_s
                    self._sample_lag()
                msg = self.reader.poll(0.2)
                if msg is None:
                    continue
                value = msg.value() or b""
                if msg.topic() == self.settings.topic_meta:
                    self._meta(pb.FrameMeta.FromString(value))
                elif msg.topic() == self.settings.topic_dlq:
                    res.ledger.add_drop(pb.DropRecord.FromString(value))
                else:
                    self._leak_sample(pb.MaskedFrame.FromString(value))
        finally:
            if self.group_id:
                self._sample_lag()
            self.reader.close()
        return res

    def _meta(self, meta: pb.FrameMeta) -> None:
        res = self.result
        before = res.ledger.by_camera[meta.camera_id].duplicates if meta.camera_id in res.ledger.by_camera else 0
        res.ledger.add_meta(meta)
        if meta.end_of_stream or res.ledger.by_camera[meta.camera_id].duplicates != before:
            return
        at = meta.masked_ts_us / 1e6 - res.started
        res.latency.append((at, meta.timings.end_to_end_ms))
        res.latency_by_camera[meta.camera_id].append(meta.timings.end_to_end_ms)
        res.masked_at[meta.camera_id].append(at)

    def _sample_lag(self) -> None:
        try:
            parts = group_lag(self.settings, str(self.group_id), timeout=2.0)
        except Exception as exc:  # a lag probe must never stop a collection
            log.warning("lag sample failed", extra={"error": str(exc)})
            return
        self.result.lag.append((time.time() - self.result.started, sum(p.lag for p in parts),
                                max((p.oldest_age_s for p in parts), default=0.0)))

    def _leak_sample(self, masked: pb.MaskedFrame) -> None:
        from imask.evaluation.leakcheck import check_leak

        frame = masked.frame
        source = self.originals.get(frame.camera_id)
        if frame.end_of_stream or source is None or frame.seq % self.leak_every:
            return
        original = decode_any(source.frames[frame.seq % len(source.frames)].data)
        check = check_leak(original, decode_any(frame.data))
        res = self.result
        res.leak_checked += 1
        res.leak_faces += len(check.original_confidences)
        res.leaks += [f"{frame.camera_id}#{frame.seq}" for _ in check.leaked]
        res.reliable_leaks += [f"{frame.camera_id}#{frame.seq}" for _ in check.reliable_leaks]


WARMUP_S = 2.0  # first seconds: producer and consumer start-up (idempotent producer init, first fetches)


def build_report(col: Collection, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    summary = col.ledger.summary()
    per_second = Counter(int(t) for t, _ in col.latency)
    gaps = {cam: round(float(np.max(np.diff(sorted(ts))) * 1e3), 1) if len(ts) > 1 else 0.0
            for cam, ts in col.masked_at.items()}
    first = min((t for t, _ in col.latency), default=0.0)
    span = (max(t for t, _ in col.latency) - first) if len(col.latency) > 1 else 0.0
    return {
        **(extra or {}),
        "frames_in": summary["frames_in"], "frames_masked": summary["frames_masked"],
        "frames_dropped": summary["frames_dropped"], "drop_reasons": summary["drop_reasons"],
        "unaccounted": summary["unaccounted"], "duplicates": summary["duplicates"],
        "fail_closed": summary["fail_closed"], "complete": col.ledger.complete(),
        "throughput_fps": round(len(col.latency) / span, 2) if span else None,
        "end_to_end_ms": summarize([lat for _, lat in col.latency]),
        "end_to_end_ms_steady": summarize([lat for t, lat in col.latency if t - first >= WARMUP_S]),
        "end_to_end_ms_by_camera": {cam: summarize(v) for cam, v in sorted(col.latency_by_camera.items())},
        "stage_latency_ms": summary["latency_ms"],
        "max_output_gap_ms": max(gaps.values(), default=0.0), "output_gap_ms_by_camera": gaps,
        "lag": {"max_messages": max((m for _, m, _ in col.lag), default=0),
                "max_age_s": max((a for _, _, a in col.lag), default=0.0), "samples": col.lag},
        "leak_check": {"frames": col.leak_checked, "faces": col.leak_faces, "re_found": len(col.leaks),
                       "re_found_confidently": len(col.reliable_leaks), "examples": col.leaks[:10]},
        "throughput_timeline": sorted(per_second.items()),
        "latency_samples": col.latency,
        "cameras": summary["cameras"],
    }


def write_report(report: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "summary.txt").write_text(summary_text(report))
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    lat = report["latency_samples"]
    axes[0][0].plot([t for t, _ in lat], [v for _, v in lat], ".", markersize=2)
    axes[0][0].set(title="end-to-end latency per frame", xlabel="s since start", ylabel="ms")
    axes[0][1].hist([v for _, v in lat], bins=50)
    axes[0][1].set(title="end-to-end latency histogram", xlabel="ms", ylabel="frames")
    tl = report["throughput_timeline"]
    axes[1][0].plot([t for t, _ in tl], [n for _, n in tl], "-o", markersize=3)
    axes[1][0].set(title="masked frames per second", xlabel="s since start", ylabel="fps")
    lag = report["lag"]["samples"]
    axes[1][1].plot([t for t, _, _ in lag], [m for _, m, _ in lag], "-", label="messages")
    axes[1][1].set(title="consumer lag (frames.raw)", xlabel="s since start", ylabel="messages")
    fig.tight_layout()
    plot = out / "report.png"
    fig.savefig(plot, dpi=100)
    plt.close(fig)
    return [out / "report.json", out / "summary.txt", plot]


def summary_text(r: dict[str, Any]) -> str:
    e2e = r["end_to_end_ms"]
    lines = [
        f"frames in {r['frames_in']}, masked {r['frames_masked']}, dropped {r['frames_dropped']}, "
        f"unaccounted {r['unaccounted']}, duplicates {r['duplicates']}, fail-closed {r['fail_closed']}",
        f"throughput {r['throughput_fps']} fps; end-to-end ms p50 {e2e.get('p50')} p95 {e2e.get('p95')} "
        f"p99 {e2e.get('p99')} max {e2e.get('max')}; after the first {WARMUP_S:g} s: p99 "
        f"{r['end_to_end_ms_steady'].get('p99')}",
        f"longest output gap {r['max_output_gap_ms']} ms; lag max {r['lag']['max_messages']} messages, "
        f"{r['lag']['max_age_s']} s",
        f"leak check: {r['leak_check']['frames']} frames, {r['leak_check']['faces']} faces, "
        f"{r['leak_check']['re_found']} re-found ({r['leak_check']['re_found_confidently']} confidently)",
    ]
    for stage, p in r["stage_latency_ms"].items():
        lines.append(f"  {stage:<12} p50 {p['p50']:>9} p95 {p['p95']:>9} p99 {p['p99']:>9} ms")
    return "\n".join(lines) + "\n"


COMPARED = ("throughput_fps", "frames_masked", "unaccounted", "duplicates", "fail_closed", "max_output_gap_ms")


def compare(a: dict[str, Any], b: dict[str, Any]) -> str:
    """Two reports side by side with b/a ratios."""
    rows = [f"{'metric':<24}{'A':>12}{'B':>12}{'B/A':>8}"]
    pairs = [(k, a.get(k), b.get(k)) for k in COMPARED]
    pairs += [(f"end_to_end {q}", a["end_to_end_ms"].get(q), b["end_to_end_ms"].get(q)) for q in ("p50", "p99")]
    pairs += [("lag max messages", a["lag"]["max_messages"], b["lag"]["max_messages"])]
    for name, x, y in pairs:
        ratio = f"{y / x:.2f}" if isinstance(x, int | float) and isinstance(y, int | float) and x else "-"
        rows.append(f"{name:<24}{x!s:>12}{y!s:>12}{ratio:>8}")
    return "\n".join(rows) + "\n"
