"""Sliding-window rate limits, per visitor and per IP: in this process, or across the fleet in Redis."""

from __future__ import annotations

import math
import time
from collections import deque

from .live import Away, Live


class RateLimiter:
    """In memory: what one process has seen."""

    def __init__(self, limit: int, per_seconds: float) -> None:
        self.limit, self.window = limit, per_seconds
        self._hits: dict[str, deque[float]] = {}

    def check(self, key: str, now: float | None = None) -> int | None:
        """Record a hit; None if allowed, else the seconds to wait."""
        now = time.monotonic() if now is None else now
        hits = self._hits.setdefault(key, deque())
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        if len(hits) >= self.limit:
            return max(1, math.ceil(hits[0] + self.window - now))
        hits.append(now)
        if len(self._hits) > 100_000:  # forget idle keys rather than grow without bound
            for k in [k for k, v in self._hits.items() if not v or v[-1] <= now - self.window]:
                del self._hits[k]
        return None


class Limit:
    """`limit` hits per `per_seconds` for each key of one kind (`name`). With Redis the window is
    the fleet's, so a visitor moving between replicas gets one allowance, not one per replica;
    without it, or while it is away, each process counts its own."""

    def __init__(self, name: str, limit: int, per_seconds: float, live: Live | None = None) -> None:
        self.name, self.live = name, live
        self.local = RateLimiter(limit, per_seconds)

    async def check(self, key: str) -> int | None:
        """Record a hit; None if allowed, else the seconds to wait."""
        if self.live is not None:
            try:
                return await self.live.hit(f"{self.name}:{key}", self.local.limit, self.local.window)
            except Away:
                pass
        return self.local.check(key)
