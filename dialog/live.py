"""What is live across replicas, in Redis (`--redis-url`): who is answering a conversation now,
and the frames of that answer as they are made.

- **One answer at a time per conversation, fleet-wide**: a replica claims `tandem:answering:{cid}`
  (SET NX with a lease it renews at each flush) before it numbers any frame of a new turn, and
  lets it go once the answer's `done` is stored; another replica's visitor asking meanwhile gets
  `busy`, as on one box.
- **Frames**: each flushed batch goes to the conversation's stream `tandem:frames:{cid}` (the
  frame's seq is the entry's id; bounded, expiring) and is published on `tandem:live:{cid}`. A
  socket on another replica replays the stream past what the store gave it, then tails the
  channel: the answer reaches it exactly once, in order (the pattern of LibreChat's resumable
  streams).

If Redis goes away, each replica goes on serving its own sockets (a claim is granted, nothing is
published), `/healthz` and `/metrics` say so, and a ping every second notices when it is back.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger("tandem.dialog")

STREAM_MAX = 2000  # frames kept per conversation: far more than one answer
STREAM_SECONDS = 1200  # and for this long after the last one (a resume later reads the store)


class Live:
    def __init__(self, url: str, replica: str, lease_seconds: float) -> None:
        self.redis = aioredis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self.replica, self.lease_ms = replica, int(lease_seconds * 1000)
        self.up = True
        self._checked = 0.0

    async def close(self) -> None:
        await self.redis.aclose()

    def _down(self, doing: str, exc: BaseException) -> None:
        if self.up:
            log.warning("dialog: Redis unreachable (%s: %s); serving this replica's own sockets until it is back", doing, exc)
        self.up = False
        self._checked = time.monotonic()

    async def check(self) -> bool:
        """Whether Redis answers: asked again at most once a second (an operation that fails says so at once)."""
        if time.monotonic() - self._checked >= 1.0:
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

    async def release(self, cid: str) -> None:
        if not self.up:
            return
        try:
            key = f"tandem:answering:{cid}"
            if (await self.redis.get(key)) == self.replica.encode():
                await self.redis.delete(key)
        except (RedisError, OSError) as exc:
            self._down("release", exc)

    async def answering_elsewhere(self, cid: str) -> bool:
        if not await self.check():
            return False
        try:
            holder = await self.redis.get(f"tandem:answering:{cid}")
        except (RedisError, OSError) as exc:
            self._down("read", exc)
            return False
        return holder is not None and holder != self.replica.encode()

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
        stream's, then the channel's, until that answer's `done` (or its replica's claim lapses)."""
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
