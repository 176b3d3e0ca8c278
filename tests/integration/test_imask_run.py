"""The `imask run` orchestration (ingest, workers, recorder as processes) against the real broker; the run on the
registry's champion (the session's own MLflow) and past a backlog that earlier producers left in frames.raw."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import promql
import pytest

from conftest import subprocess_env
from imask.devstack.run_model import ensure_champion
from imask.devstack.settings import REPO_ROOT, StackSettings
from imask.loadtest.samples import synthetic_clip
from imask.ops.settings import KafkaSettings
from imask.registry.refs import ModelRef
from imask.registry.store import Registry
from imask.streaming.lag import group_lag
from streams import moving_face_frames, publish

pytestmark = pytest.mark.kafka


def test_imask_run_end_to_end(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    # 40 frames at 2 fps: 20 s of streaming, so Prometheus (5 s scrapes) takes each service several times, a rate()
    # over the ingest's and the worker's counters has data, and a 10 s window closes and is pushed while the
    # features stream is still scraped (the dashboards' check at the end; at 13 s its first push could come last).
    clip = synthetic_clip(tmp_path / "clip.mp4", frames=40, fps=2)
    env = {**subprocess_env(), "IMASK_WORKER_GROUP_ID": f"g-{uuid.uuid4().hex[:6]}",
           "IMASK_RECORDER_GROUP_ID": f"r-{uuid.uuid4().hex[:6]}",
           "IMASK_ALERTING_GROUP_ID": f"a-{uuid.uuid4().hex[:6]}"}
    targets = StackSettings().prometheus_targets_dir
    before = set(targets.glob("*.json"))
    began = time.time()
    out = subprocess.run([sys.executable, "-m", "imask.cli.main", "run", "--source", f"cam1={clip}", "--source",
                          f"cam2={clip}", "--workers", "1", "--variant", "realtime", "--out", str(tmp_path / "run")],
                         capture_output=True, text=True, env=env, timeout=300, cwd=REPO_ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "run summary" in out.stdout and "end_to_end" in out.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["frames_in"] == 80 and summary["frames_masked"] == 80 and summary["unaccounted"] == 0
    assert summary["fail_closed"] == 0 and summary["faces_masked"] >= 76
    assert summary["model"]["variant"] == "realtime" and "version" not in summary["model"]  # --variant: no registry
    assert summary["metrics"]["imask_frames_unmasked_total"] == 0
    assert {Path(p).name for p in summary["recordings"]} == {"cam1.mp4", "cam2.mp4"}
    assert set(summary["latency_ms"]) >= {"decode", "inference", "mask", "encode", "publish", "end_to_end"}
    # Every service it started was a target of the stack's Prometheus, and is no longer; a clean run raises no
    # alert, and the summary ends saying so.
    # (and the features stream and FeatureService, which it starts unless the stack already runs them)
    features = {"features", "features-stream"}
    assert set(summary["prometheus_targets"]) - features == {"alerting", "worker-0", "recorder", "ingest"}
    assert set(targets.glob("*.json")) <= before
    assert summary["exit_codes"]["alerting"] == 0
    assert summary["alerts"] == [], summary["alerts"]
    assert ["alerts", "none", "raised"] in [line.split() for line in out.stdout.splitlines()], out.stdout
    # Every Grafana panel's query and every rule expression runs on the stack's Prometheus over the run, names only
    # metrics the code defines, and the panels over what these services export returned data (tests/promql.py).
    problems = promql.check_queries(promql.dashboard_queries() + promql.rule_queries(), "imask run", began - 5,
                                    time.time())
    assert not problems, "\n".join(problems)
    # The stack's console answers after the run, and the summary says where and with which token.
    console = summary["console"]
    assert console["answering"] and console["url"] == f"http://127.0.0.1:{StackSettings().console_port}/"
    assert f"console          {console['url']} token {console['token']}" in out.stdout
    with urllib.request.urlopen(urllib.request.Request(console["url"] + "alerts", headers={  # nosec B310
            "Authorization": f"Bearer {console['token']}"}), timeout=10) as page:
        assert page.status == 200 and b"Deliveries" in page.read()


def test_imask_run_ctrl_c_drains_every_process(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    clip = synthetic_clip(tmp_path / "clip.mp4", frames=200, fps=20)  # 10 s at source pace
    env = {**subprocess_env(), "IMASK_WORKER_GROUP_ID": f"g-{uuid.uuid4().hex[:6]}",
           "IMASK_RECORDER_GROUP_ID": f"r-{uuid.uuid4().hex[:6]}",
           "IMASK_ALERTING_GROUP_ID": f"a-{uuid.uuid4().hex[:6]}"}
    out_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "imask.cli.main", "run", "--source", f"cam={clip}", "--workers", "1",
                             "--variant", "realtime", "--out", str(out_dir)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO_ROOT)
    partial = out_dir / "recordings" / "cam.partial.mp4"
    for _ in range(600):  # interrupt mid-stream, once the recorder is writing
        if partial.exists():
            break
        time.sleep(0.1)
    time.sleep(1.5)  # a few dozen frames through, the stream far from its end
    proc.send_signal(signal.SIGINT)
    stdout, _ = proc.communicate(timeout=90)
    assert proc.returncode == 1, stdout  # interrupted: not a complete run, but a clean one
    assert "run summary" in stdout
    logs = {name: (out_dir / "logs" / f"{name}.log").read_text() for name in ("ingest", "worker-0", "recorder")}
    assert '"worker stopped", "fatal": null' in logs["worker-0"]
    assert '"ingest finished"' in logs["ingest"] and '"recording closed"' in logs["recorder"]
    assert (out_dir / "recordings" / "cam.mp4").exists() and not partial.exists()
    summary = json.loads((out_dir / "summary.json").read_text())
    codes = {k: v for k, v in summary["exit_codes"].items() if k not in ("features", "features-stream")}
    assert codes == {"ingest": 0, "worker-0": 0, "recorder": 0, "alerting": 0} and set(
        summary["exit_codes"].values()) == {0}
    assert 0 < summary["frames_masked"] < 200


@pytest.mark.mlflow
def test_imask_run_masks_its_own_frames_past_a_backlog_on_the_champion(kafka_settings: KafkaSettings,
                                                                       mlflow_uri: str, tmp_path: Path) -> None:
    """600 frames (and 6 end-of-stream markers) wait in frames.raw for the regular worker group, as a replay with no
    worker running leaves them: the run's own frames are masked in real time anyway (its workers read from the end
    in a group of the run's own), the backlog stays where it was with the run's frames behind it counted, and the
    summary says both. The workers run the registry's champion, which the run registered (once) when there was
    none."""
    regular = f"g-{uuid.uuid4().hex[:6]}"
    env = {**subprocess_env(), "IMASK_WORKER_GROUP_ID": regular, "IMASK_RECORDER_GROUP_ID": f"r-{uuid.uuid4().hex[:6]}",
           "IMASK_ALERTING_GROUP_ID": f"a-{uuid.uuid4().hex[:6]}", "IMASK_REGISTRY_URI": mlflow_uri}
    frames = moving_face_frames(100)
    publish(kafka_settings, {f"old{i}": frames for i in range(6)})  # the backlog: old0..old5, 100 frames each
    clip = synthetic_clip(tmp_path / "clip.mp4", frames=80, fps=10)  # 8 s at source pace, two cameras
    began = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "imask.cli.main", "run", "--source", f"cam1={clip}", "--source",
                          f"cam2={clip}", "--workers", "1", "--out", str(tmp_path / "run")],
                         capture_output=True, text=True, env=env, timeout=300, cwd=REPO_ROOT)
    took = time.monotonic() - began
    assert out.returncode == 0, out.stdout + out.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    # Every frame of the run accounted for, in real time after start-up.
    assert summary["frames_in"] == 160 and summary["unaccounted"] == 0
    assert summary["frames_masked"] + summary["frames_dropped"] == 160
    steady = summary["end_to_end_ms_steady"]
    assert steady["n"] >= 80 and steady["p99"] < 1000, (steady, took)
    # The backlog: reported, and still waiting for the regular group, with the run's own frames behind it counted.
    raw = summary["backlog"][kafka_settings.topic_raw]
    assert raw["regular_group"] == regular and raw["run_group"] != regular
    assert raw["backlog_at_start"] == 606 and sum(raw["backlog_partitions"].values()) == 606
    left = sum(p.lag for p in group_lag(kafka_settings, regular, kafka_settings.topic_raw))
    assert left == 606 + raw["run_messages_behind_backlog"], raw
    assert "606 messages waited for " + regular in out.stdout
    # The champion: registered by this run (or an earlier test's), named in the summary, and what every frame ran.
    champion = Registry(mlflow_uri).info(ModelRef("imask-masker", alias="champion"))
    version = f"imask-masker/{champion.version}"
    assert summary["model"]["version"] == version and summary["model"]["ref"] == "imask-masker@champion"
    assert summary["model"]["seen_in_frames_meta"] == {version: summary["frames_masked"]}
    assert f"model            {version} (imask-masker@champion" in out.stdout
    versions = len(Registry(mlflow_uri).versions("imask-masker"))
    again, registered = ensure_champion(mlflow_uri, "realtime")  # idempotent: nothing new once there is one
    assert not registered and again["version"] == champion.version
    assert len(Registry(mlflow_uri).versions("imask-masker")) == versions
