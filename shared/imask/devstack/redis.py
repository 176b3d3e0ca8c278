"""Redis of the local stack: the system ``redis-server``, in memory only (no RDB/AOF)."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path
from typing import ClassVar

from imask.devstack.server import OneProcessServer
from imask.devstack.settings import StackSettings
from imask.devstack.supervisor import StackError

logger = logging.getLogger(__name__)

REDIS_SERVER = "/usr/bin/redis-server"


class Redis(OneProcessServer):
    name: ClassVar[str] = "redis"
    marker: ClassVar[str] = "redis-server"
    port_env: ClassVar[str] = "IMASK_STACK_REDIS_PORT"
    start_timeout_s: ClassVar[float] = 15.0

    def port(self, s: StackSettings) -> int:
        return s.redis_port

    def folder(self, s: StackSettings) -> Path:
        return s.redis_dir

    def endpoint(self, s: StackSettings) -> str:
        return s.redis_url

    def command(self, s: StackSettings) -> list[str]:
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

    def answering(self, s: StackSettings) -> bool:
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


SERVER = Redis()


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
