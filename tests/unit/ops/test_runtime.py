"""The service runtime (imask.ops.runtime): ready only once the start-up heap is frozen."""

from __future__ import annotations

import subprocess
import sys


def test_a_ready_service_has_frozen_its_start_up_heap() -> None:
    # In a child: freezing is process-wide. Full collections then skip what start-up allocated (no ~20 ms pauses
    # mid-frame); the process is ready only after.
    code = """
import gc
from imask.ops.runtime import ServiceRuntime
from imask.ops.settings import RecorderSettings
runtime = ServiceRuntime("probe", RecorderSettings(ops_port=0)).start()
before = (gc.get_freeze_count(), runtime.is_ready())
runtime.mark_ready()
print(before, (gc.get_freeze_count() > 1000, runtime.is_ready()))
runtime.close()
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split("\n")[0] == "(0, False) (True, True)", out.stdout + out.stderr
