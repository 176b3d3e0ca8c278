"""The HTTP API's listener: uvicorn inside mask-api's own event loop (beside grpc.aio), on a socket bound here so a
port of 0 is known at once. Signals stay the service runtime's: uvicorn's own handlers are not installed, the
runtime's drain stops this server (`stop`) after the gRPC health flip and drain delay."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Generator
from pathlib import Path

import uvicorn
from fastapi import FastAPI

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:  # the service runtime owns SIGTERM/SIGINT
        yield


class HttpServer:
    def __init__(self, app: FastAPI, host: str, port: int, grace_s: float = 20.0, tls_cert: Path | None = None,
                 tls_key: Path | None = None, tls_client_ca: Path | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.port: int = self.sock.getsockname()[1]
        self.tls = tls_cert is not None
        config = uvicorn.Config(
            app, log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=max(1, int(grace_s)),
            ssl_certfile=str(tls_cert) if tls_cert else None, ssl_keyfile=str(tls_key) if tls_key else None,
            ssl_ca_certs=str(tls_client_ca) if tls_client_ca else None,
            ssl_cert_reqs=ssl.CERT_REQUIRED if tls_client_ca else ssl.CERT_NONE)
        self.server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> int:
        self._task = asyncio.create_task(self.server.serve(sockets=[self.sock]))
        while not self.server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
                raise RuntimeError("HTTP server stopped while starting")
            await asyncio.sleep(0.01)
        return self.port

    async def stop(self) -> None:
        """Refuse new connections, give in-flight requests the grace period, then close."""
        self.server.should_exit = True
        if self._task is not None:
            await self._task
        self.sock.close()
