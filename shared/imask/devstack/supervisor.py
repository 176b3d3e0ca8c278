"""Run server processes as daemons: pid files, locks, start, wait until answering, stop, log tails.

Generic: a server is described by a :class:`Daemon` (its pid file, log, port and health check); what it runs and
how it is prepared is the business of its own module (``kafka``, ``redis``, ``mlflow``).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import logging
import os
import signal
import socket
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

STOP_TIMEOUT_S = 30.0
_STRAGGLER_GRACE_S = 10.0
_POLL_INTERVAL_S = 0.25
LOG_TAIL_LINES = 40
# Written into the console log at every start (the log is appended to), so a tail shows the latest run only.
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


@dataclass(frozen=True)
class Daemon:
    """A server process as the bookkeeping sees it: a pid file, a log, a port and a health check."""

    label: str
    marker: str
    """Part of its command line: a pid file's pid is only ours if the process runs this (pid reuse)."""
    pid_file: Path
    console_log: Path
    port: int
    answering: Callable[[], bool]
    start_timeout_s: float
    extra_logs: tuple[Path, ...] = ()


@contextlib.contextmanager
def locked(state_dir: Path) -> Iterator[None]:
    """Serialise ``up``/``down`` on one state folder (e.g. two test sessions starting at once)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / ".lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read_pid(d: Daemon) -> int | None:
    try:
        return int(d.pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _pid_alive(pid: int, d: Daemon) -> bool:
    """True if ``pid`` is a live (non-zombie) process that really is this daemon.

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
    return d.marker in cmdline


def live_pid(d: Daemon) -> int | None:
    pid = _read_pid(d)
    if pid is not None and _pid_alive(pid, d):
        return pid
    return None


def adopt_running(d: Daemon) -> bool:
    """Return True if the process already runs and answers; clean a stale pid file.

    A live process that does not answer yet (another ``up`` still booting it) gets the normal
    start timeout before it is declared hung.
    """
    pid = _read_pid(d)
    if pid is None:
        return False
    if not _pid_alive(pid, d):
        logger.info("removing stale %s pid file (pid %d is not a running %s)", d.label, pid, d.marker)
        d.pid_file.unlink(missing_ok=True)
        return False
    if answering(d):
        logger.info("%s already running (pid %d) and answering", d.label, pid)
        return True
    logger.info("%s running (pid %d) but not answering yet; waiting", d.label, pid)
    deadline = time.monotonic() + d.start_timeout_s
    while time.monotonic() < deadline:
        if not _pid_alive(pid, d):
            d.pid_file.unlink(missing_ok=True)
            logger.info("%s (pid %d) exited while waiting; starting a new one", d.label, pid)
            return False
        if answering(d):
            return True
        time.sleep(_POLL_INTERVAL_S)
    raise StackError(
        f"{d.label} process {pid} is running but has not answered on port {d.port} "
        f"for {d.start_timeout_s:.0f} s; run `python -m imask.devstack.stack down` and retry.\n" + log_tail(d)
    )


def spawn(d: Daemon, cmd: Sequence[str], cwd: Path, env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
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


def wait_answering(d: Daemon, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Poll until the process answers; fail fast if it exits, kill it if it never answers."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            d.pid_file.unlink(missing_ok=True)
            _CHILDREN.pop(proc.pid, None)
            raise StackError(f"{d.label} exited with code {proc.returncode} during startup.\n" + log_tail(d))
        if answering(d):
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(_POLL_INTERVAL_S)
    tail = log_tail(d)
    stop_all([d])
    raise StackError(
        f"{d.label} (pid {proc.pid}) did not answer on 127.0.0.1:{d.port} within {timeout:.0f} s; it was "
        "stopped.\n" + tail
    )


def stop_all(daemons: Sequence[Daemon]) -> None:
    """SIGTERM to all (Kafka's controlled shutdown), wait up to 30 s, then SIGKILL; drop the pid files."""
    running: list[tuple[Daemon, int]] = []
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
    deadline = t0 + STOP_TIMEOUT_S
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


def kill(d: Daemon, sig: signal.Signals) -> int:
    """Send ``sig`` to the running daemon and wait until it is gone (a crash, for fault tests); returns its pid."""
    pid = live_pid(d)
    if pid is None:
        raise StackError(f"{d.label} is not running")
    logger.info("sending %s to %s (pid %d)", sig.name, d.label, pid)
    os.kill(pid, sig)
    if not _wait_gone(pid, d, STOP_TIMEOUT_S):
        raise StackError(f"{d.label} (pid {pid}) still runs after {sig.name}")
    _CHILDREN.pop(pid, None)
    d.pid_file.unlink(missing_ok=True)
    return pid


def _wait_gone(pid: int, d: Daemon, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid, d):
            return True
        time.sleep(0.1)
    return not _pid_alive(pid, d)


def log_tail(d: Daemon, lines: int = LOG_TAIL_LINES) -> str:
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


def answering(d: Daemon) -> bool:
    if not d.port or not port_open(d.port):
        return False  # fast path: no 1 s client timeout when nothing listens
    return d.answering()


def port_open(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def port_bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def check_port_free(port: int, what: str, env_var: str) -> None:
    """Refuse to start on a port someone else holds, instead of a confusing bind error later."""
    if port_open(port):
        raise StackError(
            f"port {port} for {what} is already in use by a process this stack did not start; "
            f"stop it or choose another port with {env_var}=<port>"
        )
