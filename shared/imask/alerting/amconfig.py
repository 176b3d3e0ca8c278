"""The Alertmanager configuration (deploy/alertmanager/alertmanager.yml) as a stack or a test runs it: the same
routes and inhibitions, with the receivers' addresses and secrets of that place.

`render` rewrites the local inbox addresses the file names (http://127.0.0.1:9495, 127.0.0.1:9525) to the given
ones, `timed` shortens the grouping timings (tests), `write` puts the config and its secret files in a folder.
`inhibited` evaluates the inhibit rules for a pair of label sets, so routing and inhibition can be asserted without
a server (amtool tests routes only).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DEFAULT_HTTP = "http://127.0.0.1:9495"
DEFAULT_SMTP = "127.0.0.1:9525"
SECRETS = ("slack_api_url", "webhook_token")


@dataclass(frozen=True)
class Receivers:
    """Where notifications go: the webhooks' base URL (paths /webhook and /watchdog kept), the Slack incoming
    webhook, the mail host, and the webhook's bearer token."""

    http_base: str = DEFAULT_HTTP
    slack_url: str = DEFAULT_HTTP + "/slack"
    smarthost: str = DEFAULT_SMTP
    webhook_token: str = "local"


def load(path: Path) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(path.read_text())
    return config


def render(base: dict[str, Any], receivers: Receivers) -> dict[str, Any]:
    config = copy.deepcopy(base)
    config.setdefault("global", {})["smtp_smarthost"] = receivers.smarthost
    for receiver in config.get("receivers", []):
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = hook["url"].replace(DEFAULT_HTTP, receivers.http_base.rstrip("/"))
    return config


def timed(config: dict[str, Any], group_wait: str, group_interval: str,
          repeat_interval: str | None = None) -> dict[str, Any]:
    """The config with the top route's group timings replaced (a test's Alertmanager notifies within seconds, not
    the 30 s group wait of the file); routes that set their own timings keep them."""
    config = copy.deepcopy(config)
    route = config.setdefault("route", {})
    route.update(group_wait=group_wait, group_interval=group_interval)
    if repeat_interval is not None:
        route["repeat_interval"] = repeat_interval
    return config


def write(config: dict[str, Any], folder: Path, receivers: Receivers) -> Path:
    """The config and its secrets (mode 600) in `folder`, whatever the working directory Alertmanager runs in;
    returns the config's path."""
    secrets = folder / "secrets"
    secrets.mkdir(parents=True, exist_ok=True)
    for name, value in (("slack_api_url", receivers.slack_url), ("webhook_token", receivers.webhook_token)):
        path = secrets / name
        path.write_text(value)
        path.chmod(0o600)
    # Alertmanager resolves the receivers' file paths against the config's folder but reads the global ones
    # (slack_api_url_file) from its working directory: those are made absolute here.
    config = copy.deepcopy(config)
    for key, value in config.get("global", {}).items():
        if key.endswith("_file") and isinstance(value, str) and not Path(value).is_absolute():
            config["global"][key] = str((folder / value).absolute())
    path = folder / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


_MATCHER = re.compile(r'^\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"(.*)"\s*$')


def matches(matcher: str, labels: dict[str, str]) -> bool:
    """One Alertmanager matcher (`name="v"`, `name=~"re"`, `!=`, `!~`; regexes anchored) against a label set."""
    found = _MATCHER.match(matcher)
    if found is None:
        raise ValueError(f"unsupported matcher {matcher!r}")
    name, op, value = found.groups()
    actual = labels.get(name, "")
    if op == "=":
        return actual == value
    if op == "!=":
        return actual != value
    hit = re.fullmatch(value, actual) is not None
    return hit if op == "=~" else not hit


def inhibited(config: dict[str, Any], source: dict[str, str], target: dict[str, str]) -> bool:
    """Whether firing `source` mutes `target` under the config's inhibit rules."""
    for rule in config.get("inhibit_rules", []):
        if (all(matches(m, source) for m in rule.get("source_matchers", []))
                and all(matches(m, target) for m in rule.get("target_matchers", []))
                and all(source.get(k, "") == target.get(k, "") for k in rule.get("equal", []))):
            return True
    return False
