"""A service's admin API on a listener of its own (JSON over HTTP: GET, POST, DELETE).

Apart from the ops endpoint on purpose: /metrics, /healthz and /readyz are read-only and meant to be scraped
from anywhere (Prometheus on 0.0.0.0), while an admin API changes what the service does and stays on loopback or
behind its own token. The routes decide everything else (paths, authorization, answers).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)

MAX_ADMIN_BODY = 1 << 20
# (method, path, body, headers) -> (HTTP status, JSON-able answer), or None when the path is not the admin's.
AdminRoutes = Callable[[str, str, bytes, Mapping[str, str]], "tuple[int, Any] | None"]


class AdminServer:
    """Serves `routes` on host:port (port 0: pick a free one); anything they do not answer is a 404."""

    def __init__(self, host: str, port: int, routes: AdminRoutes) -> None:
        self._routes = routes
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="admin-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> AdminServer:
        self._thread.start()
        log.info("admin API listening", extra={"host": self._server.server_address[0], "port": self.port})
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        routes = self._routes

        class Handler(BaseHTTPRequestHandler):
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
                    self._send(400, b'{"error": "bad or too large Content-Length"}')
                    return
                body = self.rfile.read(length) if length else b""
                answer = routes(method, self.path, body, dict(self.headers.items()))
                if answer is None:
                    self._send(404, b'{"error": "not found"}')
                else:
                    self._send(answer[0], json.dumps(answer[1], default=str).encode())

            def _send(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return

        return Handler
