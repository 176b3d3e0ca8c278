"""Per-client request rate limits shared by every mask-api replica through Redis.

Fixed windows (one second by default) counted with INCR (atomic across replicas); a window's key expires after two
windows. Simple and exact per window; a client can burst up to twice the limit across a window boundary, which is
acceptable here.

Redis down: fail open, to a limit per replica. Rate limiting is an abuse control, not a privacy control: what a
request gets back is masked (or refused) by the engine's own fail-closed rules whatever the limiter says, and the
API keys, the request size bounds and the engine queue's bound (RESOURCE_EXHAUSTED) do not depend on Redis. So a
Redis outage must not take the masking API down with it (every call failing, as it did before: an unhandled
ConnectionError came back as UNKNOWN). Without Redis each replica counts the same windows in memory, so a client
gets at most the limit per replica (N replicas: N times the shared budget) instead of no limit at all. Every
decision made that way is counted in ``imask_rate_limit_decisions_without_redis_total{decision}`` and
``imask_rate_limit_redis_up`` is 0 (exported only where a limit is on), so the degraded state is visible and can
page. After a failure Redis is asked again every ``retry_after_s`` (one call pays the connect or read timeout, the
others decide locally meanwhile), and the shared budget is back as soon as it answers.
"""

from __future__ import annotations

import logging
import time

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from imask.ops import metrics

log = logging.getLogger(__name__)


class LocalWindows:
    """The same fixed windows, counted in this process only (the fallback while Redis is away).
    Holds one counter per client seen in the current window: bounded by the clients of one window."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._window = -1
        self._counts: dict[str, int] = {}

    def allow(self, client_id: str, window: int) -> bool:
        if window != self._window:
            self._window, self._counts = window, {}
        count = self._counts.get(client_id, 0) + 1
        self._counts[client_id] = count
        return count <= self.limit


class RateLimiter:
    """At most `limit` calls per client in each fixed window of `window_s` seconds, across every replica."""

    def __init__(self, url: str, limit: int, window_s: int = 1, prefix: str = "imask:rl", timeout_s: float = 0.5,
                 retry_after_s: float = 1.0) -> None:
        # No client-side retries: redis-py's default (10, with backoff) would hold each request for seconds when
        # Redis is away; the limiter decides locally instead and asks Redis again after retry_after_s.
        self.redis = aioredis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                             retry=Retry(NoBackoff(), 0))
        self.limit = limit
        self.window_s = window_s
        self.prefix = prefix
        self.retry_after_s = retry_after_s
        self.local = LocalWindows(limit)
        self.redis_up = True
        self._retry_at = 0.0
        # Labelled, so processes without a rate limit export no series (no false "Redis down" alert).
        self._up_gauge = metrics.RATE_LIMIT_REDIS_UP.labels(prefix)
        self._up_gauge.set(1)

    async def allow(self, client_id: str) -> bool:
        if self.limit <= 0:
            return True
        window = self.window_of(time.time())
        if time.monotonic() >= self._retry_at:
            try:
                count = await self._incr(f"{self.prefix}:{client_id}:{window}")
            except (TimeoutError, RedisError, OSError) as exc:
                self._lost(exc)
            else:
                if not self.redis_up:
                    log.warning("redis answers again: rate limits shared by every replica again")
                    self.redis_up = True
                    self._up_gauge.set(1)
                return count <= self.limit
        allowed = self.local.allow(client_id, window)
        metrics.RATE_LIMIT_WITHOUT_REDIS.labels("allowed" if allowed else "refused").inc()
        return allowed

    def window_of(self, unix_s: float) -> int:
        """The number of the window `unix_s` falls in (also the last part of its Redis key)."""
        return int(unix_s // self.window_s)

    async def _incr(self, key: str) -> int:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, 2 * self.window_s)
            count, _ = await pipe.execute()
        return int(count)

    def _lost(self, exc: BaseException) -> None:
        self._retry_at = time.monotonic() + self.retry_after_s
        if self.redis_up:
            log.warning("redis unreachable: rate limits enforced per replica until it answers (fail open)",
                        extra={"error": str(exc)})
            self.redis_up = False
            self._up_gauge.set(0)

    async def close(self) -> None:
        await self.redis.aclose()
