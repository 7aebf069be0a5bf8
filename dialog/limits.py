"""Sliding-window rate limits, per visitor and per IP, in memory (one process serves the site)."""

from __future__ import annotations

import math
import time
from collections import deque


class RateLimiter:
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
