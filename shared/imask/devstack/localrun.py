"""`imask run` (make run): the whole pipeline on the local stack, with a summary at the end.

Brings up Kafka and Redis, starts N workers, the recorder and ingest (the sample clips as cameras) as separate
processes, follows frames.meta and frames.dlq until every frame of every camera is accounted for, then drains
everything and prints frames in / masked / dropped / fail-closed, fps and per-stage latency percentiles.
Ctrl-C drains all processes in order (ingest first, recorder last) and still prints what was seen.

The stack's operator console (http://127.0.0.1:8470/) lists the run's cameras: the run's ingest takes the admin
port the console reads (9401) when it is free; the summary prints the console's URL and sign-in token.

With the stack's Alertmanager (the default) it also runs `imask alerting` on the alerts topic, lets the stack's
Prometheus scrape every service it starts (file service discovery, removed at the end), and the summary ends with
the alerts raised during the run and where each was delivered (Alertmanager's list and the alert inbox).

The workers run the model registry's champion (IMASK_MODEL=imask-masker@champion) from the stack's MLflow; when
the registry has no champion the run registers its variant and makes it the champion (run_model.py). --variant
runs a built-in variant instead, without the registry.

The run masks its own frames: its workers and recorder read frames.raw and frames.masked in consumer groups of the
run's own, from each partition's end as the run starts, so a backlog that earlier producers left for the regular
groups is neither masked first nor lost; the summary reports its size (run_groups.py).

With --live SECONDS the clips are served as live RTSP cameras (the project's GStreamer camera simulator) and
ingested like real cameras (real-time drop policy) for that long; then the cameras end their streams and the
run is accounted for the same way.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

from imask.alerting.client import AlertmanagerClient, Unavailable
from imask.alerting.deliveries import describe, read_inbox, report
from imask.devstack import console, run_groups, stack
from imask.devstack.procs import ServiceProcess, spawn, stop_all
from imask.devstack.prometheus import register_target, service_label, target_health, unregister_target
from imask.devstack.rtsp_server import RtspServer
from imask.devstack.run_features import RunFeatures
from imask.devstack.run_features import table as features_table
from imask.devstack.run_groups import RunGroup
from imask.devstack.run_model import RunModel, choose
from imask.devstack.settings import REPO_ROOT, StackSettings
from imask.loadtest.accounting import StreamLedger
from imask.loadtest.samples import default_sources, synthetic_clip
from imask.ops.logs import configure_logging
from imask.ops.settings import KafkaSettings, load_settings
from imask.recording import recording_of
from imask.streaming.kafka import TopicReader, end_offsets, ensure_topics
from imask.v1 import frames_pb2 as pb

log = logging.getLogger("imask.run")


def backlog_line(run: dict[str, object]) -> str:
    waiting = run.get("backlog_at_start", 0)
    if not waiting:
        line = f"none waiting for {run['regular_group']}"
    else:
        line = (f"{waiting} messages waited for {run['regular_group']} at start "
                f"(oldest {run['backlog_oldest_age_s']} s, partitions {run['backlog_partitions']}): "
                "left there, not masked by this run")
        if run.get("run_messages_behind_backlog"):
            line += f"; {run['run_messages_behind_backlog']} of the run's own are behind it"
    if run.get("error"):
        line += f" ({run['error']})"
    return line


def print_summary(summary: dict[str, object]) -> None:
    print("\n=== Identity Masker run summary ===")
    model = summary.get("model")
    if isinstance(model, dict):
        print(f"  model            {model.get('line')}")
        seen = model.get("seen_in_frames_meta")
        if seen:
            print(f"  model in meta    {seen}")
    for name, run in (summary.get("backlog") or {}).items():  # type: ignore[attr-defined]
        print(f"  backlog          {name}: {backlog_line(run)}")
    for key in ("frames_in", "frames_masked", "frames_dropped", "fail_closed", "faces_masked", "duplicates",
                "unaccounted", "masked_fps"):
        print(f"  {key:<16} {summary.get(key)}")
    if summary.get("drop_reasons"):
        print(f"  drop reasons     {summary['drop_reasons']}")
    cams = summary.get("cameras", {})
    assert isinstance(cams, dict)
    for name, cam in cams.items():
        print(f"  camera {name:<10} {cam}")
    latency = summary.get("latency_ms", {})
    assert isinstance(latency, dict)
    print(f"  {'stage':<14}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}{'n':>8}")
    for stage, p in latency.items():
        print(f"  {stage:<14}{p['p50']:>10}{p['p95']:>10}{p['p99']:>10}{p['n']:>8}")
    steady = summary.get("end_to_end_ms_steady") or {}
    assert isinstance(steady, dict)
    if steady:
        print(f"  {'end_to_end*':<14}{steady['p50']:>10}{steady['p95']:>10}{steady['p99']:>10}{steady['n']:>8}"
              "   (* start-up excluded: frames captured 3 s or more after the first)")
    for path in summary.get("recordings", []):  # type: ignore[attr-defined]
        print(f"  recording        {path}")
    web = summary.get("console")
    if isinstance(web, dict) and web:
        state = "" if web.get("answering") else " (not answering: see .stack/console/console.log)"
        print(f"  console          {web['url']} token {web['token']} (kept in {web['token_file']}){state}")
    targets = summary.get("prometheus_targets") or {}
    assert isinstance(targets, dict)
    if targets:
        print(f"  prometheus       {', '.join(f'{k} {v}' for k, v in targets.items())}")
    alerts = summary.get("alerts")
    if alerts is None:
        print(f"  alerts           not checked: {summary.get('alerts_error', 'no Alertmanager in the stack')}")
    elif not alerts:
        print("  alerts           none raised")
    else:
        assert isinstance(alerts, list)
        print(f"  alerts           {len(alerts)} raised (Alertmanager state -> where delivered):")
        for row in alerts:
            print(f"    {describe(row)}")


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def follow(settings: KafkaSettings, start: dict[tuple[str, int], int], ledger: StreamLedger,
           services: list[ServiceProcess], timeout: float, logs: Path, versions: dict[str, int]) -> None:
    """Read frames.meta and frames.dlq from `start` until the ledger says every frame is accounted for; count the
    model versions of the run's cameras' frames in `versions`."""
    reader = TopicReader(settings, start)
    began = time.monotonic()
    try:
        while not ledger.complete():
            if time.monotonic() - began > timeout:
                log.error("timed out waiting for the stream to be accounted for")
                return
            crashed = [svc.name for svc in services if svc.proc.poll() is not None]
            if crashed:
                log.error("process(es) exited early: %s (see %s)", crashed, logs)
                return
            msg = reader.poll(0.5)
            if msg is None:
                continue
            if msg.topic() == settings.topic_meta:
                meta = pb.FrameMeta.FromString(msg.value() or b"")
                ledger.add_meta(meta)
                if not meta.end_of_stream and meta.camera_id in (ledger.cameras or ()):
                    versions[meta.model_version] = versions.get(meta.model_version, 0) + 1
            else:
                ledger.add_drop(pb.DropRecord.FromString(msg.value() or b""))
    finally:
        reader.close()


def start_alerting(s: StackSettings, logs: Path, env: dict[str, str], groups: list[RunGroup]) -> ServiceProcess:
    """`imask alerting` on the run's alerts topic, posting to the stack's Alertmanager; lag sampled for the run's
    worker and recorder groups."""
    lag_groups = {g.group: g.topic for g in groups}
    return spawn("alerting", ["alerting"], logs, {**env, "IMASK_ALERTING_ALERTMANAGER_URL": s.alertmanager_url,
                                                  "IMASK_ALERTING_LAG_GROUPS": json.dumps(lag_groups)})


def settle_alerting(alerting: ServiceProcess, timeout: float = 5.0) -> None:
    """Give the alerting service a moment to read and post the last events (the ingest's, as it stopped)."""
    deadline, last = time.monotonic() + timeout, -1.0
    while time.monotonic() < deadline and alerting.proc.poll() is None:
        try:
            read = alerting.metric("imask_alerting_events_total")
            waiting = alerting.metric("imask_alerting_pending_events")
        except OSError:
            return
        if read == last and waiting == 0:
            return
        last = read
        time.sleep(1.0)


def raised_alerts(s: StackSettings, since: float) -> list[dict[str, object]]:
    """The alerts raised since `since` and where each was delivered (raises Unavailable without Alertmanager)."""
    return report(AlertmanagerClient(s.alertmanager_url, timeout_s=3.0).alerts(), read_inbox(s.alert_inbox_dir, since),
                  since)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="imask run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", action="append", metavar="CAMERA_ID=PATH",
                        help="a source (repeatable); default: the sample clips in ../shared/data/video, or a "
                        "synthetic clip of a face when they are absent")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2: one per core)")
    parser.add_argument("--variant", default=None,
                        help="run this built-in variant, not the registry's champion (without it: the champion, "
                        "or when the registry has none, realtime registered as the champion; realtime detects on "
                        "every 3rd frame of a camera and moves tracks in between, `default` on every frame)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "out" / "run", help="output folder")
    parser.add_argument("--pace", choices=["source", "max"], default="source",
                        help="publish at each clip's fps (default) or as fast as possible")
    parser.add_argument("--fps", type=float, default=0.0,
                        help="frames per second published per camera (default 0: each clip's own)")
    parser.add_argument("--cap-width", type=int, default=0,
                        help="downscale wider frames to this width at the ingest (default 0: as they are)")
    parser.add_argument("--timeout", type=float, default=900.0, help="give up after this many seconds")
    parser.add_argument("--live", type=float, metavar="SECONDS", default=0.0,
                        help="serve the clips as live RTSP cameras and ingest them for SECONDS (real-time policy)")
    parser.add_argument("--live-fps", type=float, default=8.0,
                        help="with --live: frames per second taken from each camera (default 8: four cameras "
                        "within what two CPU workers mask)")
    args = parser.parse_args(argv)
    explicit_variant, args.variant = args.variant is not None, args.variant or "realtime"
    configure_logging("run", "info", json_format=False)

    run_started = time.time()
    stack.up()
    stack_settings = StackSettings()
    settings = load_settings(KafkaSettings)
    ensure_topics(settings)
    if args.source:
        sources = dict(s.split("=", 1) for s in args.source)
    else:
        sources = {k: str(v) for k, v in default_sources().items()} or {
            "astronaut": str(synthetic_clip(args.out / "synthetic_astronaut.mp4", frames=150))}
    start = end_offsets(settings, [settings.topic_meta, settings.topic_dlq])
    ledger = StreamLedger(set(sources))
    recordings = args.out / "recordings"
    env = {**os.environ, "IMASK_BOOTSTRAP_SERVERS": settings.bootstrap_servers, "IMASK_LOG_LEVEL": "info"}
    model: RunModel = choose(os.environ.get("IMASK_REGISTRY_URI") or stack_settings.mlflow_uri, args.variant,
                             explicit_variant)
    log.info("model: %s", model.line)
    run_id = f"run{os.getpid()}"
    regular = run_groups.regular_groups()
    # Before any of the run's producers start: the run's groups begin at the topics' ends.
    groups = {"raw": run_groups.start(settings, settings.topic_raw, regular["worker"], run_id),
              "masked": run_groups.start(settings, settings.topic_masked, regular["recorder"], run_id)}
    env = {**env, "IMASK_RECORDER_GROUP_ID": groups["masked"].group}
    ingest_env = {**env, **console.ingest_admin_env(stack_settings, env)}
    worker_env = {**{k: v for k, v in env.items() if k not in ("IMASK_MODEL", "IMASK_VARIANT")}, **model.env,
                  "IMASK_WORKER_GROUP_ID": groups["raw"].group}
    versions: dict[str, int] = {}
    logs = args.out / "logs"
    services: list[ServiceProcess] = []  # in drain order: ingest first, recorder last
    interrupted = False
    rtsp: RtspServer | None = None
    fail_closed = unmasked = 0.0
    alerting: ServiceProcess | None = None
    targets: dict[str, str] = {}  # Prometheus file-SD target name -> the service's name
    run_features = RunFeatures(stack_settings, logs, env)
    features: dict[str, object] = {"error": "the run ended before they were read"}

    def watched(svc: ServiceProcess) -> ServiceProcess:
        name = f"{run_id}-{svc.name}"  # unique among concurrent runs sharing the stack's Prometheus
        register_target(stack_settings, name, svc.ops_port, service_label(svc.name))
        targets[name] = svc.name
        return svc

    signal.signal(signal.SIGTERM, _raise_interrupt)  # a supervisor's SIGTERM drains like Ctrl-C
    try:
        if stack_settings.alerting:
            alerting = watched(start_alerting(stack_settings, logs, env, list(groups.values())))
        for svc in run_features.start():  # the features stream and FeatureService, unless already running
            watched(svc)
        workers = [watched(spawn(f"worker-{i}", ["worker", "--instance-id", f"worker-{i}"], logs, worker_env))
                   for i in range(args.workers)]
        recorder = watched(spawn("recorder", ["recorder", "--output-dir", str(recordings)], logs, env))
        services = [*workers, recorder]
        for svc in [*services, *([alerting] if alerting else [])]:
            svc.wait_ready(120)  # model loaded and warm: frames published now do not wait on start-up
        if args.live:
            rtsp = RtspServer(sources, width=1280, log_path=logs / "rtsp-server.log").start()
            ingest_args = ["ingest", "--drop-policy", "realtime", "--fps", str(args.live_fps)]
            ingest_args += [a for camera in sources for a in ("--source", f"{camera}={rtsp.url(camera)}")]
        else:
            ingest_args = ["ingest", "--pace", args.pace, "--drop-policy", "complete", "--fps", str(args.fps),
                           "--cap-width", str(args.cap_width)]
            ingest_args += [a for camera, path in sources.items() for a in ("--source", f"{camera}={path}")]
        ingest = watched(spawn("ingest", ingest_args, logs, ingest_env))
        services.insert(0, ingest)
        if args.live:
            # Live cameras never end by themselves: after --live seconds ingest is asked to stop, and each
            # camera publishes what it decoded and ends its stream.
            threading.Timer(args.live, ingest.proc.terminate).start()
        log.info("pipeline started: %s workers, cameras %s; logs in %s", args.workers, sorted(sources), logs)
        if stack_settings.console:
            log.info("console: %s (token in %s)", console.url(stack_settings), stack_settings.console_token_file)
        follow(settings, start, ledger, [*workers, recorder], args.timeout, logs, versions)
        # Give the recorder a moment to close files on the end-of-stream markers it is reading.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not all((recordings / f"{c}.mp4").exists() for c in sources):
            time.sleep(0.2)
        features = run_features.read(sorted(sources), int(time.time()) // 10 * 10_000)
        fail_closed = sum(w.metric("imask_frames_fail_closed_total") for w in workers if w.proc.poll() is None)
        unmasked = sum(w.metric("imask_frames_unmasked_total") for w in workers if w.proc.poll() is None)
    except KeyboardInterrupt:
        interrupted = True
        log.warning("interrupted: draining all processes")
    finally:
        health = target_health(stack_settings) if targets else {}
        codes = stop_all(services)
        if rtsp is not None:
            rtsp.kill()
        alerts: list[dict[str, object]] | None = None
        alerts_error = ""
        if alerting is not None:
            settle_alerting(alerting)  # the last events (ingest's, as it stopped) posted before the report
            try:
                alerts = raised_alerts(stack_settings, run_started)
            except (Unavailable, ValueError, KeyError) as exc:
                alerts_error = f"Alertmanager at {stack_settings.alertmanager_url}: {exc}"
            codes.update(stop_all([alerting]))
        codes.update(run_features.stop())
        for group in groups.values():
            run_groups.finish(settings, group)
        for name in targets:
            unregister_target(stack_settings, name)
    summary = {"model": {**model.summary, "line": model.line, "seen_in_frames_meta": versions},
               "backlog": {g.topic: g.as_dict() for g in groups.values()}, **ledger.summary()}
    summary["exit_codes"] = codes
    summary["prometheus_targets"] = {svc: health.get(name, "not scraped") for name, svc in targets.items()}
    summary["alerts"] = alerts
    if alerts_error:
        summary["alerts_error"] = alerts_error
    summary["metrics"] = {"imask_frames_fail_closed_total": fail_closed, "imask_frames_unmasked_total": unmasked}
    # This run's cameras only: the folder may also hold earlier runs' files, or ones the recorder wrote for
    # frames another run left behind in the topic.
    summary["features"] = features
    summary["console"] = console.summary(stack_settings)
    summary["recordings"] = sorted(str(p) for p in recordings.glob("*.mp4") if not p.name.endswith(".partial.mp4")
                                   and recording_of(p.stem, set(sources))
                                   and p.stat().st_mtime >= run_started)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print_summary(summary)
    print(f"  summary json     {args.out / 'summary.json'}")
    print("\n".join(features_table(summary["features"])))
    ok = ledger.complete() and not interrupted and summary["unaccounted"] == 0
    return 0 if ok else 1
