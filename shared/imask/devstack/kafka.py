"""Kafka of the local stack: 4.x in KRaft combined mode (``broker,controller``), one node or N in one quorum.

The broker runs from the Maven Central jars listed in ``deploy/local/kafka/pom.xml`` (fetched once with ``mvn``).
Node ``i`` (0-based) of N listens on ``kafka_port + 2i`` (clients) and ``kafka_controller_port + 2i``
(controller), each with its own data, logs, properties and pid file.  A single broker keeps its files directly
under ``kafka/``; an N-broker cluster lives in ``kafka/cluster-N/node-<id>/`` (its own cluster id), so switching N
never mixes quorums.
"""

from __future__ import annotations

import base64
import logging
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from imask.devstack import supervisor
from imask.devstack.settings import REPO_ROOT, BrokerNode, StackSettings
from imask.devstack.supervisor import Daemon, StackError

logger = logging.getLogger(__name__)

KAFKA_DEPLOY_DIR = REPO_ROOT / "deploy" / "local" / "kafka"
KAFKA_POM = KAFKA_DEPLOY_DIR / "pom.xml"
KAFKA_LOG4J2 = KAFKA_DEPLOY_DIR / "log4j2.properties"

_MESSAGE_MAX_BYTES = 8 * 1024 * 1024
_MARKER = "kafka.Kafka"


class Kafka:
    """Every broker of the stack (:class:`~imask.devstack.server.Server`)."""

    name = "kafka"

    def enabled(self, s: StackSettings) -> bool:
        return True

    def daemons(self, s: StackSettings) -> list[Daemon]:
        return [broker_daemon(s, node) for node in s.brokers]

    def leftovers(self, s: StackSettings) -> list[Daemon]:
        """This stack's brokers, plus any other node with a pid file in the state folder (started with another N)."""
        daemons = self.daemons(s)
        known = {d.pid_file for d in daemons}
        for pid_file in sorted(s.kafka_dir.glob("**/kafka.pid")):
            if pid_file not in known:
                daemons.append(Daemon(f"kafka ({pid_file.parent})", _MARKER, pid_file, pid_file.parent / "kafka.out",
                                      0, lambda: False, s.start_timeout_s))
        return daemons

    def start(self, s: StackSettings, missing: Sequence[Daemon]) -> list[subprocess.Popen[bytes]]:
        nodes = [node for node in s.brokers if node.pid_file in {d.pid_file for d in missing}]
        for node in nodes:
            node.dir.mkdir(parents=True, exist_ok=True)
            supervisor.check_port_free(node.port, f"kafka node {node.node_id}", "IMASK_STACK_KAFKA_PORT")
            supervisor.check_port_free(node.controller_port, f"kafka node {node.node_id} controller",
                                       "IMASK_STACK_KAFKA_CONTROLLER_PORT")
        _ensure_kafka_libs(s)
        return _start_nodes(s, nodes)

    def status(self, s: StackSettings) -> dict[str, object]:
        """Every broker summed up (running / answering: all of them; pid and port: the first one's) and listed."""
        brokers: list[dict[str, object]] = []
        for node in s.brokers:
            daemon = broker_daemon(s, node)
            pid = supervisor.live_pid(daemon)
            brokers.append({"node_id": node.node_id, "running": pid is not None, "pid": pid,
                            "port": node.port, "controller_port": node.controller_port,
                            "answering": supervisor.answering(daemon), "data_dir": str(node.data_dir)})
        return {
            "running": all(b["running"] for b in brokers),
            "pid": brokers[0]["pid"],
            "port": s.kafka_port,
            "answering": all(b["answering"] for b in brokers),
            "endpoint": s.bootstrap_servers,
            "brokers": brokers,
        }

    def endpoint(self, s: StackSettings) -> str:
        return s.bootstrap_servers

    def wipe(self, s: StackSettings) -> None:
        """Data, logs, properties and cluster ids of every node; the jars are kept."""
        for node in s.brokers:
            shutil.rmtree(node.data_dir, ignore_errors=True)
            shutil.rmtree(node.logs_dir, ignore_errors=True)
            for path in (node.properties, node.console_log):
                path.unlink(missing_ok=True)
        for cluster in s.kafka_dir.glob("cluster-*"):
            shutil.rmtree(cluster, ignore_errors=True)
        (s.kafka_dir / "cluster-id").unlink(missing_ok=True)


SERVER = Kafka()


def broker_daemon(s: StackSettings, node: BrokerNode) -> Daemon:
    label = "kafka" if s.kafka_brokers == 1 else f"kafka node {node.node_id}"
    return Daemon(label, _MARKER, node.pid_file, node.console_log, node.port,
                  lambda: _broker_answering(node), s.start_timeout_s, (node.logs_dir / "server.log",))


def kill_broker(settings: StackSettings, index: int, sig: signal.Signals = signal.SIGKILL) -> int:
    """Send ``sig`` (SIGKILL by default: a crash, no controlled shutdown) to broker ``index`` and wait until it is
    gone; returns its pid.  For fault tests; :func:`start_broker` brings it back with its data."""
    daemon = broker_daemon(settings, settings.broker(index))
    with supervisor.locked(settings.state_dir):
        return supervisor.kill(daemon, sig)


def start_broker(settings: StackSettings, index: int, wait: bool = True) -> int:
    """Start broker ``index`` again (after :func:`kill_broker`) with its data; with ``wait`` return once the
    cluster lists it as a live broker.  Returns its pid; a broker already running is left alone."""
    node = settings.broker(index)
    daemon = broker_daemon(settings, node)
    with supervisor.locked(settings.state_dir):
        pid = supervisor.live_pid(daemon)
        if pid is not None:
            return pid
        supervisor.check_port_free(node.port, daemon.label, "IMASK_STACK_KAFKA_PORT")
        [proc] = _start_nodes(settings, [node])
        if wait:
            supervisor.wait_answering(daemon, proc, daemon.start_timeout_s)
        return proc.pid


def java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    found = shutil.which("java")
    if found is None:
        raise StackError("`java` not found on PATH (Kafka 4.x needs Java 17+); install a JDK/JRE 17")
    return found


def _kafka_jar_name(s: StackSettings) -> str:
    return f"kafka_2.13-{s.kafka_version}.jar"


def _ensure_kafka_libs(s: StackSettings) -> None:
    """Fetch the broker jars with Maven unless the libs folder already has this Kafka version.

    Jars are copied into a temporary folder and renamed into place, so an interrupted
    download never looks complete.  A libs folder of another version is replaced.
    """
    libs = s.kafka_libs_dir
    if (libs / _kafka_jar_name(s)).is_file():
        return
    if s.kafka_libs is not None:
        raise StackError(f"IMASK_STACK_KAFKA_LIBS={libs} holds no {_kafka_jar_name(s)}")
    if libs.exists():
        logger.info("replacing %s (it does not hold %s)", libs, _kafka_jar_name(s))
        shutil.rmtree(libs)
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError(
            f"`mvn` not found on PATH; it is needed once to download Kafka {s.kafka_version} jars "
            "(apt-get install -y maven)"
        )
    tmp = s.kafka_dir / "libs.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [
        mvn,
        "-B",
        "-q",
        "-f",
        str(KAFKA_POM),
        f"-Dkafka.version={s.kafka_version}",
        "dependency:copy-dependencies",
        f"-DoutputDirectory={tmp}",
        "-DincludeScope=runtime",
    ]
    logger.info("downloading Kafka %s jars with Maven (first start only)", s.kafka_version)
    t0 = time.monotonic()
    result = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
    if result.returncode != 0 or not (tmp / _kafka_jar_name(s)).is_file():
        shutil.rmtree(tmp, ignore_errors=True)
        output = (result.stdout + result.stderr).strip().splitlines()[-supervisor.LOG_TAIL_LINES:]
        raise StackError(
            f"Maven could not fetch Kafka {s.kafka_version} (exit {result.returncode}): {' '.join(cmd)}\n"
            + "\n".join(output)
        )
    tmp.rename(libs)
    logger.info("Kafka jars ready in %s (%.1f s)", libs, time.monotonic() - t0)


def _server_properties(s: StackSettings, node: BrokerNode | None = None) -> dict[str, str]:
    """Configuration of one node: broker and controller, in a static quorum of every node, tuned for a dev box."""
    node = node or s.broker(0)
    rf = str(s.replication_factor)
    isr = str(s.min_insync_replicas)
    voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in s.brokers)
    return {
        "process.roles": "broker,controller",
        "node.id": str(node.node_id),
        "controller.quorum.voters": voters,
        "listeners": f"PLAINTEXT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{node.port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(node.data_dir),
        # Internal topics replicated like the frame topics: 1 on a single broker (which cannot satisfy the default
        # of 3), 3 from three brokers on.
        "offsets.topic.replication.factor": rf,
        "transaction.state.log.replication.factor": rf,
        "transaction.state.log.min.isr": isr,
        "share.coordinator.state.topic.replication.factor": rf,
        "share.coordinator.state.topic.min.isr": isr,
        # With acks=all a record is acknowledged once this many replicas have it: 2 of 3 survives one broker.
        "min.insync.replicas": isr,
        "default.replication.factor": rf,
        # 50 partitions per internal topic (the default) make the first consumer join slow on 2 cores.
        "offsets.topic.num.partitions": "4",
        "transaction.state.log.num.partitions": "4",
        "share.coordinator.state.topic.num.partitions": "4",
        "group.initial.rebalance.delay.ms": "0",
        # Topics are created explicitly (with the partition count the services expect).
        "auto.create.topics.enable": "false",
        "num.partitions": "4",
        # Frames are up to a few MB; clients must raise their own limits to match.
        "message.max.bytes": str(_MESSAGE_MAX_BYTES),
        "replica.fetch.max.bytes": str(_MESSAGE_MAX_BYTES),
        "num.recovery.threads.per.data.dir": "1",
        "log.retention.hours": "24",
    }


def _write_server_properties(s: StackSettings, node: BrokerNode) -> None:
    """Regenerate ``server.properties`` on every start so port changes take effect."""
    lines = ["# Generated by imask.devstack.stack on every `up`; edit StackSettings / kafka.py instead."]
    lines += [f"{key}={value}" for key, value in _server_properties(s, node).items()]
    node.data_dir.mkdir(parents=True, exist_ok=True)
    node.logs_dir.mkdir(parents=True, exist_ok=True)
    node.properties.write_text("\n".join(lines) + "\n")


def _start_nodes(s: StackSettings, nodes: Sequence[BrokerNode]) -> list[subprocess.Popen[bytes]]:
    for node in nodes:
        _write_server_properties(s, node)
    _format_kafka_storage(s, nodes)
    return [supervisor.spawn(broker_daemon(s, node), _kafka_command(s, node), cwd=node.dir) for node in nodes]


def _new_cluster_id() -> str:
    """Same format as ``kafka-storage random-uuid``: URL-safe base64 of 16 bytes, no padding."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):  # Kafka rejects ids that look like CLI flags
            return cluster_id


def _cluster_id(s: StackSettings) -> str:
    path = s.cluster_dir / "cluster-id"
    if path.is_file():
        cluster_id = path.read_text().strip()
        if cluster_id:
            return cluster_id
    cluster_id = _new_cluster_id()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(cluster_id + "\n")
    return cluster_id


def _kafka_jvm_props(node: BrokerNode) -> list[str]:
    return [
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={KAFKA_LOG4J2}",
        f"-Dkafka.logs.dir={node.logs_dir}",
    ]


def _format_kafka_storage(s: StackSettings, nodes: Sequence[BrokerNode]) -> None:
    """Format the nodes' KRaft log dirs once, all at once (every node with the cluster's id; the static voters set
    needs no other flag); a node already formatted is skipped (no JVM start)."""
    todo = [node for node in nodes if not (node.data_dir / "meta.properties").is_file()]
    runs: list[tuple[list[str], subprocess.Popen[str]]] = []
    for node in todo:
        cmd = [
            java(),
            "-Xmx256m",
            *_kafka_jvm_props(node),
            "-cp",
            str(s.kafka_libs_dir / "*"),
            "kafka.tools.StorageTool",
            "format",
            "-t",
            _cluster_id(s),
            "-c",
            str(node.properties),
            "--ignore-formatted",
        ]
        logger.info("formatting Kafka storage in %s", node.data_dir)
        runs.append((cmd, subprocess.Popen(cmd, cwd=node.dir, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                           stderr=subprocess.STDOUT, text=True)))
    failures = []
    for cmd, proc in runs:
        output, _ = proc.communicate()
        if proc.returncode != 0:
            failures.append(f"kafka storage format failed (exit {proc.returncode}): {' '.join(cmd)}\n"
                            + output.strip())
    if failures:
        raise StackError("\n".join(failures))


def _kafka_command(s: StackSettings, node: BrokerNode) -> list[str]:
    return [
        java(),
        f"-Xmx{s.kafka_heap}",
        f"-Xms{s.kafka_heap}",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        *_kafka_jvm_props(node),
        "-cp",
        str(s.kafka_libs_dir / "*"),
        "kafka.Kafka",
        str(node.properties),
    ]


def _broker_answering(node: BrokerNode) -> bool:
    """A metadata request to this broker that lists it as a live broker.

    An open socket is not enough: a KRaft broker serves metadata while still fenced, and
    topic creation fails until it lists itself as a live broker.
    """
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(
        {
            "bootstrap.servers": node.address,
            "socket.connection.setup.timeout.ms": 1000,
            # librdkafka would print "Connection refused" to stderr while the broker boots.
            "log_level": 0,
        }
    )
    try:
        metadata = admin.list_topics(timeout=1)
    except KafkaException:
        return False
    return node.node_id in metadata.brokers

