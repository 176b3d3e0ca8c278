"""The drift service's reading of closed windows: every window in the offline files since its last poll, oldest
first, however many closed in between; a window pushed twice (a redone checkpoint) once, its newest push; at start
only the last few closes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from imask.features.repo import append_offline, ensure_parquet, parquet_path
from imask.features.schema import FEATURES, VIEW_10S, feast_row
from services.drift.service import NewRows

EMPTY: dict[str, Any] = {"int": 0, "float": 0.0, "str": "", "int_list": []}


def row(camera: str, end_ms: int, frames: int = 60, pushed_s: int = 0) -> dict[str, Any]:
    features = {f.name: EMPTY[f.kind] for f in FEATURES}
    features.update(frames_out=frames, variant="default")
    created = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=pushed_s)
    return feast_row(camera, end_ms - 10_000, end_ms, features, created)


def close(data_dir: Path, end_ms: int, cameras: list[str], **kw: Any) -> None:
    append_offline(data_dir, VIEW_10S, [row(c, end_ms, **kw) for c in cameras], end_ms)


def test_every_window_since_the_last_poll_in_order(tmp_path: Path) -> None:
    ensure_parquet(tmp_path)
    rows = NewRows(parquet_path(tmp_path, VIEW_10S))
    assert rows.rows() == []
    for k in range(1, 5):  # four windows close between two polls
        close(tmp_path, k * 10_000, ["a", "b"])
    got = rows.rows()
    assert [(r["camera_id"], r["window_end_ms"]) for r in got] == [
        (c, k * 10_000) for k in range(1, 5) for c in ("a", "b")]
    close(tmp_path, 50_000, ["b"])
    close(tmp_path, 50_000, ["b"], frames=61, pushed_s=5)  # the same window pushed again after a crash
    got = rows.rows()
    assert [(r["camera_id"], r["window_end_ms"], r["frames_out"]) for r in got] == [("b", 50_000, 61)]
    assert rows.rows() == []


def test_at_start_only_the_last_closes(tmp_path: Path) -> None:
    ensure_parquet(tmp_path)
    for k in range(1, 11):
        close(tmp_path, k * 10_000, ["a"])
    rows = NewRows(parquet_path(tmp_path, VIEW_10S))
    ends = [r["window_end_ms"] for r in rows.rows()]
    assert ends == [k * 10_000 for k in range(11 - NewRows.START_FILES, 11)]
    close(tmp_path, 110_000, ["a"])
    assert [r["window_end_ms"] for r in rows.rows()] == [110_000]
