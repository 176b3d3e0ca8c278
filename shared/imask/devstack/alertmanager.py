"""Alertmanager of the local stack (Debian's `prometheus-alertmanager`, no cluster listener) and the alert inbox
that stands in for its receivers (imask.devstack.alert_inbox) unless IMASK_STACK_ALERT_* name real ones.
deploy/alertmanager/alertmanager.yml is rendered for this stack's receivers (imask.alerting.amconfig), its secrets
written beside it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import ClassVar

from imask.alerting import amconfig
from imask.devstack.prometheus import binary as _binary
from imask.devstack.prometheus import ready_at
from imask.devstack.server import OneProcessServer
from imask.devstack.settings import REPO_ROOT, StackSettings

ALERTMANAGER_CONFIG = REPO_ROOT / "deploy" / "alertmanager" / "alertmanager.yml"


def receivers(s: StackSettings) -> amconfig.Receivers:
    inbox = f"http://127.0.0.1:{s.alert_inbox_port}"
    return amconfig.Receivers(http_base=s.alert_http_base or inbox, slack_url=s.alert_slack_url or f"{inbox}/slack",
                              smarthost=s.alert_smarthost or f"127.0.0.1:{s.alert_smtp_port}",
                              webhook_token=s.alert_webhook_token)


class Alertmanager(OneProcessServer):
    name: ClassVar[str] = "alertmanager"
    marker: ClassVar[str] = "alertmanager.yml"
    port_env: ClassVar[str] = "IMASK_STACK_ALERTMANAGER_PORT"
    start_timeout_s: ClassVar[float] = 30.0

    def enabled(self, s: StackSettings) -> bool:
        return s.alerting

    def port(self, s: StackSettings) -> int:
        return s.alertmanager_port

    def folder(self, s: StackSettings) -> Path:
        return s.alertmanager_dir

    def endpoint(self, s: StackSettings) -> str:
        return s.alertmanager_url

    def command(self, s: StackSettings) -> list[str]:
        s.alertmanager_dir.mkdir(parents=True, exist_ok=True)
        config = amconfig.write(amconfig.render(amconfig.load(ALERTMANAGER_CONFIG), receivers(s)),
                                s.alertmanager_dir, receivers(s))
        return [_binary("prometheus-alertmanager"), f"--config.file={config}",
                f"--storage.path={s.alertmanager_dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{s.alertmanager_port}", "--cluster.listen-address=",
                f"--web.external-url={s.alertmanager_url}"]

    def answering(self, s: StackSettings) -> bool:
        return ready_at(f"{s.alertmanager_url}/-/ready")


class AlertInbox(OneProcessServer):
    name: ClassVar[str] = "alert-inbox"
    marker: ClassVar[str] = "imask.devstack.alert_inbox"
    port_env: ClassVar[str] = "IMASK_STACK_ALERT_INBOX_PORT"
    start_timeout_s: ClassVar[float] = 20.0

    def enabled(self, s: StackSettings) -> bool:
        return s.alerting

    def port(self, s: StackSettings) -> int:
        return s.alert_inbox_port

    def folder(self, s: StackSettings) -> Path:
        return s.alert_inbox_dir

    def endpoint(self, s: StackSettings) -> str:
        return f"http://127.0.0.1:{s.alert_inbox_port} (smtp 127.0.0.1:{s.alert_smtp_port})"

    def command(self, s: StackSettings) -> list[str]:
        return [sys.executable, "-m", "imask.devstack.alert_inbox", "--http-port", str(s.alert_inbox_port),
                "--smtp-port", str(s.alert_smtp_port), "--dir", str(s.alert_inbox_dir)]

    def answering(self, s: StackSettings) -> bool:
        from imask.devstack.supervisor import port_open

        return port_open(s.alert_smtp_port)


SERVER = Alertmanager()
INBOX = AlertInbox()
