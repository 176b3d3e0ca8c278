"""Posting alerts to Alertmanager's API v2 (POST /api/v2/alerts), with the two ways it can fail told apart."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence


class Unavailable(RuntimeError):
    """Alertmanager did not take the alerts (down, timed out, 5xx): post them again later."""


class Refused(ValueError):
    """Alertmanager refused the alerts themselves (4xx): posting them again cannot help."""


class AlertmanagerClient:
    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"Alertmanager URL must be http(s)://host:port, got {url!r}")
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def post(self, alerts: Sequence[dict[str, object]]) -> None:
        request = urllib.request.Request(f"{self.url}/api/v2/alerts", data=json.dumps(list(alerts)).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        try:
            # http(s) only, checked above (bandit's B310 is about file:// and custom schemes).
            with urllib.request.urlopen(request, timeout=self.timeout_s) as reply:  # nosec B310
                reply.read()
        except urllib.error.HTTPError as exc:
            body = exc.read()[:500].decode(errors="replace")
            if 400 <= exc.code < 500 and exc.code not in (408, 429):
                raise Refused(f"HTTP {exc.code}: {body}") from None
            raise Unavailable(f"HTTP {exc.code}: {body}") from None
        except (OSError, ValueError) as exc:  # URLError, connection refused or reset, timeouts
            raise Unavailable(f"{type(exc).__name__}: {exc}") from None

    def alerts(self, active_only: bool = False) -> list[dict[str, object]]:
        """GET /api/v2/alerts (for `imask run`'s summary and tests)."""
        query = "" if active_only else "?active=true&silenced=true&inhibited=true&unprocessed=true"
        try:
            with urllib.request.urlopen(f"{self.url}/api/v2/alerts{query}", timeout=self.timeout_s) as reply:  # nosec B310
                answer = json.loads(reply.read())
        except (OSError, ValueError) as exc:
            raise Unavailable(f"{type(exc).__name__}: {exc}") from None
        return list(answer)
