"""The one clock of frame timestamps: microseconds since the epoch, as every envelope and record carries them."""

from __future__ import annotations

import time


def now_us() -> int:
    return time.time_ns() // 1000
