"""Starting and stopping service processes locally (make run, tests, later `imask scale`)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from imask.devstack.settings import REPO_ROOT


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServiceProcess:
    name: str
    proc: subprocess.Popen[bytes]
    ops_port: int
    log_path: Path

    @property
    def ops_url(self) -> str:
        return f"http://127.0.0.1:{self.ops_port}"

    def get(self, path: str, timeout: float = 2.0) -> tuple[int, str]:
        try:
            # Always http://127.0.0.1 (bandit's B310 is about file:// and custom schemes).
            with urllib.request.urlopen(self.ops_url + path, timeout=timeout) as resp:  # nosec B310
                return int(resp.status), resp.read().decode()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode()

    def ready(self) -> bool:
        try:
            return self.get("/readyz")[0] == 200
        except OSError:
            return False

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}")
            if self.ready():
                return
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready after {timeout} s; see {self.log_path}")

    def metric(self, name: str, labels: str = "") -> float:
        """Sum of a metric's samples whose label text contains `labels` (from /metrics)."""
        _, body = self.get("/metrics")
        total = 0.0
        for line in body.splitlines():
            if line.startswith(name) and (line[len(name)] in " {") and labels in line:
                total += float(line.rsplit(" ", 1)[1])
        return total


def spawn(name: str, args: list[str], log_dir: Path, env: dict[str, str]) -> ServiceProcess:
    log_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = log_dir / f"{name}.log"
    out = log_path.open("ab")
    # A session of its own: a terminal's Ctrl-C reaches only the supervisor, which then drains services in order
    # (a second signal would make a service exit without draining).
    proc = subprocess.Popen([sys.executable, "-m", "imask.cli.main", *args, "--ops-port", str(port)], stdout=out,
                            stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT, start_new_session=True)
    out.close()
    return ServiceProcess(name, proc, port, log_path)


def stop_all(services: list[ServiceProcess], timeout: float = 30.0) -> dict[str, int]:
    """SIGTERM in the given order (each drains), then wait; SIGKILL only past the timeout."""
    for svc in services:
        if svc.proc.poll() is None:
            svc.proc.send_signal(signal.SIGTERM)
    codes: dict[str, int] = {}
    deadline = time.monotonic() + timeout
    for svc in services:
        try:
            codes[svc.name] = svc.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            svc.proc.kill()
            codes[svc.name] = svc.proc.wait()
    return codes
