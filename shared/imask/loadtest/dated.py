"""Reports that keep their history: the latest at a fixed path, and a dated copy beside it for every run.

`make bench`, `make eval` and `make load` write `report.json` (or `scenarios.json`) and, next to it, the same text as
`report-2026-12-06T0315.json`, named by the run's start in UTC. The fixed name is what tools and people read; the
dated copies are the record of past runs, so no document has to keep figures by the date.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path


def run_stamp(started: float) -> str:
    """A run's start (seconds since the epoch) as `2026-12-06T0315`, in UTC."""
    return time.strftime("%Y-%m-%dT%H%M", time.gmtime(started))


def dated_path(path: Path, started: float) -> Path:
    """`out/bench/report.json` -> `out/bench/report-2026-12-06T0315.json` for a run started then."""
    return path.with_name(f"{path.stem}-{run_stamp(started)}{path.suffix}")


def keep_dated_copy(path: Path, started: float) -> Path:
    """Copy the report just written at `path` to its dated name beside it (a run started in the same minute replaces
    that copy); returns the copy."""
    copy = dated_path(path, started)
    shutil.copyfile(path, copy)
    return copy


def write_with_dated_copy(path: Path, text: str, started: float) -> Path:
    """Write `text` to `path` and to its dated copy; returns the copy."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return keep_dated_copy(path, started)
