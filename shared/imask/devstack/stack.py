"""Start, stop and inspect the local development stack: Kafka (one broker, or N), Redis, MLflow, Prometheus,
Alertmanager (with an inbox for its notifications) and the operators' console.

Why this exists: the services and the ``kafka``/``redis``/``mlflow`` tests need *real* servers, and
Docker is not available everywhere the project runs.  So the stack is plain processes:

* Kafka 4.x in KRaft combined mode (``broker,controller``), run from the Maven Central jars
  listed in ``deploy/local/kafka/pom.xml`` (fetched once with ``mvn``).  One node by default;
  ``IMASK_STACK_KAFKA_BROKERS=N`` starts N combined nodes forming one static controller quorum,
  node ``i`` (0-based) on ports ``kafka_port + 2i`` (clients) and ``kafka_controller_port + 2i``
  (controller), each with its own data, logs, properties and pid file.  With N >= 3 the
  brokers default to ``min.insync.replicas=2`` and internal topics get replication factor 3,
  so one broker can die without losing an acknowledged (``acks=all``) record or stopping
  producers.  A single broker can be killed and restarted (:func:`kill_broker`,
  :func:`start_broker`) for fault tests.  See :mod:`imask.devstack.kafka`.
* Redis from the system ``redis-server`` binary, in-memory only (no RDB/AOF): :mod:`imask.devstack.redis`.
* The MLflow tracking server (model registry): :mod:`imask.devstack.mlflow`.

Each server is one module describing it (:class:`~imask.devstack.server.Server`); :data:`SERVERS` lists them in
start order and :mod:`imask.devstack.supervisor` runs their processes.  Everything lives in one state folder
(default ``<repo>/.stack``, git-ignored by a ``.gitignore`` written inside it): jars, Kafka data, logs and pid
files.  Kafka data is kept across ``down``/``up`` so a warm start skips the download and the storage format.

Usage::

    python -m imask.devstack.stack up        # idempotent; waits until all answer
    python -m imask.devstack.stack status    # JSON on stdout (each broker listed)
    python -m imask.devstack.stack down [--wipe]
    IMASK_STACK_KAFKA_BROKERS=3 python -m imask.devstack.stack up
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from collections.abc import Sequence

from pydantic import ValidationError

from imask.devstack import alertmanager, console, kafka, mlflow, prometheus, redis, supervisor
from imask.devstack.kafka import kill_broker, start_broker
from imask.devstack.kafka_admin import create_topics, set_client_quota
from imask.devstack.redis import REDIS_SERVER
from imask.devstack.server import Server
from imask.devstack.settings import StackSettings
from imask.devstack.supervisor import StackError

__all__ = ["REDIS_SERVER", "SERVERS", "StackError", "StackSettings", "create_topics", "down", "kill_broker", "main",
           "set_client_quota", "start_broker", "status", "up"]

logger = logging.getLogger(__name__)

SERVERS: tuple[Server, ...] = (
    # Kafka first: it is the slow one, the others start while its JVMs boot; and `down` stops it first.
    kafka.SERVER,
    redis.SERVER,
    mlflow.SERVER,
    alertmanager.INBOX,
    alertmanager.SERVER,
    prometheus.SERVER,
    console.SERVER,  # started after the others, once the frame topics exist (up); stopped first (down)
)


def up(settings: StackSettings | None = None, servers: Sequence[Server] = SERVERS) -> None:
    """Start every server (or only ``servers``) unless it already runs and answers; return once all answer.

    Servers that read the frame topics (the console) start once the others answer and the topics exist.
    Idempotent so scripts and ``make`` targets can call it unconditionally.
    """
    s = settings or StackSettings()
    _prepare_state_dir(s)
    enabled = [server for server in servers if server.enabled(s)]
    later = [server for server in enabled if _needs_topics(server)]
    _start(s, [server for server in enabled if server not in later])
    if later:
        create_topics(s)
        _start(s, later)
    logger.info("stack up: %s", _endpoints(s, enabled))


def _needs_topics(server: Server) -> bool:
    return bool(getattr(server, "needs_topics", False))


def _start(s: StackSettings, servers: Sequence[Server]) -> None:
    with supervisor.locked(s.state_dir):
        missing = [(server, [d for d in server.daemons(s) if not supervisor.adopt_running(d)]) for server in servers]
        if not any(daemons for _, daemons in missing):
            return
        started: list[tuple[supervisor.Daemon, subprocess.Popen[bytes]]] = []
        for server, daemons in missing:
            if daemons:
                started += zip(daemons, server.start(s, daemons), strict=True)
        # The quickest to start first (Redis answers in milliseconds): its failure is reported fast.
        for daemon, proc in sorted(started, key=lambda item: item[0].start_timeout_s):
            t0 = time.monotonic()
            supervisor.wait_answering(daemon, proc, daemon.start_timeout_s)
            logger.info("%s answering on 127.0.0.1:%d (pid %d) after %.1f s", daemon.label, daemon.port, proc.pid,
                        time.monotonic() - t0)


def down(settings: StackSettings | None = None, wipe: bool = False, servers: Sequence[Server] = SERVERS) -> None:
    """Stop every server, or only ``servers`` (SIGTERM, then SIGKILL after 30 s); idempotent.

    Every broker with a pid file under the state folder is stopped, whatever ``kafka_brokers``
    says now.  Kafka data is kept by default so the next ``up`` skips formatting.  ``wipe=True``
    also deletes Kafka data, cluster ids, logs and the Redis and MLflow folders (downloaded jars are kept).
    """
    s = settings or StackSettings()
    if not s.state_dir.exists():
        logger.info("stack down (no state folder %s)", s.state_dir)
        return
    with supervisor.locked(s.state_dir):
        # One server at a time, all of its processes at once: brokers stopped one by one would wait on a
        # controller quorum that is already gone. Kafka's readers (the console) go first, so they drain against a
        # live broker.
        for server in sorted(servers, key=lambda server: not _needs_topics(server)):
            supervisor.stop_all(server.leftovers(s))
        if wipe:
            for server in servers:
                server.wipe(s)
            logger.info("wiped the data of %s under %s", ", ".join(server.name for server in servers), s.state_dir)
    logger.info("stack down")


def status(settings: StackSettings | None = None) -> dict[str, dict[str, object]]:
    """Report, per server, whether its process runs and whether its port answers.

    ``running`` comes from the pid file, ``answering`` from a real protocol request (Kafka
    metadata listing the broker as live, Redis PING, MLflow /health), so a hung process shows up as running but
    not answering.  ``kafka`` sums up every broker (running / answering: all of them; pid and
    port: the first one's) and lists each under ``brokers``.
    """
    s = settings or StackSettings()
    return {server.name: server.status(s) for server in SERVERS if server.enabled(s)}


def _endpoints(s: StackSettings, servers: Sequence[Server]) -> str:
    return ", ".join(f"{server.name} {server.endpoint(s)}" for server in servers)


def _prepare_state_dir(s: StackSettings) -> None:
    """Create the state folder; its own ``.gitignore`` keeps it out of git without editing the repo's."""
    s.state_dir.mkdir(parents=True, exist_ok=True)
    gitignore = s.state_dir / ".gitignore"
    if not gitignore.exists():
        gitignore.write_text("# local stack state (imask.devstack.stack); never commit\n*\n")


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """Argument parser for ``python -m imask.devstack.stack`` (later ``imask stack``)."""
    parser = argparse.ArgumentParser(
        prog="imask stack",
        description=(
            "Run the local development stack as plain processes: Kafka (KRaft; one node, or "
            "IMASK_STACK_KAFKA_BROKERS=N nodes in one quorum, node i on KAFKA_PORT+2i and CONTROLLER_PORT+2i, "
            "replication factor 3 and min.insync.replicas 2 from N=3), Redis, MLflow, Prometheus, Alertmanager with an "
            "inbox for its notifications, and the operators' console. Jars, data, logs and pid "
            "files live in the state folder (default <repo>/.stack). Configure with IMASK_STACK_STATE_DIR, "
            "IMASK_STACK_KAFKA_PORT (9092), IMASK_STACK_KAFKA_CONTROLLER_PORT (9093), IMASK_STACK_KAFKA_BROKERS (1), "
            "IMASK_STACK_REDIS_PORT (6390), IMASK_STACK_KAFKA_VERSION (4.1.1), IMASK_STACK_KAFKA_HEAP (512m), "
            "IMASK_STACK_KAFKA_LIBS (jar folder to share), IMASK_STACK_START_TIMEOUT_S (90), IMASK_STACK_MLFLOW_PORT "
            "(5590), IMASK_STACK_PROMETHEUS_PORT (9490), IMASK_STACK_ALERTMANAGER_PORT (9493), "
            "IMASK_STACK_ALERT_INBOX_PORT (9495), IMASK_STACK_ALERT_SMTP_PORT (9525), IMASK_STACK_CONSOLE_PORT "
            "(8470: the operators' console, token in <state>/console/token), IMASK_STACK_RUN_INGEST_ADMIN_PORT "
            "(9401: the admin port of `imask run`'s ingest, which the console reads)."
        ),
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{up,down,status}")
    sub.add_parser(
        "up",
        help="start Kafka and Redis (no-op if already up); waits until all answer",
        description="Start Kafka (every broker) and Redis if needed and wait until all answer. The first run "
        "downloads the Kafka jars with Maven and formats the storage.",
    )
    down_parser = sub.add_parser(
        "down",
        help="stop Kafka and Redis (keeps Kafka data unless --wipe)",
        description="Stop every broker and Redis: SIGTERM, then SIGKILL after 30 s.",
    )
    down_parser.add_argument(
        "--wipe",
        action="store_true",
        help="also delete Kafka data/logs/cluster id and the Redis folder (downloaded jars are kept)",
    )
    sub.add_parser(
        "status",
        help="print JSON: per component running, pid, port, answering (and each broker)",
        description="Print the state of each component as JSON on stdout.",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the process exit code (1 on a stack error)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        settings = StackSettings()
    except ValidationError as exc:
        logger.error("invalid IMASK_STACK_* settings: %s", exc)
        return 2
    try:
        if args.command == "up":
            up(settings)
            create_topics(settings)
            from imask.devstack import feast

            feast.apply_repo(settings)
        elif args.command == "down":
            down(settings, wipe=args.wipe)
        else:
            print(json.dumps(status(settings), indent=2))
    except StackError as exc:
        logger.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
