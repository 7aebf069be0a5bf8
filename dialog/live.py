"""What is live across replicas, in Redis (`--redis-url`): who is answering a conversation now,
and the frames of that answer as they are made.

- **One answer at a time per conversation, fleet-wide**: a replica claims `tandem:answering:{cid}`
  (SET NX with a lease it renews at each flush) before it numbers any frame of a new turn, and
  lets it go once the answer's `done` is stored; another replica's visitor asking meanwhile gets
  `busy`, as on one box. The claim of a replica found dead (its heartbeat in the shared store
  stopped) is let go by the replica that finds it: its visitors do not wait out the lease.
- **Frames**: each flushed batch goes to the conversation's stream `tandem:frames:{cid}` (the
  frame's seq is the entry's id; bounded, expiring) and is published on `tandem:live:{cid}`. A
  socket on another replica replays the stream past what the store gave it, then tails the
  channel: the answer reaches it exactly once, in order (the pattern of LibreChat's resumable
  streams).

- **Rate limits** (dialog/limits.py): each window is a sorted set of hits, trimmed and counted in
  one script by Redis's own clock, so a visitor or an address gets the same allowance from the
  whole fleet as from one box.

If Redis goes away, each replica goes on serving its own sockets (a claim is granted, nothing is
published, each replica counts its own limits), `/healthz` and `/metrics` say so, and a ping
every second notices when it is back.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger("tandem.dialog")

STREAM_MAX = 2000  # frames kept per conversation: far more than one answer
STREAM_SECONDS = 1200  # and for this long after the last one (a resume later reads the store)

# One sliding window, atomically: forget the hits older than the window, then either refuse (the
# milliseconds until the oldest leaves it) or record this hit (-1). TIME is Redis's clock, the
# same for every replica.
WINDOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return tonumber(oldest[2]) + window - now
end
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('PEXPIRE', KEYS[1], window)
return -1
"""

# A claim let go only by its holder, atomically: a GET then a DEL could delete the claim another
# replica took between them (this one's having lapsed).
LET_GO = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class Away(Exception):
    """Redis does not answer now: the caller does without it."""


class Live:
    def __init__(self, url: str, replica: str, lease_seconds: float) -> None:
        self.redis = aioredis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self.replica, self.lease_ms = replica, int(lease_seconds * 1000)
        self.up = True
        self._checked = 0.0
        self._window = self.redis.register_script(WINDOW)  # (sent again by itself to a Redis that restarted empty)
        self._let_go = self.redis.register_script(LET_GO)
        self._hits = itertools.count()

    async def close(self) -> None:
        await self.redis.aclose()

    def _down(self, doing: str, exc: BaseException) -> None:
        if self.up:
            log.warning("dialog: Redis unreachable (%s: %s); serving this replica's own sockets until it is back", doing, exc)
        self.up = False
        self._checked = time.monotonic()

    async def check(self, at_once: bool = False) -> bool:
        """Whether Redis answers: asked again at most once a second (an operation that fails says so at once)."""
        if at_once or time.monotonic() - self._checked >= 1.0:
            self._checked = time.monotonic()
            try:
                await self.redis.ping()
                if not self.up:
                    log.info("dialog: Redis is back")
                self.up = True
            except (RedisError, OSError) as exc:
                self._down("ping", exc)
        return self.up

    async def claim(self, cid: str) -> bool:
        """This replica answers `cid` now, unless another one is (True while Redis is away)."""
        if not await self.check():
            return True
        try:
            key = f"tandem:answering:{cid}"
            if await self.redis.set(key, self.replica, nx=True, px=self.lease_ms):
                return True
            return (await self.redis.get(key)) == self.replica.encode()
        except (RedisError, OSError) as exc:
            self._down("claim", exc)
            return True

    async def release(self, cid: str, holder: str | None = None) -> None:
        """Let the claim on `cid` go if `holder` (this replica, unless named) still holds it: a
        replica found dead no longer keeps a conversation answering until its lease runs out."""
        if not self.up:
            return
        try:
            await self._let_go(keys=[f"tandem:answering:{cid}"], args=[holder or self.replica])
        except (RedisError, OSError) as exc:
            self._down("release", exc)

    async def holder(self, cid: str) -> str | None:
        """The replica answering `cid` now, if any (None while Redis is away)."""
        if not await self.check():
            return None
        try:
            holder = await self.redis.get(f"tandem:answering:{cid}")
        except (RedisError, OSError) as exc:
            self._down("read", exc)
            return None
        return None if holder is None else holder.decode() if isinstance(holder, bytes) else str(holder)

    async def answering_elsewhere(self, cid: str) -> bool:
        holder = await self.holder(cid)
        return holder is not None and holder != self.replica

    async def hit(self, key: str, limit: int, per_seconds: float) -> int | None:
        """One hit on the fleet's window `key`: None if allowed, else the seconds to wait. Raises
        `Away` while Redis does not answer."""
        if not await self.check():
            raise Away
        try:
            wait_ms = int(
                await self._window(
                    keys=[f"tandem:limit:{key}"], args=[limit, int(per_seconds * 1000), f"{self.replica}:{next(self._hits)}"]
                )
            )
        except (RedisError, OSError) as exc:
            self._down("limit", exc)
            raise Away from exc
        return None if wait_ms < 0 else max(1, math.ceil(wait_ms / 1000))

    async def publish(self, cid: str, frames: list[dict[str, Any]], answering: bool) -> None:
        """A flushed batch: onto the stream, out on the channel, and the claim renewed while `answering`."""
        if not frames or not await self.check():
            return
        stream = f"tandem:frames:{cid}"
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for frame in frames:
                    pipe.xadd(
                        stream, {"f": json.dumps(frame, ensure_ascii=False)}, id=f"{frame['seq']}-0", maxlen=STREAM_MAX, approximate=True
                    )
                pipe.expire(stream, STREAM_SECONDS)
                pipe.publish(f"tandem:live:{cid}", json.dumps(frames, ensure_ascii=False))
                if answering:
                    pipe.pexpire(f"tandem:answering:{cid}", self.lease_ms)
                await pipe.execute(raise_on_error=False)  # (an id the stream already has, after a restart: skipped, not fatal)
        except (RedisError, OSError) as exc:
            self._down("publish", exc)

    async def follow(self, cid: str, after: int) -> AsyncIterator[dict[str, Any]]:
        """The frames another replica makes for `cid` past seq `after`, in order, each once: the
        stream's, then the channel's, until that answer's `done` (or its replica's claim ends: it
        lapsed, or the replica that found that one dead let it go)."""
        last = after
        pubsub = self.redis.pubsub()
        try:
            await pubsub.subscribe(f"tandem:live:{cid}")  # first: nothing published between the read and the tail is missed
            stored: list[Any] = await self.redis.xrange(f"tandem:frames:{cid}", min=f"{after + 1}-0", max="+") or []
            for _, fields in stored:
                frame = json.loads(fields[b"f"])
                last = frame["seq"]
                yield frame
                if frame["type"] == "done":
                    return
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is None:
                    if not await self.answering_elsewhere(cid):
                        return
                    continue
                for frame in json.loads(message["data"]):
                    if frame["seq"] > last:
                        last = frame["seq"]
                        yield frame
                        if frame["type"] == "done":
                            return
        except (RedisError, OSError) as exc:
            self._down("follow", exc)
        finally:
            try:
                await pubsub.aclose()
            except (RedisError, OSError):
                pass
