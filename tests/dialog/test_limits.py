"""Rate limits: one window per visitor or address for the whole fleet when the replicas share a
Redis (hits on two replicas count together, by Redis's clock), each process's own while Redis is
away or not configured, and a Redis that restarts empty goes on counting."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Coroutine
from typing import Any

from dialog.limits import Limit, RateLimiter
from dialog.live import Live
from scripts.services import Redis, free_port
from tests.waiting import eventually_async

_KEYS = itertools.count()


def replicas(url: str, n: int = 2) -> list[Live]:
    return [Live(url, f"rep_{i}", lease_seconds=15) for i in range(n)]


def run(work: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    return asyncio.run(work())


def test_a_window_shared_through_redis_allows_the_limit_across_replicas_not_per_replica(redis: Redis) -> None:
    async def go() -> None:
        lives = replicas(redis.url, 3)
        limits = [Limit("visitor", 5, 60, live) for live in lives]
        key, other = f"v{next(_KEYS)}", f"v{next(_KEYS)}"
        answers = [await limits[i % 3].check(key) for i in range(9)]  # round-robin over the replicas
        assert answers[:5] == [None] * 5
        assert all(isinstance(w, int) and 1 <= w <= 60 for w in answers[5:]), answers
        assert await limits[1].check(other) is None  # another visitor has a window of its own
        racing = await asyncio.gather(*(limits[i % 3].check(f"race{key}") for i in range(40)))  # all at once
        assert racing.count(None) == 5
        for live in lives:
            assert live.up
            await live.close()

    run(go)


def test_the_window_slides_and_says_how_long_to_wait(redis: Redis) -> None:
    async def go() -> None:
        live = replicas(redis.url, 1)[0]
        limit, key = Limit("ip", 2, 1.0, live), f"ip{next(_KEYS)}"
        assert [await limit.check(key), await limit.check(key)] == [None, None]
        assert await limit.check(key) == 1  # (rounded up to whole seconds, as Retry-After is)

        async def allowed() -> bool:
            return await limit.check(key) is None

        await eventually_async(allowed, "the oldest hit leaving the window", timeout=10)
        await live.close()

    run(go)


def test_without_redis_each_replica_counts_its_own_and_shares_again_when_it_is_back() -> None:
    server = Redis(free_port())

    async def go() -> None:
        one, two = replicas(server.url)
        limits = [Limit("connect", 3, 60, live) for live in (one, two)]
        key = f"c{next(_KEYS)}"
        answers = [await limits[0].check(key) for _ in range(4)]  # no Redis yet: counted here
        assert answers[:3] == [None] * 3 and isinstance(answers[3], int) and 50 <= answers[3] <= 60, answers
        assert not one.up
        server.start()
        for restarted in (False, True):  # Redis up, then back empty with its scripts forgotten (the script is sent again)
            if restarted:
                server.stop()
                server.start()
            await eventually_async(lambda: seeing_redis(one, two), "both replicas seeing Redis")
            key = f"c{next(_KEYS)}"
            answers = [await limits[i % 2].check(key) for i in range(4)]  # alternating replicas: one count
            assert answers[:3] == [None] * 3 and answers[3] is not None, answers
        await one.close()
        await two.close()

    try:
        run(go)
    finally:
        server.__exit__()


async def seeing_redis(*lives: Live) -> bool:
    return all([await live.check(at_once=True) for live in lives])


def test_the_in_memory_window() -> None:
    limiter = RateLimiter(2, 10)
    assert [limiter.check("a", now=0), limiter.check("a", now=1), limiter.check("a", now=2)] == [None, None, 8]
    assert limiter.check("a", now=10.5) is None  # the first hit left the window
