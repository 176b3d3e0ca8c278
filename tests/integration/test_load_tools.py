"""record, replay, load run (collector + report), compare, lag and scale against the real broker."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from conftest import subprocess_env
from imask.devstack.settings import REPO_ROOT, StackSettings
from imask.loadtest.recordfile import read_recording
from imask.loadtest.replay import Replayer, ReplayPlan, load_source
from imask.loadtest.samples import synthetic_clip
from imask.ops.settings import KafkaSettings
from imask.streaming.lag import group_lag
from imask.v1 import frames_pb2 as pb
from streams import collect, start_worker

pytestmark = pytest.mark.kafka


def imask(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "imask.cli.main", *args], capture_output=True, text=True,
                          env=subprocess_env(), cwd=REPO_ROOT, timeout=timeout)


def test_replay_record_and_replay_the_recording(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    clip = synthetic_clip(tmp_path / "clip.mp4", frames=12, fps=12)
    result = Replayer(kafka_settings, [load_source(clip)], ReplayPlan(cameras=2, speed=0, camera_prefix="r")).run()
    assert result.frames == {"r0": 12, "r1": 12}
    recording = tmp_path / "raw.imrec"
    out = imask("record", "--out", str(recording), "--from-beginning", "--seconds", "5", "--max-messages", "26")
    assert out.returncode == 0, out.stderr
    messages = list(read_recording(recording))
    frames = [pb.Frame.FromString(m.value) for m in messages]
    assert len(messages) == 26 and sum(f.end_of_stream for f in frames) == 2
    assert all(m.timestamp_us > 0 for m in messages)
    source = load_source(recording)  # the recording replays with its original pace
    assert len(source.frames) == 24 and source.fps > 0
    worker = start_worker(tmp_path, "w", f"g-{uuid.uuid4().hex[:6]}")
    again = Replayer(kafka_settings, [source], ReplayPlan(cameras=3, speed=0, camera_prefix="again")).run()
    assert again.frames == {"again0": 24, "again1": 24, "again2": 24}
    got = collect(kafka_settings, {"again0", "again1", "again2"})
    assert got.ledger.summary()["unaccounted"] == 0 and got.ledger.summary()["frames_masked"] == 72
    assert worker.proc.poll() is None


def test_load_run_report_compare_and_lag(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    clip = synthetic_clip(tmp_path / "clip.mp4", frames=30, fps=15)
    group = f"g-{uuid.uuid4().hex[:6]}"
    start_worker(tmp_path, "w", group)
    reports = []
    for name, speed in (("a", "0"), ("b", "2")):
        out = imask("load", "run", str(clip), "--cameras", "2", "--speed", speed, "--group", group,
                    "--prefix", f"cam{name}", "--out", str(tmp_path / name), "--leak-every", "5")
        assert out.returncode == 0, out.stdout + out.stderr
        report = json.loads((tmp_path / name / "report.json").read_text())
        assert report["complete"] and report["frames_in"] == 60 and report["unaccounted"] == 0
        assert report["leak_check"]["frames"] == 12 and report["leak_check"]["re_found_confidently"] == 0
        assert report["end_to_end_ms"]["p50"] > 0 and report["throughput_fps"] > 0
        assert (tmp_path / name / "report.png").stat().st_size > 10_000
        assert "frames in 60" in (tmp_path / name / "summary.txt").read_text()
        reports.append(str(tmp_path / name / "report.json"))
    out = imask("load", "compare", *reports)
    assert out.returncode == 0 and "throughput_fps" in out.stdout and "B/A" in out.stdout
    lag = group_lag(kafka_settings, group)
    assert sum(p.lag for p in lag) == 0  # everything consumed and committed
    out = imask("lag", "--group", group, "--json")
    assert out.returncode == 0 and len(json.loads(out.stdout)) == 4


def test_lag_counts_waiting_frames_in_messages_and_seconds(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    clip = synthetic_clip(tmp_path / "clip.mp4", frames=10, fps=10)
    Replayer(kafka_settings, [load_source(clip)], ReplayPlan(cameras=2, speed=0)).run()
    time.sleep(1.0)
    lag = group_lag(kafka_settings, f"nobody-{uuid.uuid4().hex[:6]}")  # a group that never consumed
    assert sum(p.lag for p in lag) == 22  # 20 frames + 2 end-of-stream markers
    # The oldest waiting frame was published at least the second slept ago: age comes from its timestamp.
    assert max(p.oldest_age_s for p in lag if p.lag) >= 1.0


def test_scale_starts_and_drains_local_workers(kafka_settings: KafkaSettings) -> None:
    group = f"scale-{uuid.uuid4().hex[:6]}"
    out = imask("scale", "2", "--group", group)
    assert out.returncode == 0 and json.loads(out.stdout.splitlines()[-1]) == {"group": group, "workers": 2}
    # Each started worker is a target of the stack's Prometheus (file service discovery) until it is drained.
    started = [json.loads(line)["started"] for line in out.stdout.splitlines() if '"started"' in line]
    targets = StackSettings().prometheus_targets_dir
    assert len(started) == 2 and all((targets / f"{name}.json").exists() for name in started)
    out = imask("scale", "0", "--group", group)
    assert out.returncode == 0 and json.loads(out.stdout.splitlines()[-1]) == {"group": group, "workers": 0}
    assert not any((targets / f"{name}.json").exists() for name in started)
    logs = list((REPO_ROOT / ".stack" / "workers" / group).glob("*.log"))
    assert len(logs) == 2 and all('"worker stopped", "fatal": null' in log.read_text() for log in logs)


def _replay_with_event(kafka_settings: KafkaSettings, tmp_path: Path, group: str, event: object) -> dict[str, object]:
    """4 cameras at 1x for ~6 s; `event` runs 2 s in; the collector follows the whole run."""
    import threading
    import time

    from imask.loadtest.report import Collector, build_report
    from imask.streaming.kafka import end_offsets

    clip = synthetic_clip(tmp_path / "clip.mp4", frames=90, fps=15)
    replayer = Replayer(kafka_settings, [load_source(clip)], ReplayPlan(cameras=4, speed=1, camera_prefix="s"))
    start = end_offsets(kafka_settings, [kafka_settings.topic_meta, kafka_settings.topic_dlq])
    collector = Collector(kafka_settings, set(replayer.camera_ids()), start, group)
    thread = threading.Thread(target=replayer.run, daemon=True)
    thread.start()
    time.sleep(2)
    event()  # type: ignore[operator]
    report = build_report(collector.run(180))
    thread.join(10)
    return report


def test_scaling_up_mid_replay_loses_nothing(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    group = f"g-{uuid.uuid4().hex[:6]}"
    start_worker(tmp_path, "first", group)
    report = _replay_with_event(kafka_settings, tmp_path, group, lambda: start_worker(tmp_path, "second", group))
    assert report["complete"] and report["unaccounted"] == 0 and report["frames_masked"] == 360
    assert report["max_output_gap_ms"] > 0  # the rebalance pause is measured (no bound: CPU-dependent)
    assert report["lag"]["samples"]


def test_worker_killed_mid_replay_its_partitions_move(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    import signal

    group = f"g-{uuid.uuid4().hex[:6]}"
    victim = start_worker(tmp_path, "victim", group)
    start_worker(tmp_path, "survivor", group)
    report = _replay_with_event(kafka_settings, tmp_path, group, lambda: victim.proc.send_signal(signal.SIGKILL))
    assert report["complete"] and report["unaccounted"] == 0 and report["frames_masked"] == 360
    assert victim.proc.wait(5) == -signal.SIGKILL
    # The session timeout (10 s) passes before the survivor takes the partitions: a long output gap.
    assert report["max_output_gap_ms"] > 1000

