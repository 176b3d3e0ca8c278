"""Who may use the console, and the CSRF tokens that every change must carry.

An operator signs in with the operator token (IMASK_CONSOLE_TOKEN) or with a key from the console's keys file whose
entry has "role": "operator" (the file format of `imask api-key`, keys stored as sha256). Signing in sets a session
cookie signed with this process's secret (HttpOnly, SameSite=Strict); API clients may send the key as
`Authorization: Bearer ...` instead. Each session (or key) has one CSRF token, an HMAC of its id: a change (any
POST) must carry it in the form field `csrf` or the `X-CSRF-Token` header, whatever authenticated it. Comparisons
are constant time; no token or key is ever stored or logged in clear.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OPERATOR_ROLE = "operator"
COOKIE = "imask_console"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Operator:
    """An authenticated caller: who (for the log and the experiment's change reason) and its session id."""

    name: str
    session: str


class OperatorKeys:
    """The operator token and the operator entries of a keys file (re-read when the file changes)."""

    def __init__(self, token: str = "", keys_file: Path | None = None) -> None:
        self._token_digest = _digest(token) if token else ""
        self._path = keys_file
        self._mtime = -1
        self._keys: dict[str, str] = {}  # sha256 -> client name

    @property
    def configured(self) -> bool:
        return bool(self._token_digest or self._path)

    def _entries(self) -> dict[str, str]:
        if self._path is None:
            return {}
        try:
            mtime = self._path.stat().st_mtime_ns
        except OSError:
            return {}  # a keys file that went away lets nobody in through it
        if mtime != self._mtime:
            self._keys = parse_keys(json.loads(self._path.read_text()))
            self._mtime = mtime
        return self._keys

    def check(self, key: str) -> str | None:
        """The name of the operator this key belongs to, or None."""
        if not key:
            return None
        given = _digest(key)
        if self._token_digest and hmac.compare_digest(given, self._token_digest):
            return "operator-token"
        for digest, name in self._entries().items():
            if hmac.compare_digest(given, digest):
                return name
        return None


def parse_keys(data: Any) -> dict[str, str]:
    """sha256 -> client name of the entries with the operator role that are not revoked."""
    clients = data.get("clients", {}) if isinstance(data, dict) else {}
    return {str(entry["sha256"]): str(name) for name, entry in clients.items()
            if isinstance(entry, dict) and entry.get("role") == OPERATOR_ROLE and not entry.get("revoked")
            and entry.get("sha256")}


class Sessions:
    """Signed session cookies and per-session CSRF tokens (the secret is this process's: a restart signs out)."""

    def __init__(self, ttl_s: float, secret: bytes | None = None) -> None:
        self.ttl_s = ttl_s
        self._secret = secret or secrets.token_bytes(32)

    def _sign(self, text: str) -> str:
        return hmac.new(self._secret, text.encode(), hashlib.sha256).hexdigest()

    def issue(self, name: str, now: float | None = None) -> str:
        expires = int((time.time() if now is None else now) + self.ttl_s)
        body = f"{secrets.token_hex(16)}.{expires}.{name.encode().hex()}"
        return f"{body}.{self._sign(body)}"

    def read(self, cookie: str, now: float | None = None) -> Operator | None:
        body, _, signature = cookie.rpartition(".")
        if not body or not hmac.compare_digest(signature, self._sign(body)):
            return None
        sid, expires, name = [*body.split("."), "", "", ""][:3]
        try:
            if int(expires) < (time.time() if now is None else now):
                return None
            return Operator(bytes.fromhex(name).decode(), sid)
        except ValueError:
            return None

    def for_key(self, name: str, key: str) -> Operator:
        """A key sent as a Bearer header is its own session: its CSRF token is derived from its digest."""
        return Operator(name, "key-" + _digest(key)[:32])

    def csrf(self, operator: Operator) -> str:
        return self._sign("csrf|" + operator.session)

    def check_csrf(self, operator: Operator, given: str) -> bool:
        return bool(given) and hmac.compare_digest(given, self.csrf(operator))


def check_auth_settings(token: str, keys_file: Path | None) -> None:
    """The console never runs open: a token (16 characters at least) or a keys file is required."""
    from imask.ops.settings import ConfigError

    if not token and keys_file is None:
        raise ConfigError("the console needs an operator token: set IMASK_CONSOLE_TOKEN (e.g. from `python3 -c "
                          "'import secrets; print(secrets.token_urlsafe(32))'`) or IMASK_CONSOLE_OPERATOR_KEYS_FILE "
                          "with entries of \"role\": \"operator\"")
    if token and len(token) < 16:
        raise ConfigError("IMASK_CONSOLE_TOKEN must be at least 16 characters")
    if keys_file is not None and not keys_file.is_file():
        raise ConfigError(f"IMASK_CONSOLE_OPERATOR_KEYS_FILE={keys_file}: no such file")
