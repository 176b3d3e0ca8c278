"""JSON over HTTP for the project's small admin clients (`imask cameras`, the console's sources): one request,
the status and the decoded answer, the HTTP error statuses returned rather than raised."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


def call(base: str, method: str, path: str, body: Any = None, token: str = "", timeout: float = 10.0
         ) -> tuple[int, Any]:
    """`method` `base` + `path` with `body` as JSON and `token` as a bearer token; returns (status, answer).

    An answer that is not JSON (an ops port, a proxy's error page) comes back as {"error": its text}. Raises
    ValueError for a URL that is not http(s), OSError (urllib's URLError included) when nothing answers."""
    if not base.startswith(("http://", "https://")):
        raise ValueError(f"{base!r} is not an http(s):// URL")
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base.rstrip("/") + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        # The scheme was checked above (bandit's B310 asks for exactly that).
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # nosec B310
            raw, code = resp.read(), int(resp.status)
    except urllib.error.HTTPError as exc:
        raw, code = exc.read(), int(exc.code)
    try:
        return code, json.loads(raw or b"null")
    except ValueError:
        return code, {"error": raw.decode(errors="replace").strip()[:500]}
