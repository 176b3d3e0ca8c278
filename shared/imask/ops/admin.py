"""A service's admin API on a listener of its own (JSON over HTTP: GET, POST, DELETE).

Apart from the ops endpoint on purpose: /metrics, /healthz and /readyz are read-only and meant to be scraped
from anywhere (Prometheus on 0.0.0.0), while an admin API changes what the service does and stays on loopback or
behind its own token. The routes decide everything else (paths, authorization, answers).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any, Self

from imask.ops.http import HttpListener, QuietHandler

log = logging.getLogger(__name__)

MAX_ADMIN_BODY = 1 << 20
# (method, path, body, headers) -> (HTTP status, JSON-able answer), or None when the path is not the admin's.
AdminRoutes = Callable[[str, str, bytes, Mapping[str, str]], "tuple[int, Any] | None"]


class AdminServer(HttpListener):
    """Serves `routes` on host:port (port 0: pick a free one); anything they do not answer is a 404."""

    def __init__(self, host: str, port: int, routes: AdminRoutes) -> None:
        self._routes = routes
        super().__init__(host, port, self._handler(), "admin-http")

    def start(self) -> Self:
        super().start()
        log.info("admin API listening", extra={"host": self.host, "port": self.port})
        return self

    def _handler(self) -> type[QuietHandler]:
        routes = self._routes

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                self._route("GET")

            def do_POST(self) -> None:
                self._route("POST")

            def do_DELETE(self) -> None:
                self._route("DELETE")

            def _route(self, method: str) -> None:
                try:
                    length = int(self.headers.get("Content-Length") or 0)
                except ValueError:
                    length = -1
                if not 0 <= length <= MAX_ADMIN_BODY:
                    self._json(400, b'{"error": "bad or too large Content-Length"}')
                    return
                body = self.rfile.read(length) if length else b""
                answer = routes(method, self.path, body, dict(self.headers.items()))
                if answer is None:
                    self._json(404, b'{"error": "not found"}')
                else:
                    self._json(answer[0], json.dumps(answer[1], default=str).encode())

            def _json(self, code: int, body: bytes) -> None:
                self.reply(code, body, "application/json")

        return Handler
