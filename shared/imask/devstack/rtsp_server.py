"""Start, freeze, kill and restart the RTSP camera simulator (gst_rtsp_server.py) from the project's Python.

Used by the tests, the benchmark and `imask rtsp-server` (demo cameras for the local stack):

    with RtspServer({"cam1": clip1, "cam2": clip2}) as server:
        server.url("cam1")      # rtsp://127.0.0.1:PORT/cam1
        server.freeze()         # SIGSTOP: clients see a hung camera
        server.thaw()
        server.kill(); server.start()   # same port: clients reconnect
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from imask.devstack.procs import free_port

SCRIPT = Path(__file__).with_name("gst_rtsp_server.py")
SYSTEM_PYTHON = "/usr/bin/python3"  # has Debian's python3-gi; the project's virtualenv cannot import gi


class RtspServerError(RuntimeError):
    pass


def available() -> str | None:
    """None when the RTSP server can run here, else what is missing (tests skip with this)."""
    probe = "import gi; gi.require_version('GstRtspServer', '1.0'); from gi.repository import GstRtspServer"
    try:
        subprocess.run([SYSTEM_PYTHON, "-c", probe], check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "GStreamer's RTSP server is not installed (make system-deps installs it)"
    return None


class RtspServer:
    def __init__(self, mounts: Mapping[str, str | Path], port: int = 0, host: str = "127.0.0.1", width: int = 0,
                 log_path: Path | None = None) -> None:
        self.mounts = {name: str(path) for name, path in mounts.items()}
        self.host = host
        self.port = port or free_port()
        self.width = width
        self.log_path = log_path
        self.proc: subprocess.Popen[str] | None = None
        self._log_lines: list[str] = []

    def url(self, mount: str) -> str:
        return f"rtsp://{self.host}:{self.port}/{mount}"

    def start(self, timeout: float = 30.0) -> RtspServer:
        cmd = [SYSTEM_PYTHON, str(SCRIPT), "--host", self.host, "--port", str(self.port)]
        cmd += [arg for name, path in self.mounts.items() for arg in ("--mount", f"{name}={path}")]
        if self.width:
            cmd += ["--width", str(self.width)]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                     start_new_session=True)
        ready = threading.Event()
        threading.Thread(target=self._pump, args=(self.proc, ready), daemon=True).start()
        if not ready.wait(timeout) or self.proc.poll() is not None:
            output = "\n".join(self._log_lines[-20:])
            self.kill()
            raise RtspServerError(f"RTSP server did not start on port {self.port}: {output}")
        return self

    def _pump(self, proc: subprocess.Popen[str], ready: threading.Event) -> None:
        assert proc.stdout is not None
        log = self.log_path.open("a") if self.log_path else None
        for line in proc.stdout:
            self._log_lines = [*self._log_lines[-200:], line.rstrip()]
            if log is not None:
                log.write(line)
                log.flush()
            if line.startswith("READY"):
                ready.set()
        ready.set()

    def freeze(self) -> None:
        """SIGSTOP: the TCP connections stay open but nothing arrives, like a hung camera."""
        self._signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self._signal(signal.SIGCONT)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self._signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def _signal(self, sig: signal.Signals) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise RtspServerError("RTSP server is not running")
        self.proc.send_signal(sig)

    def __enter__(self) -> RtspServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="imask rtsp-server",
        description="Serve video files as live RTSP cameras (looping, real time, 1 s keyframes, shared by all "
        "clients) with GStreamer's RTSP server, for demos and tests. Ctrl-C stops it.")
    parser.add_argument("mounts", nargs="+", metavar="NAME=FILE", help="serve FILE at rtsp://HOST:PORT/NAME")
    parser.add_argument("--port", type=int, default=8554)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--width", type=int, default=0,
                        help="scale wider frames down to this width (0: as in the file)")
    args = parser.parse_args(argv)
    mounts = {}
    for entry in args.mounts:
        name, sep, path = entry.partition("=")
        if not sep or not Path(path).is_file():
            parser.error(f"{entry!r}: expected NAME=FILE with an existing file")
        mounts[name] = path
    missing = available()
    if missing:
        print(f"imask rtsp-server: {missing}", file=sys.stderr)
        return 2
    with RtspServer(mounts, args.port, args.host, args.width) as server:
        for name in mounts:
            print(server.url(name), flush=True)
        try:
            while server.proc is not None and server.proc.poll() is None:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
    return 0
