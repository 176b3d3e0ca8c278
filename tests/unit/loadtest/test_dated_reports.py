"""Reports keep their history: the latest at its fixed path, a copy named by the run's start (UTC) beside it."""

from __future__ import annotations

import calendar
from pathlib import Path

from imask.loadtest.dated import dated_path, run_stamp, write_with_dated_copy

# 2026-12-06 03:15:42 UTC, whatever the machine's time zone
STARTED = calendar.timegm((2026, 12, 6, 3, 15, 42, 0, 0, 0))


def test_the_stamp_is_the_start_in_utc_to_the_minute() -> None:
    assert run_stamp(STARTED) == "2026-12-06T0315"
    assert dated_path(Path("out/bench/report.json"), STARTED) == Path("out/bench/report-2026-12-06T0315.json")
    assert dated_path(Path("out/load/scenarios.json"), STARTED).name == "scenarios-2026-12-06T0315.json"


def test_the_latest_and_the_dated_copy_hold_the_same_text(tmp_path: Path) -> None:
    latest = tmp_path / "eval" / "default" / "report.json"
    copy = write_with_dated_copy(latest, '{"run": 1}\n', STARTED)
    later = write_with_dated_copy(latest, '{"run": 2}\n', STARTED + 3600)
    assert latest.read_text() == '{"run": 2}\n'  # the fixed name is always the latest run
    assert copy.read_text() == '{"run": 1}\n'  # earlier runs stay, each under its own start
    assert later.name == "report-2026-12-06T0415.json"
    assert sorted(p.name for p in latest.parent.iterdir()) == [
        "report-2026-12-06T0315.json", "report-2026-12-06T0415.json", "report.json"]
