"""Load testing and SRE commands: `imask record | replay | lag | scale | load run | load compare`.

  imask record --seconds 10 --out cams.imrec          dump frames.raw (with original timestamps) to a file
  imask replay SOURCE... --cameras 4 --speed 1        publish clips or recordings as N cameras
  imask load run SOURCE... --cameras 4 --out DIR      replay + collect: report.json, report.png, summary.txt
  imask load compare A/report.json B/report.json      two reports side by side with ratios
  imask lag [--group imask-workers]                   lag per partition, in messages and seconds
  imask scale N [--group imask-workers]               start/stop local worker processes (graceful drain)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from imask.devstack.settings import REPO_ROOT
from imask.loadtest.recordfile import RecordingWriter
from imask.loadtest.replay import Replayer, ReplayPlan, Source, load_source
from imask.ops.logs import configure_logging
from imask.ops.settings import KafkaSettings, load_settings
from imask.streaming.kafka import TopicReader, end_offsets, ensure_topics
from imask.v1 import frames_pb2 as pb

WORKERS_DIR = REPO_ROOT / ".stack" / "workers"


def _size(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    width, _, height = text.lower().partition("x")
    return int(width), int(height)


def _replay_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="video files or .imrec recordings")
    p.add_argument("--cameras", type=int, default=1, help="cameras to replay as (sources are reused round robin)")
    p.add_argument("--prefix", default="replay", help="camera id prefix (camera ids: PREFIX0, PREFIX1, ...)")
    p.add_argument("--speed", type=float, default=1.0, help="1: original pace, 2: twice as fast, 0: max")
    p.add_argument("--duration", type=float, default=0.0, help="seconds to run, looping sources (0: one pass)")
    p.add_argument("--jitter-ms", type=float, default=0.0, help="random lateness added to each frame")
    p.add_argument("--burst-every-s", type=float, default=0.0, help="every so many seconds ...")
    p.add_argument("--burst-frames", type=int, default=0, help="... send this many frames per camera at once")
    p.add_argument("--size", metavar="WxH", help="resize video sources (e.g. 1280x720)")
    p.add_argument("--max-frames", type=int, default=0, help="frames taken from each video source (0: all)")
    p.add_argument("--fps", type=float, default=0.0, help="override the source frame rate (e.g. 15)")
    p.add_argument("--scenario", type=Path, help="JSON file with any of these options (flags override)")


def _plan(args: argparse.Namespace) -> ReplayPlan:
    return ReplayPlan(cameras=args.cameras, camera_prefix=args.prefix, speed=args.speed, duration_s=args.duration,
                      jitter_ms=args.jitter_ms, burst_every_s=args.burst_every_s, burst_frames=args.burst_frames)


def _sources(args: argparse.Namespace) -> list[Source]:
    sources = [load_source(Path(s), args.max_frames, _size(args.size)) for s in args.sources]
    return [s.at_fps(args.fps) for s in sources] if args.fps else sources


def _apply_scenario(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    args = parser.parse_args(argv)
    if getattr(args, "scenario", None):
        parser.set_defaults(**json.loads(args.scenario.read_text()))
        args = parser.parse_args(argv)
    return args


def cmd_record(args: argparse.Namespace, settings: KafkaSettings) -> int:
    topic = args.topic or settings.topic_raw
    ends = end_offsets(settings, [topic])
    start = {tp: 0 for tp in ends} if args.from_beginning else ends
    reader = TopicReader(settings, start)
    deadline = time.monotonic() + args.seconds
    with RecordingWriter(Path(args.out)) as writer:
        while time.monotonic() < deadline and (not args.max_messages or writer.count < args.max_messages):
            msg = reader.poll(0.2)
            if msg is None:
                continue
            _, ts_ms = msg.timestamp()
            writer.write(pb.RecordedMessage(timestamp_us=ts_ms * 1000, key=msg.key() or b"", value=msg.value() or b"",
                                            topic=msg.topic() or "", partition=msg.partition() or 0,
                                            offset=msg.offset() or 0))
        count = writer.count
    reader.close()
    print(json.dumps({"recorded": count, "file": args.out, "topic": topic}))
    return 0


def cmd_replay(args: argparse.Namespace, settings: KafkaSettings) -> int:
    ensure_topics(settings)
    result = Replayer(settings, _sources(args), _plan(args)).run()
    print(json.dumps({"frames": result.frames, "seconds": round((result.ended_us - result.started_us) / 1e6, 2)}))
    return 0


def cmd_load_run(args: argparse.Namespace, settings: KafkaSettings) -> int:
    from imask.loadtest.report import Collector, build_report, summary_text, write_report

    ensure_topics(settings)
    sources = _sources(args)
    plan = _plan(args)
    replayer = Replayer(settings, sources, plan)
    cameras = replayer.camera_ids()
    start = end_offsets(settings, [settings.topic_meta, settings.topic_dlq, settings.topic_masked])
    originals = {cam: sources[i % len(sources)] for i, cam in enumerate(cameras)}
    collector = Collector(settings, set(cameras), start, args.group, originals, args.leak_every)
    outcome: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: outcome.update(replay=replayer.run()), daemon=True)
    thread.start()
    collection = collector.run(args.timeout)
    thread.join(timeout=5)
    replay = outcome.get("replay")
    extra = {"scenario": {**vars(plan), "sources": [s.name for s in sources], "fps": [s.fps for s in sources]},
             "replay_frames": replay.frames if replay else None}
    report = build_report(collection, extra)
    paths = write_report(report, Path(args.out))
    print(summary_text(report), end="")
    print("written: " + ", ".join(str(p) for p in paths))
    return 0 if report["complete"] and report["unaccounted"] == 0 else 1


def cmd_compare(args: argparse.Namespace) -> int:
    from imask.loadtest.report import compare

    a, b = (json.loads(Path(p).read_text()) for p in (args.a, args.b))
    print(compare(a, b), end="")
    return 0


def cmd_lag(args: argparse.Namespace, settings: KafkaSettings) -> int:
    from imask.streaming.lag import group_lag

    parts = group_lag(settings, args.group, args.topic)
    if args.json:
        print(json.dumps([p.as_dict() for p in parts]))
        return 0
    print(f"group {args.group} on {args.topic or settings.topic_raw}")
    print(f"{'partition':>9}{'committed':>11}{'end':>9}{'lag':>7}{'oldest waiting s':>18}")
    for p in parts:
        committed = str(p.committed) if p.committed >= 0 else "none"
        print(f"{p.partition:>9}{committed:>11}{p.end:>9}{p.lag:>7}{p.oldest_age_s:>18}")
    print(f"{'total':>9}{'':>11}{'':>9}{sum(p.lag for p in parts):>7}"
          f"{max((p.oldest_age_s for p in parts), default=0.0):>18}")
    return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "State:\tZ" in status.read_text())


def local_workers(group: str) -> list[tuple[Path, int]]:
    folder = WORKERS_DIR / group
    found = []
    for pid_file in sorted(folder.glob("*.pid")) if folder.is_dir() else []:
        pid = int(pid_file.read_text())
        if _alive(pid):
            found.append((pid_file, pid))
        else:
            pid_file.unlink()
            _unregister(pid_file.stem)
    return found


def _unregister(name: str) -> None:
    from imask.devstack.prometheus import unregister_target
    from imask.devstack.settings import StackSettings

    unregister_target(StackSettings(), name)


def cmd_scale(args: argparse.Namespace, settings: KafkaSettings) -> int:
    from imask.devstack.procs import spawn
    from imask.devstack.prometheus import register_target
    from imask.devstack.settings import StackSettings

    folder = WORKERS_DIR / args.group
    folder.mkdir(parents=True, exist_ok=True)
    workers = local_workers(args.group)
    started = []
    while len(workers) < args.count:
        name = f"worker-{uuid.uuid4().hex[:6]}"
        env = {**os.environ, "IMASK_BOOTSTRAP_SERVERS": settings.bootstrap_servers}
        svc = spawn(name, ["worker", "--group-id", args.group, "--instance-id", name], folder, env)
        (folder / f"{name}.pid").write_text(str(svc.proc.pid))
        register_target(StackSettings(), name, svc.ops_port, "worker")  # the stack's Prometheus scrapes it
        workers.append((folder / f"{name}.pid", svc.proc.pid))
        started.append(svc)
    for svc in started:  # scale-up returns when the new workers are in the group and ready
        svc.wait_ready(120)
        print(json.dumps({"started": svc.name, "pid": svc.proc.pid, "ops": svc.ops_url}))
    while len(workers) > args.count:
        pid_file, pid = workers.pop()  # newest first: the longest-running keep their partitions
        os.kill(pid, signal.SIGTERM)  # the worker drains: finishes, flushes, commits, leaves the group
        deadline = time.monotonic() + args.drain_timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
        pid_file.unlink(missing_ok=True)
        _unregister(pid_file.stem)
        print(json.dumps({"stopped": pid_file.stem, "pid": pid}))
    print(json.dumps({"group": args.group, "workers": len(local_workers(args.group))}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imask load", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("record", help="dump frames.raw (or --topic) to a recording file")
    p.add_argument("--out", required=True, help="recording file (.imrec)")
    p.add_argument("--seconds", type=float, default=10.0, help="how long to record")
    p.add_argument("--max-messages", type=int, default=0, help="stop after this many messages")
    p.add_argument("--topic", help="topic to record (default: IMASK_TOPIC_RAW)")
    p.add_argument("--from-beginning", action="store_true", help="start at the oldest retained message")
    p = sub.add_parser("replay", help="publish clips or recordings as N cameras")
    _replay_args(p)
    p = sub.add_parser("run", help="replay and collect: JSON report, plots and a text summary")
    _replay_args(p)
    p.add_argument("--group", default="imask-workers", help="the workers' consumer group (for lag)")
    p.add_argument("--out", default=str(REPO_ROOT / "out" / "load" / "run"), help="report folder")
    p.add_argument("--leak-every", type=int, default=10, help="leak-check every Nth frame of each camera (0: off)")
    p.add_argument("--timeout", type=float, default=600.0, help="give up collecting after this long")
    p = sub.add_parser("compare", help="two reports side by side with ratios")
    p.add_argument("a")
    p.add_argument("b")
    p = sub.add_parser("lag", help="consumer lag per partition, in messages and seconds")
    p.add_argument("--group", default="imask-workers")
    p.add_argument("--topic", help="default: IMASK_TOPIC_RAW")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("scale", help="run COUNT local worker processes in the group (drains the ones stopped)")
    p.add_argument("count", type=int)
    p.add_argument("--group", default="imask-workers")
    p.add_argument("--drain-timeout", type=float, default=60.0, help="seconds before a draining worker is killed")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _apply_scenario(parser, argv) if argv and argv[0] in {"replay", "run"} else parser.parse_args(argv)
    configure_logging("load", "warning", json_format=False)
    if args.command == "compare":
        return cmd_compare(args)
    settings = load_settings(KafkaSettings)
    commands = {"record": cmd_record, "replay": cmd_replay, "run": cmd_load_run, "lag": cmd_lag,
                "scale": cmd_scale}
    return commands[args.command](args, settings)


if __name__ == "__main__":
    sys.exit(main())
