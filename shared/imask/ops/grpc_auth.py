"""Per-client API keys, stored hashed, and TLS, for every gRPC server (mask-api, ingest's Publish stream, router,
features). A key travels as `authorization: Bearer <key>` or `x-api-key: <key>`.

The keys file is JSON: {"clients": {"alice": {"sha256": "<hex of the key>", "revoked": false,
"cameras": ["lobby", "dock"]}}}. `imask api-key new CLIENT` makes a key and prints the entry; the key itself is
shown once and stored nowhere. A key may only publish (mask-api's frames.meta, ingest's Publish stream) under the
camera ids its entry lists: features and drift read those records per camera, so one client must not be able to
write another's. A key listing cameras also reads only their features (FeatureService); a key listing none reads
every camera's (operators, the router). The file is re-read when it changes: a revocation takes effect within a
second, no restart.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from imask.ops.settings import ConfigError, GrpcServerSettings

log = logging.getLogger(__name__)

# Callers of these need no key: orchestrators probe health, operators list services.
PUBLIC_METHOD_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return "imk_" + secrets.token_urlsafe(32)


RELOAD_CHECK_S = 1.0


@dataclass(frozen=True)
class Client:
    client_id: str
    cameras: frozenset[str] = frozenset()  # the camera ids this key may publish under

    def may_publish(self, camera_id: str) -> bool:
        return camera_id in self.cameras

    def may_read(self, camera_id: str) -> bool:
        """Features of a camera: a key bound to cameras reads only theirs; an unbound key reads every camera's."""
        return not self.cameras or camera_id in self.cameras


class AuthError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class ApiKeyStore:
    def __init__(self, entries: dict[str, dict[str, Any]], path: Path | None = None) -> None:
        self._path = path
        self._load(entries)
        self._mtime = path.stat().st_mtime_ns if path else 0
        self._checked = time.monotonic()

    def _load(self, entries: dict[str, dict[str, Any]]) -> None:
        self._by_hash = {str(e["sha256"]): (Client(cid, frozenset(str(c) for c in e.get("cameras", []))),
                                            bool(e.get("revoked", False))) for cid, e in entries.items()}

    @staticmethod
    def _read(path: Path) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(path.read_text())
            return dict(data["clients"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"cannot read API keys from {path}: {exc}") from exc

    @classmethod
    def from_file(cls, path: Path) -> ApiKeyStore:
        return cls(cls._read(path), path)

    def _reload_if_changed(self) -> None:
        now = time.monotonic()
        if self._path is None or now - self._checked < RELOAD_CHECK_S:
            return
        self._checked = now
        try:
            mtime = self._path.stat().st_mtime_ns
            if mtime != self._mtime:
                self._load(self._read(self._path))
                self._mtime = mtime
                log.info("API keys reloaded", extra={"path": str(self._path), "clients": len(self._by_hash)})
        except (OSError, ValueError) as exc:  # keep the last good keys; a broken edit must not open the door
            log.error("API keys file unreadable, keeping the previous keys", extra={"error": str(exc)})

    def authenticate(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> Client:
        self._reload_if_changed()
        key = extract_key(metadata)
        if not key:
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, "missing API key (authorization: Bearer <key>)")
        digest = hash_key(key)
        for known, (client, revoked) in self._by_hash.items():
            if hmac.compare_digest(known, digest):
                if revoked:
                    raise AuthError(grpc.StatusCode.PERMISSION_DENIED, f"API key of {client.client_id!r} is revoked")
                return client
        raise AuthError(grpc.StatusCode.UNAUTHENTICATED, "unknown API key")


def extract_key(metadata: Sequence[tuple[str, str | bytes]] | None) -> str:
    for name, value in metadata or ():
        text = value.decode() if isinstance(value, bytes) else value
        if name == "authorization" and text.lower().startswith("bearer "):
            return text[7:].strip()
        if name == "x-api-key":
            return text.strip()
    return ""


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Refuses calls without a valid key before any work is done (health and reflection stay open)."""

    def __init__(self, store: ApiKeyStore | None) -> None:
        self.store = store

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        if self.store is None or method.startswith(PUBLIC_METHOD_PREFIXES):
            return await continuation(handler_call_details)
        try:
            self.store.authenticate(handler_call_details.invocation_metadata)
        except AuthError as exc:
            return _refusal(exc.code, str(exc), await continuation(handler_call_details))
        return await continuation(handler_call_details)


def _refusal(code: grpc.StatusCode, message: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    async def abort_unary(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    async def abort_stream(request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(
            abort_stream, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(
            abort_stream, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)
    return grpc.unary_unary_rpc_method_handler(
        abort_unary, request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer)


def api_key_store(settings: GrpcServerSettings) -> ApiKeyStore | None:
    """The keys a server checks, or None when auth is off; a missing keys file is a configuration error."""
    if settings.auth == "none":
        return None
    if settings.api_keys_file is None:
        raise ConfigError("IMASK_API_KEYS_FILE is required unless IMASK_AUTH=none")
    return ApiKeyStore.from_file(settings.api_keys_file)


def server_credentials(settings: GrpcServerSettings) -> grpc.ServerCredentials | None:
    """TLS when a certificate is configured, mTLS when a client CA is too; None means plaintext."""
    if settings.tls_cert_file is None:
        return None
    if settings.tls_key_file is None:
        raise ConfigError("IMASK_TLS_KEY_FILE is required with IMASK_TLS_CERT_FILE")
    client_ca = settings.tls_client_ca_file.read_bytes() if settings.tls_client_ca_file else None
    return grpc.ssl_server_credentials(
        [(settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())],
        root_certificates=client_ca, require_client_auth=client_ca is not None)


def client_channel(target: str, tls_ca: Path | None = None, client_cert: Path | None = None,
                   client_key: Path | None = None, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
    """A client's channel to one of these servers: plaintext, TLS with `tls_ca`, mTLS with a client certificate."""
    if tls_ca is None:
        return grpc.insecure_channel(target, options=list(options))
    creds = grpc.ssl_channel_credentials(
        root_certificates=tls_ca.read_bytes(),
        private_key=client_key.read_bytes() if client_key else None,
        certificate_chain=client_cert.read_bytes() if client_cert else None)
    return grpc.secure_channel(target, creds, options=list(options))
