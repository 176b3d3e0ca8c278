"""The alert inbox: stand-in receivers for Alertmanager's notifications, locally and in tests. One HTTP listener
takes the webhooks (/webhook, /watchdog: Alertmanager's JSON, version 4) and Slack's incoming-webhook format
(/slack), one SMTP listener (aiosmtpd) takes the mail. Every notification becomes one JSON line in `inbox.jsonl`
(kind, path or recipients, time received, the payload or the mail's subject and body) and stays in memory.

`slow_paths` makes chosen paths answer only after a delay (a receiver that times out, for tests); a request whose
sender gave up waiting is kept with `"caller_left": true` and counts as no notification (`notifications`).
Run as a server: `python -m imask.devstack.alert_inbox --http-port 9495 --smtp-port 9525 --dir .stack/alert-inbox`.
"""

from __future__ import annotations

import argparse
import json
import select
import signal
import socket
import threading
import time
from email import message_from_bytes, policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from imask.alerting.deliveries import INBOX_FILE


class Inbox:
    def __init__(self, folder: Path, http_port: int, smtp_port: int, slow_paths: dict[str, float] | None = None):
        self.folder = folder
        self.http_port = http_port
        self.smtp_port = smtp_port
        self.slow_paths = dict(slow_paths or {})
        self.received: list[dict[str, Any]] = []
        self.delayed = 0  # requests that met a slow path (counted as they start waiting)
        self._lock = threading.Lock()
        self._http: ThreadingHTTPServer | None = None
        self._smtp: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def record(self, entry: dict[str, Any]) -> None:
        entry = {"received": time.time(), **entry}
        with self._lock:
            self.received.append(entry)
            with open(self.folder / INBOX_FILE, "a") as out:
                out.write(json.dumps(entry) + "\n")

    def start(self) -> Inbox:
        from aiosmtpd.controller import Controller

        self.folder.mkdir(parents=True, exist_ok=True)
        inbox = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                delay = inbox.slow_paths.get(self.path, 0.0)
                if delay:
                    inbox.delayed += 1
                    time.sleep(delay)
                try:
                    payload = json.loads(body or b"null")
                except ValueError:
                    payload = body.decode(errors="replace")
                entry = {"kind": "slack" if self.path.startswith("/slack") else "webhook", "path": self.path,
                         "authorization": self.headers.get("Authorization", ""), "payload": payload}
                if delay and _closed(self.connection):
                    inbox.record({**entry, "caller_left": True})  # it timed out: nobody hears the answer
                    self.close_connection = True
                    return
                inbox.record(entry)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        class Mail:
            async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:
                msg = message_from_bytes(envelope.content, policy=policy.default)
                body = msg.get_body(("plain", "html"))
                inbox.record({"kind": "email", "to": list(envelope.rcpt_tos), "subject": str(msg["Subject"]),
                              "body": body.get_content() if body is not None else ""})
                return "250 OK"

        self._http = ThreadingHTTPServer(("127.0.0.1", self.http_port), Handler)
        self.http_port = self._http.server_address[1]
        threading.Thread(target=self._http.serve_forever, daemon=True, name="inbox-http").start()
        self._smtp = Controller(Mail(), hostname="127.0.0.1", port=self.smtp_port)
        self._smtp.start()
        return self

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        if self._smtp is not None:
            self._smtp.stop()

    def notifications(self, kind: str | None = None) -> list[dict[str, Any]]:
        """What was delivered (requests whose sender gave up are left out)."""
        with self._lock:
            return [e for e in self.received if (kind is None or e["kind"] == kind) and not e.get("caller_left")]


def _closed(conn: socket.socket) -> bool:
    """Whether the peer closed the connection (readable with nothing to read)."""
    try:
        readable, _, _ = select.select([conn], [], [], 0)
        return bool(readable) and conn.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m imask.devstack.alert_inbox", description=__doc__)
    parser.add_argument("--http-port", type=int, default=9495)
    parser.add_argument("--smtp-port", type=int, default=9525)
    parser.add_argument("--dir", type=Path, default=Path(".stack/alert-inbox"))
    args = parser.parse_args(argv)
    inbox = Inbox(args.dir, args.http_port, args.smtp_port).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    inbox.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
