"""Start, stop and inspect the local development stack: one Kafka broker and one Redis.

Why this exists: the services and the ``kafka``/``redis`` tests need a *real* broker, and
Docker is not available everywhere the project runs.  So the stack is plain processes:

* Kafka 4.x, single node in KRaft combined mode (``broker,controller``), run from the
  Maven Central jars listed in ``deploy/local/kafka/pom.xml`` (fetched once with ``mvn``).
* Redis from the system ``redis-server`` binary, in-memory only (no RDB/AOF).

Everything lives in one state folder (default ``<repo>/.stack``, git-ignored by a
``.gitignore`` written inside it): jars, Kafka data, logs and pid files.  Kafka data is kept
across ``down``/``up`` so a warm start skips the download and the storage format.

Usage::

    python -m imask.devstack.stack up        # idempotent; waits until both answer
    python -m imask.devstack.stack status    # JSON on stdout
    python -m imask.devstack.stack down [--wipe]
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[3]
"""Repository root (``shared/imask/devstack/stack.py`` -> ``parents[3]``); anchors the default paths."""

KAFKA_DEPLOY_DIR = REPO_ROOT / "deploy" / "local" / "kafka"
KAFKA_POM = KAFKA_DEPLOY_DIR / "pom.xml"
KAFKA_LOG4J2 = KAFKA_DEPLOY_DIR / "log4j2.properties"
REDIS_SERVER = "/usr/bin/redis-server"

Component = Literal["kafka", "redis"]

_Port = Annotated[int, Field(ge=1, le=65535)]

_STOP_TIMEOUT_S = 30.0
_REDIS_START_TIMEOUT_S = 15.0
_POLL_INTERVAL_S = 0.25
_MESSAGE_MAX_BYTES = 8 * 1024 * 1024
_LOG_TAIL_LINES = 40
_START_MARKER = "----- imask.devstack.stack starting"

# Popen handles of children started by this interpreter: kept so a child stopped by down() in
# the same process is reaped instead of lingering as a zombie.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


@atexit.register
def _detach_children() -> None:
    """The servers are daemons meant to outlive this interpreter: silence Popen's leak warning."""
    for pid, proc in _CHILDREN.items():
        if proc.poll() is None:
            warnings.filterwarnings(
                "ignore", message=f"subprocess {pid} is still running", category=ResourceWarning
            )


class StackError(RuntimeError):
    """The local stack could not be started, stopped or prepared; the message says why."""


class StackSettings(BaseSettings):
    """Ports and paths of the local stack, overridable with ``IMASK_STACK_*`` env variables.

    Ports are configurable so the stack can coexist with another Kafka/Redis on the machine.
    """

    model_config = SettingsConfigDict(env_prefix="IMASK_STACK_", extra="forbid")

    state_dir: Path = Field(
        default_factory=lambda: REPO_ROOT / ".stack",
        description="Folder holding jars, Kafka data, logs and pid files.",
    )
    kafka_port: _Port = 9092
    kafka_controller_port: _Port = 9093
    redis_port: _Port = 6390
    kafka_version: Annotated[str, Field(pattern=r"^\d+\.\d+\.\d+$")] = "4.1.1"
    kafka_heap: Annotated[str, Field(pattern=r"^\d+[kKmMgG]$")] = "512m"
    start_timeout_s: Annotated[float, Field(gt=0)] = 90.0

    @model_validator(mode="after")
    def _distinct_ports(self) -> StackSettings:
        """Kafka cannot share a port between its listeners; catch that before a JVM start."""
        ports = [self.kafka_port, self.kafka_controller_port, self.redis_port]
        if len(set(ports)) != len(ports):
            raise ValueError(f"kafka_port, kafka_controller_port and redis_port must differ, got {ports}")
        return self

    @property
    def bootstrap_servers(self) -> str:
        """Kafka ``bootstrap.servers`` value for clients of this stack."""
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def redis_url(self) -> str:
        """Redis URL (database 0) for clients of this stack."""
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def kafka_dir(self) -> Path:
        return self.state_dir / "kafka"

    @property
    def kafka_libs_dir(self) -> Path:
        return self.kafka_dir / "libs"

    @property
    def kafka_data_dir(self) -> Path:
        return self.kafka_dir / "data"

    @property
    def kafka_logs_dir(self) -> Path:
        return self.kafka_dir / "logs"

    @property
    def redis_dir(self) -> Path:
        return self.state_dir / "redis"

    def pid_file(self, component: Component) -> Path:
        return self.state_dir / component / f"{component}.pid"

    def console_log(self, component: Component) -> Path:
        """File receiving the process' stdout/stderr (JVM crashes, Redis log)."""
        name = "kafka.out" if component == "kafka" else "redis.log"
        return self.state_dir / component / name

    def port(self, component: Component) -> int:
        return self.kafka_port if component == "kafka" else self.redis_port


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------


def up(settings: StackSettings | None = None) -> None:
    """Start Kafka and Redis unless they already run and answer; return once both answer.

    Idempotent so scripts and ``make`` targets can call it unconditionally.
    """
    s = settings or StackSettings()
    _prepare_state_dir(s)
    with _locked(s):
        kafka_running = _adopt_running(s, "kafka")
        redis_running = _adopt_running(s, "redis")
        if kafka_running and redis_running:
            logger.info("stack already up (kafka %s, redis %s)", s.bootstrap_servers, s.redis_url)
            return

        started: list[tuple[Component, subprocess.Popen[bytes]]] = []
        # Kafka first: it is the slow one, Redis starts while the JVM boots.
        if not kafka_running:
            _check_port_free(s.kafka_port, "kafka", "IMASK_STACK_KAFKA_PORT")
            _check_port_free(s.kafka_controller_port, "kafka controller", "IMASK_STACK_KAFKA_CONTROLLER_PORT")
            _ensure_kafka_libs(s)
            _write_server_properties(s)
            _format_kafka_storage(s)
            started.append(("kafka", _spawn(s, "kafka", _kafka_command(s), cwd=s.kafka_dir)))
        if not redis_running:
            _check_port_free(s.redis_port, "redis", "IMASK_STACK_REDIS_PORT")
            redis_cmd = _redis_command(s)
            s.redis_dir.mkdir(parents=True, exist_ok=True)
            started.append(("redis", _spawn(s, "redis", redis_cmd, cwd=s.redis_dir)))

        # Redis before Kafka: it answers in milliseconds, so a Redis failure is reported fast.
        for component, proc in sorted(started, key=lambda item: item[0] != "redis"):
            timeout = s.start_timeout_s if component == "kafka" else _REDIS_START_TIMEOUT_S
            t0 = time.monotonic()
            _wait_answering(s, component, proc, timeout)
            logger.info(
                "%s answering on 127.0.0.1:%d (pid %d) after %.1f s",
                component,
                s.port(component),
                proc.pid,
                time.monotonic() - t0,
            )
    logger.info("stack up: bootstrap_servers=%s redis_url=%s", s.bootstrap_servers, s.redis_url)


def down(settings: StackSettings | None = None, wipe: bool = False) -> None:
    """Stop Kafka and Redis (SIGTERM, then SIGKILL after 30 s); idempotent.

    Kafka data is kept by default so the next ``up`` skips formatting.  ``wipe=True`` also
    deletes Kafka data, cluster id, logs and the Redis folder (downloaded jars are kept).
    """
    s = settings or StackSettings()
    if not s.state_dir.exists():
        logger.info("stack down (no state folder %s)", s.state_dir)
        return
    with _locked(s):
        # Kafka first: clients of Redis do not matter to it, and it takes longest to stop.
        for component in ("kafka", "redis"):
            _stop(s, component)
        if wipe:
            for path in (s.kafka_data_dir, s.kafka_logs_dir, s.redis_dir):
                shutil.rmtree(path, ignore_errors=True)
            for path in (
                s.kafka_dir / "cluster-id",
                s.kafka_dir / "server.properties",
                s.console_log("kafka"),
            ):
                path.unlink(missing_ok=True)
            logger.info("wiped Kafka data and Redis folder under %s", s.state_dir)
    logger.info("stack down")


def status(settings: StackSettings | None = None) -> dict[str, dict[str, object]]:
    """Report, per component, whether its process runs and whether its port answers.

    ``running`` comes from the pid file, ``answering`` from a real protocol request (Kafka
    metadata with at least one live broker, Redis PING), so a hung process shows up as
    running but not answering.
    """
    s = settings or StackSettings()
    result: dict[str, dict[str, object]] = {}
    components: tuple[Component, ...] = ("kafka", "redis")
    for component in components:
        pid = _live_pid(s, component)
        result[component] = {
            "running": pid is not None,
            "pid": pid,
            "port": s.port(component),
            "answering": _answering(s, component),
            "endpoint": s.bootstrap_servers if component == "kafka" else s.redis_url,
        }
    return result


# --------------------------------------------------------------------------------------------
# process bookkeeping
# --------------------------------------------------------------------------------------------


def _prepare_state_dir(s: StackSettings) -> None:
    """Create the state folder; its own ``.gitignore`` keeps it out of git without editing the repo's."""
    s.state_dir.mkdir(parents=True, exist_ok=True)
    gitignore = s.state_dir / ".gitignore"
    if not gitignore.exists():
        gitignore.write_text("# local stack state (imask.devstack.stack); never commit\n*\n")
    for component in ("kafka", "redis"):
        (s.state_dir / component).mkdir(exist_ok=True)


@contextlib.contextmanager
def _locked(s: StackSettings) -> Iterator[None]:
    """Serialise ``up``/``down`` on one state folder (e.g. two test sessions starting at once)."""
    with open(s.state_dir / ".lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read_pid(s: StackSettings, component: Component) -> int | None:
    try:
        return int(s.pid_file(component).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _pid_alive(pid: int, component: Component) -> bool:
    """True if ``pid`` is a live (non-zombie) process that really is our Kafka/Redis.

    Checking the command line guards against pid reuse after a reboot or crash.
    """
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        _CHILDREN.pop(pid, None)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # someone else's process: not ours
    proc_dir = Path("/proc") / str(pid)
    if not proc_dir.exists():
        return True  # no procfs (not Linux): trust the pid
    try:
        stat = (proc_dir / "stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
        cmdline = (proc_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    marker = "kafka.Kafka" if component == "kafka" else "redis-server"
    return marker in cmdline


def _live_pid(s: StackSettings, component: Component) -> int | None:
    pid = _read_pid(s, component)
    if pid is not None and _pid_alive(pid, component):
        return pid
    return None


def _adopt_running(s: StackSettings, component: Component) -> bool:
    """Return True if the component already runs and answers; clean a stale pid file.

    A live process that does not answer yet (another ``up`` still booting it) gets the normal
    start timeout before it is declared hung.
    """
    pid = _read_pid(s, component)
    if pid is None:
        return False
    if not _pid_alive(pid, component):
        logger.info("removing stale %s pid file (pid %d is not a running %s)", component, pid, component)
        s.pid_file(component).unlink(missing_ok=True)
        return False
    if _answering(s, component):
        logger.info("%s already running (pid %d) and answering", component, pid)
        return True
    logger.info("%s running (pid %d) but not answering yet; waiting", component, pid)
    timeout = s.start_timeout_s if component == "kafka" else _REDIS_START_TIMEOUT_S
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid, component):
            s.pid_file(component).unlink(missing_ok=True)
            logger.info("%s (pid %d) exited while waiting; starting a new one", component, pid)
            return False
        if _answering(s, component):
            return True
        time.sleep(_POLL_INTERVAL_S)
    raise StackError(
        f"{component} process {pid} is running but has not answered on port {s.port(component)} "
        f"for {timeout:.0f} s; run `python -m imask.devstack.stack down` and retry.\n" + _log_tail(s, component)
    )


def _spawn(s: StackSettings, component: Component, cmd: Sequence[str], cwd: Path) -> subprocess.Popen[bytes]:
    """Start ``cmd`` detached (own session, output to a log file) and record its pid.

    ``start_new_session`` keeps the process alive after the CLI exits and out of the
    terminal's Ctrl-C.
    """
    log_path = s.console_log(component)
    logger.info("starting %s: %s", component, " ".join(cmd))
    with open(log_path, "ab") as log:
        log.write(f"\n{_START_MARKER} {component} at {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            list(cmd),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    _CHILDREN[proc.pid] = proc
    s.pid_file(component).write_text(f"{proc.pid}\n")
    return proc


def _wait_answering(
    s: StackSettings, component: Component, proc: subprocess.Popen[bytes], timeout: float
) -> None:
    """Poll until the component answers; fail fast if it exits, kill it if it never answers."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            s.pid_file(component).unlink(missing_ok=True)
            _CHILDREN.pop(proc.pid, None)
            raise StackError(
                f"{component} exited with code {proc.returncode} during startup.\n" + _log_tail(s, component)
            )
        if _answering(s, component):
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(_POLL_INTERVAL_S)
    tail = _log_tail(s, component)
    _stop(s, component)
    raise StackError(
        f"{component} (pid {proc.pid}) did not answer on 127.0.0.1:{s.port(component)} within "
        f"{timeout:.0f} s; it was stopped.\n" + tail
    )


def _stop(s: StackSettings, component: Component) -> None:
    """SIGTERM, wait up to 30 s (Kafka's controlled shutdown), then SIGKILL; drop the pid file."""
    pid = _read_pid(s, component)
    if pid is None:
        return
    if not _pid_alive(pid, component):
        logger.info("%s not running (stale pid %d)", component, pid)
        s.pid_file(component).unlink(missing_ok=True)
        return
    logger.info("stopping %s (pid %d)", component, pid)
    t0 = time.monotonic()
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if not _wait_gone(pid, component, _STOP_TIMEOUT_S):
        logger.warning(
            "%s (pid %d) ignored SIGTERM for %.0f s; sending SIGKILL", component, pid, _STOP_TIMEOUT_S
        )
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait_gone(pid, component, 10.0)
    _CHILDREN.pop(pid, None)
    s.pid_file(component).unlink(missing_ok=True)
    logger.info("%s stopped after %.1f s", component, time.monotonic() - t0)


def _wait_gone(pid: int, component: Component, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid, component):
            return True
        time.sleep(0.1)
    return not _pid_alive(pid, component)


def _log_tail(s: StackSettings, component: Component, lines: int = _LOG_TAIL_LINES) -> str:
    """Last lines of the component's logs, so startup errors are actionable without digging."""
    paths = [s.console_log(component)]
    if component == "kafka":
        paths.append(s.kafka_logs_dir / "server.log")
    parts: list[str] = []
    for path in paths:
        try:
            content = path.read_text(errors="replace")
        except FileNotFoundError:
            continue
        # The console log is appended to on every start: show only the latest run.
        _, marker, latest = content.rpartition(_START_MARKER)
        if marker:
            latest = latest.partition("\n")[2]
        text = latest.splitlines()[-lines:]
        if text:
            parts.append(f"--- last {len(text)} lines of {path} ---\n" + "\n".join(text))
    return "\n".join(parts) if parts else f"(no {component} log found under {s.state_dir / component})"


def _port_open(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def _check_port_free(port: int, what: str, env_var: str) -> None:
    """Refuse to start on a port someone else holds, instead of a confusing bind error later."""
    if _port_open(port):
        raise StackError(
            f"port {port} for {what} is already in use by a process this stack did not start; "
            f"stop it or choose another port with {env_var}=<port>"
        )


# --------------------------------------------------------------------------------------------
# health checks
# --------------------------------------------------------------------------------------------


def _answering(s: StackSettings, component: Component) -> bool:
    if not _port_open(s.port(component)):
        return False  # fast path: no 1 s client timeout when nothing listens
    return _kafka_answering(s) if component == "kafka" else _redis_answering(s)


def _kafka_answering(s: StackSettings) -> bool:
    """A metadata request that lists a live broker.

    An open socket is not enough: a KRaft broker serves metadata while still fenced, and
    topic creation fails until it lists itself as a live broker.
    """
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(
        {
            "bootstrap.servers": s.bootstrap_servers,
            "socket.connection.setup.timeout.ms": 1000,
            # librdkafka would print "Connection refused" to stderr while the broker boots.
            "log_level": 0,
        }
    )
    try:
        metadata = admin.list_topics(timeout=1)
    except KafkaException:
        return False
    return len(metadata.brokers) > 0


def _redis_answering(s: StackSettings) -> bool:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # No retries: redis-py's default retry policy turns one hung PING into ~14 s.
    client = redis.Redis(
        host="127.0.0.1",
        port=s.redis_port,
        socket_connect_timeout=0.5,
        socket_timeout=1,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


# --------------------------------------------------------------------------------------------
# Kafka
# --------------------------------------------------------------------------------------------


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise StackError("`java` not found on PATH (Kafka 4.x needs Java 17+); install a JDK/JRE 17")
    return java


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
        output = (result.stdout + result.stderr).strip().splitlines()[-_LOG_TAIL_LINES:]
        raise StackError(
            f"Maven could not fetch Kafka {s.kafka_version} (exit {result.returncode}): {' '.join(cmd)}\n"
            + "\n".join(output)
        )
    tmp.rename(libs)
    logger.info("Kafka jars ready in %s (%.1f s)", libs, time.monotonic() - t0)


def _server_properties(s: StackSettings) -> dict[str, str]:
    """Broker configuration: one node that is its own controller, tuned for a dev box."""
    one = "1"
    return {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{s.kafka_controller_port}",
        "listeners": f"PLAINTEXT://127.0.0.1:{s.kafka_port},CONTROLLER://127.0.0.1:{s.kafka_controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{s.kafka_port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(s.kafka_data_dir),
        # A single broker cannot satisfy the default replication factor of 3 for internal topics.
        "offsets.topic.replication.factor": one,
        "transaction.state.log.replication.factor": one,
        "transaction.state.log.min.isr": one,
        "share.coordinator.state.topic.replication.factor": one,
        "share.coordinator.state.topic.min.isr": one,
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


def _write_server_properties(s: StackSettings) -> None:
    """Regenerate ``server.properties`` on every start so port changes take effect."""
    lines = ["# Generated by imask.devstack.stack on every `up`; edit StackSettings / stack.py instead."]
    lines += [f"{key}={value}" for key, value in _server_properties(s).items()]
    s.kafka_data_dir.mkdir(parents=True, exist_ok=True)
    s.kafka_logs_dir.mkdir(parents=True, exist_ok=True)
    (s.kafka_dir / "server.properties").write_text("\n".join(lines) + "\n")


def _new_cluster_id() -> str:
    """Same format as ``kafka-storage random-uuid``: URL-safe base64 of 16 bytes, no padding."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):  # Kafka rejects ids that look like CLI flags
            return cluster_id


def _cluster_id(s: StackSettings) -> str:
    path = s.kafka_dir / "cluster-id"
    if path.is_file():
        cluster_id = path.read_text().strip()
        if cluster_id:
            return cluster_id
    cluster_id = _new_cluster_id()
    path.write_text(cluster_id + "\n")
    return cluster_id


def _kafka_jvm_props(s: StackSettings) -> list[str]:
    return [
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={KAFKA_LOG4J2}",
        f"-Dkafka.logs.dir={s.kafka_logs_dir}",
    ]


def _format_kafka_storage(s: StackSettings) -> None:
    """Format the KRaft log dir once; skipped (no JVM start) when it is already formatted."""
    if (s.kafka_data_dir / "meta.properties").is_file():
        return
    cmd = [
        _java(),
        "-Xmx256m",
        *_kafka_jvm_props(s),
        "-cp",
        str(s.kafka_libs_dir / "*"),
        "kafka.tools.StorageTool",
        "format",
        "-t",
        _cluster_id(s),
        "-c",
        str(s.kafka_dir / "server.properties"),
        "--ignore-formatted",
    ]
    logger.info("formatting Kafka storage in %s", s.kafka_data_dir)
    result = subprocess.run(
        cmd, cwd=s.kafka_dir, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise StackError(
            f"kafka storage format failed (exit {result.returncode}): {' '.join(cmd)}\n"
            + (result.stdout + result.stderr).strip()
        )


def _kafka_command(s: StackSettings) -> list[str]:
    return [
        _java(),
        f"-Xmx{s.kafka_heap}",
        f"-Xms{s.kafka_heap}",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        *_kafka_jvm_props(s),
        "-cp",
        str(s.kafka_libs_dir / "*"),
        "kafka.Kafka",
        str(s.kafka_dir / "server.properties"),
    ]


# --------------------------------------------------------------------------------------------
# Redis
# --------------------------------------------------------------------------------------------


def _redis_server() -> str:
    """Locate ``redis-server``; as root install the Debian package if it is missing."""
    for candidate in (REDIS_SERVER, shutil.which("redis-server")):
        if candidate and Path(candidate).is_file():
            return candidate
    if os.geteuid() != 0:
        raise StackError(
            "redis-server not found; install it (sudo apt-get install -y redis-server) and rerun `up`"
        )
    logger.info("redis-server not found; installing the Debian package")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "redis-server"]):
        result = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if result.returncode != 0:
            raise StackError(f"`{' '.join(cmd)}` failed (exit {result.returncode}):\n{result.stderr[-4000:]}")
    found = shutil.which("redis-server") or REDIS_SERVER
    if not Path(found).is_file():
        raise StackError("apt-get installed redis-server but the binary is still not found")
    return found


def _redis_command(s: StackSettings) -> list[str]:
    """In-memory Redis on loopback: no snapshots or AOF, so ``down`` loses nothing that matters."""
    return [
        _redis_server(),
        "--port",
        str(s.redis_port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--dir",
        str(s.redis_dir),
    ]


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """Argument parser for ``python -m imask.devstack.stack`` (later ``imask stack``)."""
    parser = argparse.ArgumentParser(
        prog="imask stack",
        description=(
            "Run the local development stack as plain processes: a single-node Kafka "
            "(KRaft) and Redis. Jars, data, logs and pid files live in the state folder "
            "(default <repo>/.stack). Configure with IMASK_STACK_STATE_DIR, IMASK_STACK_KAFKA_PORT (9092), "
            "IMASK_STACK_KAFKA_CONTROLLER_PORT (9093), IMASK_STACK_REDIS_PORT (6390), "
            "IMASK_STACK_KAFKA_VERSION (4.1.1), IMASK_STACK_KAFKA_HEAP (512m), "
            "IMASK_STACK_START_TIMEOUT_S (90)."
        ),
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{up,down,status}")
    sub.add_parser(
        "up",
        help="start Kafka and Redis (no-op if already up); waits until both answer",
        description="Start Kafka and Redis if needed and wait until both answer. The first run "
        "downloads the Kafka jars with Maven and formats the storage.",
    )
    down_parser = sub.add_parser(
        "down",
        help="stop Kafka and Redis (keeps Kafka data unless --wipe)",
        description="Stop both processes: SIGTERM, then SIGKILL after 30 s.",
    )
    down_parser.add_argument(
        "--wipe",
        action="store_true",
        help="also delete Kafka data/logs/cluster id and the Redis folder (downloaded jars are kept)",
    )
    sub.add_parser(
        "status",
        help="print JSON: per component running, pid, port, answering",
        description="Print the state of each component as JSON on stdout.",
    )
    return parser


def create_topics(settings: StackSettings) -> None:
    """The frame topics with the partition counts and retention from IMASK_* config (idempotent)."""
    from imask.ops.settings import KafkaSettings, load_settings
    from imask.streaming.kafka import ensure_topics, frame_topics

    kafka = load_settings(KafkaSettings, bootstrap_servers=settings.bootstrap_servers)
    ensure_topics(kafka)
    logger.info("topics ready: %s", ", ".join(f"{t.name} ({t.partitions} partitions)" for t in frame_topics(kafka)))


def set_client_quota(client_id: str, producer_byte_rate: int | None, settings: StackSettings | None = None) -> None:
    """Throttle (or, with None, stop throttling) a Kafka client's produce rate: a real slow downstream for tests
    and load experiments. Client quotas have no librdkafka admin API, so Kafka's own ConfigCommand runs."""
    s = settings or StackSettings()
    change = (["--add-config", f"producer_byte_rate={producer_byte_rate}"] if producer_byte_rate
              else ["--delete-config", "producer_byte_rate"])
    cmd = [_java(), "-cp", str(s.kafka_libs_dir / "*"), "kafka.admin.ConfigCommand", "--bootstrap-server",
           s.bootstrap_servers, "--alter", *change, "--entity-type", "clients", "--entity-name", client_id]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise StackError(f"setting the quota of {client_id} failed: {done.stderr.strip()[-500:]}")


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
