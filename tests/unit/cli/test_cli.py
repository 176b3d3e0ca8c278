"""The imask command line: help for every command, a bad setting exits 2 with the variable's name."""

from __future__ import annotations

import os
import subprocess
import sys


def test_cli_help_explains_every_command() -> None:
    out = subprocess.run([sys.executable, "-m", "imask.cli.main", "--help"], capture_output=True, text=True, check=True)
    for command in ("worker", "ingest", "recorder", "mask", "stack", "run"):
        assert command in out.stdout
    for command in ("worker", "ingest", "recorder", "mask"):
        sub = subprocess.run([sys.executable, "-m", "imask.cli.main", command, "--help"], capture_output=True,
                             text=True, check=True)
        assert "IMASK_" in sub.stdout


def test_cli_bad_setting_exits_2_with_message() -> None:
    env = {**os.environ, "IMASK_WORKER_JPEG_QUALITY": "200"}
    out = subprocess.run([sys.executable, "-m", "imask.cli.main", "worker"], capture_output=True, text=True, env=env)
    assert out.returncode == 2 and "IMASK_WORKER_JPEG_QUALITY" in out.stderr
