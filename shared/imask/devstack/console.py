"""The operators' console (`imask console`) as a server of the local stack, so its page answers before, during and
after `imask run`: on loopback port IMASK_STACK_CONSOLE_PORT (8470), signed in with the token kept in
`<state>/console/token` (made once, readable by the owner only).

It reads the stack's Kafka (live previews from frames.masked), Alertmanager (open alerts, with the deliveries the
alert inbox confirmed), MLflow (model versions), the FeatureService on its default port, and the camera admin API
of the ingest that `imask run` starts on IMASK_STACK_RUN_INGEST_ADMIN_PORT (9401): between runs its camera list
says the ingest does not answer, which is the truth.
"""

from __future__ import annotations

import logging
import secrets
import sys
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

from imask.devstack.server import OneProcessServer
from imask.devstack.settings import StackSettings
from imask.devstack.supervisor import port_bindable

log = logging.getLogger(__name__)


def token(s: StackSettings) -> str:
    """The console's operator token: made once, then read back (sign-ins survive a restart of the stack)."""
    path = s.console_token_file
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(24)
    part = path.with_suffix(".part")
    part.touch(mode=0o600)
    part.write_text(value + "\n")
    part.rename(path)
    return value


def url(s: StackSettings) -> str:
    return f"http://127.0.0.1:{s.console_port}/"


def env(s: StackSettings) -> dict[str, str]:
    """Everything the console reads, named outright: nothing leaks in from the caller's IMASK_CONSOLE_* or
    IMASK_REGISTRY_URI (a test session's own MLflow, say)."""
    named = {
        "IMASK_BOOTSTRAP_SERVERS": s.bootstrap_servers,
        "IMASK_CONSOLE_HOST": "127.0.0.1",
        "IMASK_CONSOLE_PORT": str(s.console_port),
        "IMASK_CONSOLE_TOKEN": token(s),
        "IMASK_CONSOLE_INGEST_URL": f"http://127.0.0.1:{s.run_ingest_admin_port}",
        "IMASK_CONSOLE_ALERTMANAGER_URL": s.alertmanager_url if s.alerting else "",
        "IMASK_REGISTRY_URI": s.mlflow_uri if s.mlflow else "",
        "IMASK_CONSOLE_OPS_PORT": "0",
        "IMASK_LOG_LEVEL": "info",
    }
    if s.alerting:
        named["IMASK_CONSOLE_ALERT_INBOX_DIR"] = str(s.alert_inbox_dir)
    return named


class Console(OneProcessServer):
    name: ClassVar[str] = "console"
    marker: ClassVar[str] = "imask.cli.main console"
    port_env: ClassVar[str] = "IMASK_STACK_CONSOLE_PORT"
    start_timeout_s: ClassVar[float] = 90.0
    needs_topics: ClassVar[bool] = True  # its reader subscribes to the frame topics: started once they exist

    def enabled(self, s: StackSettings) -> bool:
        return s.console

    def port(self, s: StackSettings) -> int:
        return s.console_port

    def folder(self, s: StackSettings) -> Path:
        return s.console_dir

    def endpoint(self, s: StackSettings) -> str:
        return f"{url(s)} (token in {s.console_token_file})"

    def command(self, s: StackSettings) -> list[str]:
        return [sys.executable, "-m", "imask.cli.main", "console"]

    def environment(self, s: StackSettings) -> Mapping[str, str]:
        return env(s)

    def answering(self, s: StackSettings) -> bool:
        try:
            with urllib.request.urlopen(url(s) + "login", timeout=1) as reply:  # nosec B310: http to loopback
                return bool(reply.status == 200)
        except (OSError, ValueError):
            return False


SERVER = Console()


def ingest_admin_env(s: StackSettings, env: dict[str, str]) -> dict[str, str]:
    """The admin port for `imask run`'s ingest: the one the stack's console reads, unless the caller chose one or
    it is taken (another run's ingest: then the console does not list this run's cameras, and the log says so)."""
    if not s.console or "IMASK_INGEST_ADMIN_PORT" in env:
        return {}
    if not port_bindable(s.run_ingest_admin_port):
        log.warning("port %d is taken: this run's ingest gets another admin port, and the console at %s does "
                    "not list its cameras", s.run_ingest_admin_port, url(s))
        return {}
    return {"IMASK_INGEST_ADMIN_PORT": str(s.run_ingest_admin_port)}


def summary(s: StackSettings) -> dict[str, object]:
    """The console's line in `imask run`'s summary: where it is, the token to sign in with, whether it answers."""
    if not s.console:
        return {}
    return {"url": url(s), "token": token(s), "token_file": str(s.console_token_file),
            "answering": SERVER.answering(s)}
