"""Per-client request rate limits shared by every mask-api replica through Redis.

Fixed one-second windows counted with INCR (atomic across replicas); a window key expires after 2 s. Simple and
exact per window; a client can burst up to twice the limit across a window boundary, which is acceptable here.
"""

from __future__ import annotations

import time

import redis.asyncio as aioredis


class RateLimiter:
    def __init__(self, url: str, per_second: int, prefix: str = "imask:rl") -> None:
        self.redis = aioredis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self.per_second = per_second
        self.prefix = prefix

    async def allow(self, client_id: str) -> bool:
        if self.per_second <= 0:
            return True
        window = int(time.time())
        key = f"{self.prefix}:{client_id}:{window}"
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, 2)
            count, _ = await pipe.execute()
        return int(count) <= self.per_second

    async def close(self) -> None:
        await self.redis.aclose()
