"""Who may change an ingest's cameras at runtime, and which sources the admin API may point it at.

The admin API makes the ingest open connections and read media for its caller, so it is a server-side request
forgery surface: it needs a token whenever it is reachable from outside the host (checked at start), compares the
token in constant time, and accepts only network camera URLs on allowed hosts (never local files, devices, or
loopback / link-local addresses such as the cloud metadata service, unless the operator lists them).
"""

from __future__ import annotations

import hmac
import ipaddress
import socket
from collections.abc import Mapping
from urllib.parse import urlsplit

from imask.ops.settings import ConfigError, IngestSettings, env_name

LOOPBACK_HOSTS = {"127.0.0.1", "::1", "localhost"}


class SourceRefused(ValueError):
    """The admin API will not add a camera with this URL; the message says why."""


def check_admin_exposure(settings: IngestSettings) -> None:
    """Refuse to start with an open admin API on a listener other hosts can reach (the admin listener's own
    address decides; the ops endpoint, /metrics only, may be on any)."""
    if settings.admin_port >= 0 and settings.admin_host not in LOOPBACK_HOSTS and not settings.admin_token:
        raise ConfigError(f"the camera admin API listens on {env_name(IngestSettings, 'admin_host')}="
                          f"{settings.admin_host!r}, which other hosts can reach: set "
                          f"{env_name(IngestSettings, 'admin_token')} (or bind it to 127.0.0.1, or turn it off "
                          f"with {env_name(IngestSettings, 'admin_port')}=-1)")


def authorized(settings: IngestSettings, headers: Mapping[str, str]) -> bool:
    """With a token set, every admin call (reads too) must carry it; compared in constant time."""
    token = settings.admin_token
    if not token:
        return True  # only possible on a loopback admin listener (check_admin_exposure)
    given = headers.get("Authorization", "")
    return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())


def check_admin_source(url: str, settings: IngestSettings) -> None:
    """Raise SourceRefused unless `url` is a network stream on a host the admin API may reach."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in settings.admin_url_schemes:
        raise SourceRefused(f"scheme {scheme or 'none'!r} is not allowed through the admin API (allowed: "
                            f"{', '.join(settings.admin_url_schemes)}); local files and devices can only be "
                            "configured at start")
    host = (parts.hostname or "").lower()
    if not host:
        raise SourceRefused("the URL names no host")
    allowed = settings.admin_allowed_hosts
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror as exc:
        raise SourceRefused(f"host {host!r} does not resolve: {exc}") from None
    for address in addresses:
        ip = ipaddress.ip_address(str(address).split("%", 1)[0])
        if allowed:
            if not (host in allowed or any(_in(ip, entry) for entry in allowed)):
                raise SourceRefused(f"host {host!r} ({ip}) is not in {env_name(IngestSettings, 'admin_allowed_hosts')}")
        elif ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip.is_multicast or ip.is_reserved:
            raise SourceRefused(f"host {host!r} resolves to {ip} (loopback, link-local or reserved); list it in "
                                f"{env_name(IngestSettings, 'admin_allowed_hosts')} to allow it")


def _in(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, entry: str) -> bool:
    try:
        return ip in ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return False  # a host name, compared by name above
