"""Start, stop and inspect the local development stack: Kafka (one broker, or N) and one Redis.

Why this exists: the services and the ``kafka``/``redis`` tests need a *real* broker, and
Docker is not available everywhere the project runs.  So the stack is plain processes:

* Kafka 4.x in KRaft combined mode (``broker,controller``), run from the Maven Central jars
  listed in ``deploy/local/kafka/pom.xml`` (fetched once with ``mvn``).  One node by default;
  ``IMASK_STACK_KAFKA_BROKERS=N`` starts N combined nodes forming one static controller quorum,
  node ``i`` (0-based) on ports ``kafka_port + 2i`` (clients) and ``kafka_controller_port + 2i``
  (controller), each with its own data, logs, properties and pid file.  With N >= 3 the
  brokers default to ``min.insync.replicas=2`` and internal topics get replication factor 3,
  so one broker can die without losing an acknowledged (``acks=all``) record or stopping
  producers.  A single broker can be killed and restarted (:func:`kill_broker`,
  :func:`start_broker`) for fault tests.
* Redis from the system ``redis-server`` binary, in-memory only (no RDB/AOF).

Everything lives in one state folder (default ``<repo>/.stack``, git-ignored by a
``.gitignore`` written inside it): jars, Kafka data, logs and pid files.  Kafka data is kept
across ``down``/``up`` so a warm start skips the download and the storage format.  A single
broker keeps its files directly under ``kafka/``; an N-broker cluster lives in
``kafka/cluster-N/node-<id>/`` (its own cluster id), so switching N never mixes quorums.

Usage::

    python -m imask.devstack.stack up        # idempotent; waits until both answer
    python -m imask.devstack.stack status    # JSON on stdout (each broker listed)
    python -m imask.devstack.stack down [--wipe]
    IMASK_STACK_KAFKA_BROKERS=3 python -m imask.devstack.stack up
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
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
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

Component = Literal["kafka", "redis", "mlflow"]

_Port = Annotated[int, Field(ge=1, le=65535)]

_STOP_TIMEOUT_S = 30.0
_STRAGGLER_GRACE_S = 10.0
_REDIS_START_TIMEOUT_S = 15.0
_MLFLOW_START_TIMEOUT_S = 90.0
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
    With ``kafka_brokers`` = N, node ``i`` (0-based) listens on ``kafka_port + 2i`` and
    ``kafka_controller_port + 2i``: the defaults give 9092/9093, 9094/9095, 9096/9097.
    """

    model_config = SettingsConfigDict(env_prefix="IMASK_STACK_", extra="forbid")

    state_dir: Path = Field(
        default_factory=lambda: REPO_ROOT / ".stack",
        description="Folder holding jars, Kafka data, logs and pid files.",
    )
    kafka_port: _Port = 9092
    kafka_controller_port: _Port = 9093
    kafka_brokers: Annotated[int, Field(ge=1, le=9)] = 1
    kafka_libs: Path | None = Field(
        None, description="Folder of the Kafka jars (default <state_dir>/kafka/libs): another stack's, to share one "
        "download"
    )
    redis_port: _Port = 6390
    mlflow_port: _Port = 5590
    mlflow: bool = Field(True, description="Also run the MLflow tracking server (model registry); throwaway "
                         "stacks for broker faults leave it out")
    kafka_version: Annotated[str, Field(pattern=r"^\d+\.\d+\.\d+$")] = "4.1.1"
    kafka_heap: Annotated[str, Field(pattern=r"^\d+[kKmMgG]$")] = "512m"
    start_timeout_s: Annotated[float, Field(gt=0)] = 90.0

    @model_validator(mode="after")
    def _distinct_ports(self) -> StackSettings:
        """Kafka cannot share a port between its listeners; catch that before a JVM start."""
        ports = [*self.broker_ports, *self.controller_ports, self.redis_port, *self.mlflow_ports]
        if len(set(ports)) != len(ports):
            raise ValueError(
                f"kafka_port, kafka_controller_port and redis_port must differ (with {self.kafka_brokers} brokers "
                f"node i uses kafka_port + 2i and kafka_controller_port + 2i), got {ports}"
            )
        if max(ports) > 65535:
            raise ValueError(f"ports beyond 65535: {ports}")
        return self

    @classmethod
    def on_free_ports(cls, state_dir: Path, brokers: int = 1, **fields: object) -> StackSettings:
        """Settings of a throwaway stack (tests, fault scenarios) in ``state_dir`` on ports nobody uses now: never
        the shared default stack's."""
        for _ in range(200):
            base = secrets.randbelow(20000) + 30000
            fields.setdefault("mlflow", False)
            candidate = cls(state_dir=state_dir, kafka_brokers=brokers, kafka_port=base,
                            kafka_controller_port=base + 1, redis_port=base + 2 * brokers,
                            mlflow_port=base + 2 * brokers + 1, **fields)  # type: ignore[arg-type]
            if all(_port_bindable(port) for port in (*candidate.broker_ports, *candidate.controller_ports,
                                                     candidate.redis_port, *candidate.mlflow_ports)):
                return candidate
        raise StackError("no free block of ports found for a throwaway stack")

    @property
    def mlflow_ports(self) -> list[int]:
        return [self.mlflow_port] if self.mlflow else []

    @property
    def mlflow_uri(self) -> str:
        """MLflow tracking (and registry) URI of this stack's server."""
        return f"http://127.0.0.1:{self.mlflow_port}"

    @property
    def mlflow_dir(self) -> Path:
        return self.state_dir / "mlflow"

    @property
    def broker_ports(self) -> list[int]:
        return [self.kafka_port + 2 * i for i in range(self.kafka_brokers)]

    @property
    def controller_ports(self) -> list[int]:
        return [self.kafka_controller_port + 2 * i for i in range(self.kafka_brokers)]

    @property
    def bootstrap_servers(self) -> str:
        """Kafka ``bootstrap.servers`` value for clients of this stack (every broker, so any one may be down)."""
        return ",".join(f"127.0.0.1:{port}" for port in self.broker_ports)

    @property
    def redis_url(self) -> str:
        """Redis URL (database 0) for clients of this stack."""
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def replication_factor(self) -> int:
        """Replication factor of topics on this cluster: 3 (or N when fewer)."""
        return min(3, self.kafka_brokers)

    @property
    def min_insync_replicas(self) -> int:
        """Brokers' default ``min.insync.replicas``: 2 from three brokers on (one may die), else 1."""
        return 2 if self.kafka_brokers >= 3 else 1

    @property
    def kafka_dir(self) -> Path:
        return self.state_dir / "kafka"

    @property
    def cluster_dir(self) -> Path:
        """Cluster id and nodes: ``kafka/`` itself for one broker (the historical layout), else ``kafka/cluster-N``."""
        return self.kafka_dir if self.kafka_brokers == 1 else self.kafka_dir / f"cluster-{self.kafka_brokers}"

    @property
    def kafka_libs_dir(self) -> Path:
        return self.kafka_libs if self.kafka_libs is not None else self.kafka_dir / "libs"

    @property
    def brokers(self) -> list[BrokerNode]:
        return [self.broker(i) for i in range(self.kafka_brokers)]

    def broker(self, index: int) -> BrokerNode:
        """Node ``index`` (0-based; its KRaft node id is ``index + 1``)."""
        if not 0 <= index < self.kafka_brokers:
            raise StackError(f"no broker {index}: this stack has {self.kafka_brokers} (0..{self.kafka_brokers - 1})")
        node_dir = self.kafka_dir if self.kafka_brokers == 1 else self.cluster_dir / f"node-{index + 1}"
        return BrokerNode(index, index + 1, self.broker_ports[index], self.controller_ports[index], node_dir)

    @property
    def kafka_data_dir(self) -> Path:
        """Data folder of the first broker (the only one by default)."""
        return self.broker(0).data_dir

    @property
    def kafka_logs_dir(self) -> Path:
        return self.broker(0).logs_dir

    @property
    def redis_dir(self) -> Path:
        return self.state_dir / "redis"

    def pid_file(self, component: Component) -> Path:
        if component == "mlflow":
            return self.mlflow_dir / "mlflow.pid"
        """Pid file of Redis, or of the first Kafka broker."""
        return self.broker(0).pid_file if component == "kafka" else self.redis_dir / "redis.pid"

    def console_log(self, component: Component) -> Path:
        if component == "mlflow":
            return self.mlflow_dir / "mlflow.log"
        """File receiving the process' stdout/stderr (JVM crashes, Redis log)."""
        return self.broker(0).console_log if component == "kafka" else self.redis_dir / "redis.log"

    def port(self, component: Component) -> int:
        return self.kafka_port if component == "kafka" else self.redis_port


@dataclass(frozen=True)
class BrokerNode:
    """One Kafka node (broker and controller) of the stack, with its own files."""

    index: int
    node_id: int
    port: int
    controller_port: int
    dir: Path

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    @property
    def logs_dir(self) -> Path:
        return self.dir / "logs"

    @property
    def properties(self) -> Path:
        return self.dir / "server.properties"

    @property
    def pid_file(self) -> Path:
        return self.dir / "kafka.pid"

    @property
    def console_log(self) -> Path:
        return self.dir / "kafka.out"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass(frozen=True)
class _Daemon:
    """A process of the stack as the bookkeeping sees it: a pid file, a log, a port and a health check."""

    label: str
    kind: Component
    pid_file: Path
    console_log: Path
    port: int
    answering: Callable[[], bool]
    start_timeout_s: float
    extra_logs: tuple[Path, ...] = ()


def _broker_daemon(s: StackSettings, node: BrokerNode) -> _Daemon:
    label = "kafka" if s.kafka_brokers == 1 else f"kafka node {node.node_id}"
    return _Daemon(label, "kafka", node.pid_file, node.console_log, node.port,
                   lambda: _broker_answering(node), s.start_timeout_s, (node.logs_dir / "server.log",))


def _redis_daemon(s: StackSettings) -> _Daemon:
    return _Daemon("redis", "redis", s.pid_file("redis"), s.console_log("redis"), s.redis_port,
                   lambda: _redis_answering(s), _REDIS_START_TIMEOUT_S)


def _mlflow_daemon(s: StackSettings) -> _Daemon:
    return _Daemon("mlflow", "mlflow", s.pid_file("mlflow"), s.console_log("mlflow"), s.mlflow_port,
                   lambda: _mlflow_answering(s), _MLFLOW_START_TIMEOUT_S)


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------


def up(settings: StackSettings | None = None) -> None:
    """Start Kafka (every broker) and Redis unless they already run and answer; return once all answer.

    Idempotent so scripts and ``make`` targets can call it unconditionally.
    """
    s = settings or StackSettings()
    _prepare_state_dir(s)
    with _locked(s):
        missing_brokers = [node for node in s.brokers if not _adopt_running(_broker_daemon(s, node))]
        redis_running = _adopt_running(_redis_daemon(s))
        mlflow_running = not s.mlflow or _adopt_running(_mlflow_daemon(s))
        if not missing_brokers and redis_running and mlflow_running:
            logger.info("stack already up (kafka %s, redis %s)", s.bootstrap_servers, s.redis_url)
            return

        started: list[tuple[_Daemon, subprocess.Popen[bytes]]] = []
        # Kafka first: it is the slow one, Redis starts while the JVMs boot.
        if missing_brokers:
            for node in missing_brokers:
                _check_port_free(node.port, f"kafka node {node.node_id}", "IMASK_STACK_KAFKA_PORT")
                _check_port_free(node.controller_port, f"kafka node {node.node_id} controller",
                                 "IMASK_STACK_KAFKA_CONTROLLER_PORT")
            _ensure_kafka_libs(s)
            procs = _start_nodes(s, missing_brokers)
            started += [(_broker_daemon(s, node), proc) for node, proc in zip(missing_brokers, procs, strict=True)]
        if not redis_running:
            _check_port_free(s.redis_port, "redis", "IMASK_STACK_REDIS_PORT")
            redis_cmd = _redis_command(s)
            s.redis_dir.mkdir(parents=True, exist_ok=True)
            started.append((_redis_daemon(s), _spawn(_redis_daemon(s), redis_cmd, cwd=s.redis_dir)))
        if not mlflow_running:
            _check_port_free(s.mlflow_port, "mlflow", "IMASK_STACK_MLFLOW_PORT")
            s.mlflow_dir.mkdir(parents=True, exist_ok=True)
            # No job runner: it starts a pool of huey worker processes (~250 MB each) for server-side jobs the
            # registry does not use, and their start competes with the pipeline for the cores.
            started.append((_mlflow_daemon(s), _spawn(_mlflow_daemon(s), _mlflow_command(s), cwd=s.mlflow_dir,
                                                      env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})))

        # Redis before Kafka: it answers in milliseconds, so a Redis failure is reported fast.
        for daemon, proc in sorted(started, key=lambda item: item[0].kind != "redis"):
            t0 = time.monotonic()
            _wait_answering(daemon, proc, daemon.start_timeout_s)
            logger.info("%s answering on 127.0.0.1:%d (pid %d) after %.1f s", daemon.label, daemon.port, proc.pid,
                        time.monotonic() - t0)
    logger.info("stack up: bootstrap_servers=%s redis_url=%s mlflow=%s", s.bootstrap_servers, s.redis_url,
                s.mlflow_uri if s.mlflow else "off")


def down(settings: StackSettings | None = None, wipe: bool = False) -> None:
    """Stop Kafka and Redis (SIGTERM, then SIGKILL after 30 s); idempotent.

    Every broker with a pid file under the state folder is stopped, whatever ``kafka_brokers``
    says now.  Kafka data is kept by default so the next ``up`` skips formatting.  ``wipe=True``
    also deletes Kafka data, cluster ids, logs and the Redis folder (downloaded jars are kept).
    """
    s = settings or StackSettings()
    if not s.state_dir.exists():
        logger.info("stack down (no state folder %s)", s.state_dir)
        return
    with _locked(s):
        # Kafka first: clients of Redis do not matter to it, and it takes longest to stop.  All brokers at once:
        # stopped one by one, the last ones wait on a controller quorum that is already gone.
        _stop_all(_all_broker_daemons(s))
        _stop_all([_redis_daemon(s), _mlflow_daemon(s)])
        if wipe:
            for node in s.brokers:
                shutil.rmtree(node.data_dir, ignore_errors=True)
                shutil.rmtree(node.logs_dir, ignore_errors=True)
                for path in (node.properties, node.console_log):
                    path.unlink(missing_ok=True)
            for cluster in s.kafka_dir.glob("cluster-*"):
                shutil.rmtree(cluster, ignore_errors=True)
            shutil.rmtree(s.redis_dir, ignore_errors=True)
            shutil.rmtree(s.mlflow_dir, ignore_errors=True)
            (s.kafka_dir / "cluster-id").unlink(missing_ok=True)
            logger.info("wiped Kafka data and Redis folder under %s", s.state_dir)
    logger.info("stack down")


def status(settings: StackSettings | None = None) -> dict[str, dict[str, object]]:
    """Report, per component, whether its process runs and whether its port answers.

    ``running`` comes from the pid file, ``answering`` from a real protocol request (Kafka
    metadata listing the broker as live, Redis PING), so a hung process shows up as running but
    not answering.  ``kafka`` sums up every broker (running / answering: all of them; pid and
    port: the first one's) and lists each under ``brokers``.
    """
    s = settings or StackSettings()
    brokers: list[dict[str, object]] = []
    for node in s.brokers:
        daemon = _broker_daemon(s, node)
        brokers.append({"node_id": node.node_id, "running": _live_pid(daemon) is not None, "pid": _live_pid(daemon),
                        "port": node.port, "controller_port": node.controller_port,
                        "answering": _answering(daemon), "data_dir": str(node.data_dir)})
    redis = _redis_daemon(s)
    redis_pid = _live_pid(redis)
    return {
        "kafka": {
            "running": all(b["running"] for b in brokers),
            "pid": brokers[0]["pid"],
            "port": s.kafka_port,
            "answering": all(b["answering"] for b in brokers),
            "endpoint": s.bootstrap_servers,
            "brokers": brokers,
        },
        "redis": {"running": redis_pid is not None, "pid": redis_pid, "port": s.redis_port,
                  "answering": _answering(redis), "endpoint": s.redis_url},
        **({"mlflow": {"running": _live_pid(_mlflow_daemon(s)) is not None, "pid": _live_pid(_mlflow_daemon(s)),
                       "port": s.mlflow_port, "answering": _answering(_mlflow_daemon(s)), "endpoint": s.mlflow_uri}}
           if s.mlflow else {}),
    }


def kill_broker(settings: StackSettings, index: int, sig: signal.Signals = signal.SIGKILL) -> int:
    """Send ``sig`` (SIGKILL by default: a crash, no controlled shutdown) to broker ``index`` and wait until it is
    gone; returns its pid.  For fault tests; :func:`start_broker` brings it back with its data."""
    node = settings.broker(index)
    daemon = _broker_daemon(settings, node)
    with _locked(settings):
        pid = _live_pid(daemon)
        if pid is None:
            raise StackError(f"{daemon.label} is not running")
        logger.info("sending %s to %s (pid %d)", sig.name, daemon.label, pid)
        os.kill(pid, sig)
        if not _wait_gone(pid, daemon, _STOP_TIMEOUT_S):
            raise StackError(f"{daemon.label} (pid {pid}) still runs after {sig.name}")
        _CHILDREN.pop(pid, None)
        node.pid_file.unlink(missing_ok=True)
    return pid


def start_broker(settings: StackSettings, index: int, wait: bool = True) -> int:
    """Start broker ``index`` again (after :func:`kill_broker`) with its data; with ``wait`` return once the
    cluster lists it as a live broker.  Returns its pid; a broker already running is left alone."""
    node = settings.broker(index)
    daemon = _broker_daemon(settings, node)
    with _locked(settings):
        pid = _live_pid(daemon)
        if pid is not None:
            return pid
        _check_port_free(node.port, daemon.label, "IMASK_STACK_KAFKA_PORT")
        [proc] = _start_nodes(settings, [node])
        if wait:
            _wait_answering(daemon, proc, daemon.start_timeout_s)
        return proc.pid


def _all_broker_daemons(s: StackSettings) -> list[_Daemon]:
    """This stack's brokers, plus any other node with a pid file in the state folder (started with another N)."""
    daemons = [_broker_daemon(s, node) for node in s.brokers]
    known = {d.pid_file for d in daemons}
    for pid_file in sorted(s.kafka_dir.glob("**/kafka.pid")):
        if pid_file not in known:
            daemons.append(_Daemon(f"kafka ({pid_file.parent})", "kafka", pid_file, pid_file.parent / "kafka.out",
                                   0, lambda: False, s.start_timeout_s))
    return daemons


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
    for node in s.brokers:
        node.dir.mkdir(parents=True, exist_ok=True)


@contextlib.contextmanager
def _locked(s: StackSettings) -> Iterator[None]:
    """Serialise ``up``/``down`` on one state folder (e.g. two test sessions starting at once)."""
    s.state_dir.mkdir(parents=True, exist_ok=True)
    with open(s.state_dir / ".lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read_pid(d: _Daemon) -> int | None:
    try:
        return int(d.pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _pid_alive(pid: int, d: _Daemon) -> bool:
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
    marker = {"kafka": "kafka.Kafka", "redis": "redis-server", "mlflow": "mlflow server"}[d.kind]
    return marker in cmdline


def _live_pid(d: _Daemon) -> int | None:
    pid = _read_pid(d)
    if pid is not None and _pid_alive(pid, d):
        return pid
    return None


def _adopt_running(d: _Daemon) -> bool:
    """Return True if the process already runs and answers; clean a stale pid file.

    A live process that does not answer yet (another ``up`` still booting it) gets the normal
    start timeout before it is declared hung.
    """
    pid = _read_pid(d)
    if pid is None:
        return False
    if not _pid_alive(pid, d):
        logger.info("removing stale %s pid file (pid %d is not a running %s)", d.label, pid, d.kind)
        d.pid_file.unlink(missing_ok=True)
        return False
    if _answering(d):
        logger.info("%s already running (pid %d) and answering", d.label, pid)
        return True
    logger.info("%s running (pid %d) but not answering yet; waiting", d.label, pid)
    deadline = time.monotonic() + d.start_timeout_s
    while time.monotonic() < deadline:
        if not _pid_alive(pid, d):
            d.pid_file.unlink(missing_ok=True)
            logger.info("%s (pid %d) exited while waiting; starting a new one", d.label, pid)
            return False
        if _answering(d):
            return True
        time.sleep(_POLL_INTERVAL_S)
    raise StackError(
        f"{d.label} process {pid} is running but has not answered on port {d.port} "
        f"for {d.start_timeout_s:.0f} s; run `python -m imask.devstack.stack down` and retry.\n" + _log_tail(d)
    )


def _spawn(d: _Daemon, cmd: Sequence[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``cmd`` detached (own session, output to a log file) and record its pid.

    ``start_new_session`` keeps the process alive after the CLI exits and out of the
    terminal's Ctrl-C.
    """
    logger.info("starting %s: %s", d.label, " ".join(cmd))
    d.console_log.parent.mkdir(parents=True, exist_ok=True)
    with open(d.console_log, "ab") as log:
        log.write(f"\n{_START_MARKER} {d.label} at {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            list(cmd),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            env={**os.environ, **(env or {})},
        )
    _CHILDREN[proc.pid] = proc
    d.pid_file.write_text(f"{proc.pid}\n")
    return proc


def _wait_answering(d: _Daemon, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Poll until the process answers; fail fast if it exits, kill it if it never answers."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            d.pid_file.unlink(missing_ok=True)
            _CHILDREN.pop(proc.pid, None)
            raise StackError(f"{d.label} exited with code {proc.returncode} during startup.\n" + _log_tail(d))
        if _answering(d):
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(_POLL_INTERVAL_S)
    tail = _log_tail(d)
    _stop_all([d])
    raise StackError(
        f"{d.label} (pid {proc.pid}) did not answer on 127.0.0.1:{d.port} within {timeout:.0f} s; it was "
        "stopped.\n" + tail
    )


def _stop_all(daemons: Sequence[_Daemon]) -> None:
    """SIGTERM to all (Kafka's controlled shutdown), wait up to 30 s, then SIGKILL; drop the pid files."""
    running: list[tuple[_Daemon, int]] = []
    for d in daemons:
        pid = _read_pid(d)
        if pid is None:
            continue
        if not _pid_alive(pid, d):
            logger.info("%s not running (stale pid %d)", d.label, pid)
            d.pid_file.unlink(missing_ok=True)
            continue
        logger.info("stopping %s (pid %d)", d.label, pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        running.append((d, pid))
    t0 = time.monotonic()
    deadline = t0 + _STOP_TIMEOUT_S
    for d, pid in running:
        if not _wait_gone(pid, d, max(0.1, deadline - time.monotonic())):
            logger.warning("%s (pid %d) did not stop on SIGTERM within %.0f s; sending SIGKILL", d.label, pid,
                           time.monotonic() - t0)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, d, 10.0)
        # The last nodes of a cluster can wait forever on a controller quorum that the first ones took away: once
        # one has stopped, the others get a shorter grace.
        deadline = min(deadline, time.monotonic() + _STRAGGLER_GRACE_S)
        _CHILDREN.pop(pid, None)
        d.pid_file.unlink(missing_ok=True)
        logger.info("%s stopped after %.1f s", d.label, time.monotonic() - t0)


def _wait_gone(pid: int, d: _Daemon, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid, d):
            return True
        time.sleep(0.1)
    return not _pid_alive(pid, d)


def _log_tail(d: _Daemon, lines: int = _LOG_TAIL_LINES) -> str:
    """Last lines of the process' logs, so startup errors are actionable without digging."""
    parts: list[str] = []
    for path in (d.console_log, *d.extra_logs):
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
    return "\n".join(parts) if parts else f"(no {d.label} log found at {d.console_log})"


def _port_open(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def _port_bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


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


def _answering(d: _Daemon) -> bool:
    if not d.port or not _port_open(d.port):
        return False  # fast path: no 1 s client timeout when nothing listens
    return d.answering()


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


def _mlflow_answering(s: StackSettings) -> bool:
    try:
        with urllib.request.urlopen(f"{s.mlflow_uri}/health", timeout=1) as reply:  # nosec B310: http to loopback
            return bool(reply.status == 200)
    except (OSError, ValueError):
        return False


def _mlflow_command(s: StackSettings) -> list[str]:
    """The MLflow tracking server with the model registry: SQLite backend, artifacts served by the server
    itself (clients upload and download through it, so workers need no shared filesystem)."""
    mlflow = Path(sys.executable).parent / "mlflow"
    if not mlflow.exists():
        raise StackError(f"{mlflow} not found: `make venv` installs mlflow (a dev dependency)")
    return [str(mlflow), "server", "--backend-store-uri", f"sqlite:///{s.mlflow_dir / 'mlflow.db'}",
            "--artifacts-destination", str(s.mlflow_dir / "artifacts"), "--serve-artifacts",
            "--host", "127.0.0.1", "--port", str(s.mlflow_port), "--workers", "1"]


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
        output = (result.stdout + result.stderr).strip().splitlines()[-_LOG_TAIL_LINES:]
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
    lines = ["# Generated by imask.devstack.stack on every `up`; edit StackSettings / stack.py instead."]
    lines += [f"{key}={value}" for key, value in _server_properties(s, node).items()]
    node.data_dir.mkdir(parents=True, exist_ok=True)
    node.logs_dir.mkdir(parents=True, exist_ok=True)
    node.properties.write_text("\n".join(lines) + "\n")


def _start_nodes(s: StackSettings, nodes: Sequence[BrokerNode]) -> list[subprocess.Popen[bytes]]:
    for node in nodes:
        _write_server_properties(s, node)
    _format_kafka_storage(s, nodes)
    return [_spawn(_broker_daemon(s, node), _kafka_command(s, node), cwd=node.dir) for node in nodes]


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
            _java(),
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
        _java(),
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
            "Run the local development stack as plain processes: Kafka (KRaft; one node, or "
            "IMASK_STACK_KAFKA_BROKERS=N nodes in one quorum, node i on KAFKA_PORT+2i and CONTROLLER_PORT+2i, "
            "replication factor 3 and min.insync.replicas 2 from N=3) and Redis. Jars, data, logs and pid "
            "files live in the state folder (default <repo>/.stack). Configure with IMASK_STACK_STATE_DIR, "
            "IMASK_STACK_KAFKA_PORT (9092), IMASK_STACK_KAFKA_CONTROLLER_PORT (9093), IMASK_STACK_KAFKA_BROKERS (1), "
            "IMASK_STACK_REDIS_PORT (6390), IMASK_STACK_KAFKA_VERSION (4.1.1), IMASK_STACK_KAFKA_HEAP (512m), "
            "IMASK_STACK_KAFKA_LIBS (jar folder to share), IMASK_STACK_START_TIMEOUT_S (90)."
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


def create_topics(settings: StackSettings) -> None:
    """The frame topics with the partition counts and retention from IMASK_* config (idempotent); replicated 3
    times on a cluster of three or more unless IMASK_REPLICATION_FACTOR says otherwise."""
    from imask.ops.settings import KafkaSettings, load_settings
    from imask.streaming.kafka import ensure_topics, frame_topics

    rf = None if "IMASK_REPLICATION_FACTOR" in os.environ else settings.replication_factor
    kafka = load_settings(KafkaSettings, bootstrap_servers=settings.bootstrap_servers, replication_factor=rf)
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
