"""Result cache of mask-api: repeated images and retried uploads are answered from Redis, not the engine.

What is stored: the reply only (masked pixels in the requested encoding, or none, plus detections), never the input.
The key is made of the image's sha256, the model version, the mask options, the reply's encoding and the scope of
the caller (a digest of its API key; "anonymous" with auth off), so one key's results are never served to another,
and a new model version misses (its results are computed afresh; the old entries expire with their TTL). Entries live
`ttl_s` seconds (0: the cache is off); a reply larger than `max_entry_bytes` is not stored, nor is a fail-closed one
(a timed-out detector is a passing state: the retry should get a real masking).

Redis is optional here, as for the rate limits: when it does not answer, the request is masked as if the cache
missed (counted as `error`), and Redis is asked again after `retry_after_s`.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from imask.engine import MaskSpec
from imask.ops import metrics
from imask.v1 import mask_service_pb2 as mpb

log = logging.getLogger(__name__)

ENCODINGS = ("jpeg", "png", "none")  # what a reply carries: pixels as JPEG or PNG, or no pixels (detections only)


@dataclass(frozen=True)
class CacheRequest:
    """Everything a cached reply depends on."""

    image_sha256: str
    model_version: str
    spec: MaskSpec
    threshold: float | None
    encoding: str
    scope: str  # whose results these are: api-key digest, or "anonymous"

    def key(self, prefix: str) -> str:
        options = (f"{self.spec.style.value}|{self.spec.shape.value}|{self.spec.scale:.6g}|"
                   f"{'' if self.threshold is None else f'{self.threshold:.6g}'}|{self.encoding}")
        digest = hashlib.sha256("\0".join((self.model_version, options, self.scope)).encode()).hexdigest()[:32]
        return f"{prefix}:{self.scope[:16]}:{self.image_sha256}:{digest}"


def scope_of(api_key: str | None) -> str:
    """A caller's cache scope: a digest of its key (never the key itself), or "anonymous"."""
    if not api_key:
        return "anonymous"
    return "k" + hashlib.sha256(b"imask-cache\0" + api_key.encode()).hexdigest()[:31]


def bypasses(cache_control: str) -> bool:
    """A request's Cache-Control (HTTP header, or gRPC metadata) asks for a fresh result: no-cache or no-store."""
    directives = {part.strip().split("=", 1)[0].lower() for part in cache_control.split(",")}
    return bool(directives & {"no-cache", "no-store"})


def storable(reply: mpb.MaskReply, max_entry_bytes: int) -> str:
    """Why a reply may not be stored ("" when it may)."""
    if reply.fail_closed:
        return "fail_closed"
    if reply.ByteSize() > max_entry_bytes:
        return "too_large"
    return ""


def for_storage(reply: mpb.MaskReply) -> bytes:
    """The reply as stored: what depends on the request (seq) or on this one run (timings) is left out."""
    stored = mpb.MaskReply()
    stored.CopyFrom(reply)
    stored.ClearField("seq")
    stored.ClearField("timings")
    return stored.SerializeToString()


class ResultCache:
    def __init__(self, url: str, ttl_s: int, max_entry_bytes: int, prefix: str = "imask:cache",
                 timeout_s: float = 0.5, retry_after_s: float = 1.0) -> None:
        self.redis = aioredis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                             retry=Retry(NoBackoff(), 0))
        self.ttl_s = ttl_s
        self.max_entry_bytes = max_entry_bytes
        self.prefix = prefix
        self.retry_after_s = retry_after_s
        self._retry_at = 0.0

    @property
    def enabled(self) -> bool:
        return self.ttl_s > 0

    async def get(self, request: CacheRequest, transport: str) -> mpb.MaskReply | None:
        if not self.enabled or time.monotonic() < self._retry_at:
            metrics.RESULT_CACHE.labels(transport, "error" if self.enabled else "off").inc()
            return None
        try:
            data = await self.redis.get(request.key(self.prefix))
        except (TimeoutError, RedisError, OSError) as exc:
            self._lost(exc)
            metrics.RESULT_CACHE.labels(transport, "error").inc()
            return None
        if data is None:
            metrics.RESULT_CACHE.labels(transport, "miss").inc()
            return None
        metrics.RESULT_CACHE.labels(transport, "hit").inc()
        return mpb.MaskReply.FromString(data)

    async def put(self, request: CacheRequest, reply: mpb.MaskReply, transport: str) -> bool:
        if not self.enabled or time.monotonic() < self._retry_at:
            return False
        why_not = storable(reply, self.max_entry_bytes)
        if why_not:
            metrics.RESULT_CACHE.labels(transport, f"not_stored_{why_not}").inc()
            return False
        try:
            await self.redis.set(request.key(self.prefix), for_storage(reply), ex=self.ttl_s)
        except (TimeoutError, RedisError, OSError) as exc:
            self._lost(exc)
            metrics.RESULT_CACHE.labels(transport, "error").inc()
            return False
        metrics.RESULT_CACHE.labels(transport, "stored").inc()
        return True

    def _lost(self, exc: BaseException) -> None:
        if time.monotonic() >= self._retry_at:
            log.warning("result cache: redis unreachable, masking every request", extra={"error": str(exc)})
        self._retry_at = time.monotonic() + self.retry_after_s

    async def close(self) -> None:
        await self.redis.aclose()
