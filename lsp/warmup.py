"""Warming the engine's prefix cache for the text around the cursor, before a request needs it.

When the cursor settles (moved, or an edit made, and then nothing for `DELAY_SECONDS`), the
language server sends the prompt a request there would send, for one token at background
priority: the engine prefills it and keeps its KV, so the first suggestion at that spot is not a
cold prefill. Every real request cancels the warm-ups still pending; one already in the engine
is cancelled too unless it is prefilling what the real request's own prompt starts with (cancelling
that would throw away the very prefill the request is about to need, and make it start over).
A prompt warmed lately is not sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable

log = logging.getLogger("tandem.lsp")
DELAY_SECONDS = 0.25
REMEMBERED = 64

Send = Callable[[str, str | None, str], Awaitable[None]]  # (prompt, suffix or None, document uri): one warm-up request


class Warmer:
    def __init__(self, send: Send) -> None:
        self._send = send
        self._tasks: dict[str, asyncio.Task[None]] = {}  # per document: the pending or running warm-up
        self._sending: dict[asyncio.Task[None], str] = {}  # in the engine: task -> its prompt
        self._warmed: OrderedDict[str, None] = OrderedDict()
        self.sent = self.cancelled = self.skipped = self.failed = 0

    def schedule(self, uri: str, prompt: Callable[[], tuple[str, str | None] | None]) -> None:
        """Warm `prompt()` (built when the delay is over, from the document as it is then) unless
        another edit or cursor move on the document comes first."""
        old = self._tasks.pop(uri, None)
        if old is not None and not old.done():
            old.cancel()
        self._tasks[uri] = asyncio.ensure_future(self._later(uri, prompt))

    async def _later(self, uri: str, prompt: Callable[[], tuple[str, str | None] | None]) -> None:
        await asyncio.sleep(DELAY_SECONDS)  # a debounce: only a cursor at rest is worth warming
        built = prompt()
        if built is None:
            return
        text, suffix = built
        key = hashlib.sha1(f"{text}\0{suffix}".encode("utf-8", "surrogatepass")).hexdigest()
        if key in self._warmed:
            self.skipped += 1
            return
        current = asyncio.current_task()
        assert current is not None
        self._sending[current] = text
        try:
            await self._send(text, suffix, uri)
            self.sent += 1
            self._warmed[key] = None
            while len(self._warmed) > REMEMBERED:
                self._warmed.popitem(last=False)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        except Exception as exc:  # a warm-up is an optimisation; its failure is only logged
            self.failed += 1
            log.debug("warm-up failed: %s", exc)
        finally:
            self._sending.pop(current, None)

    def cancel_pending(self) -> None:
        """A real request is coming: no new warm-up may go out before it."""
        for task in list(self._tasks.values()):
            if not task.done() and task not in self._sending:
                task.cancel()

    def cancel_all(self, keeping: str | None = None) -> None:
        """A real request with prompt `keeping` goes to the engine: nothing of ours may stand
        before it, except a warm-up of that prompt's own beginning (most of it)."""
        for task in list(self._tasks.values()):
            if task.done():
                continue
            sent = self._sending.get(task)
            if sent is not None and keeping is not None and _shares_most(sent, keeping):
                continue
            task.cancel()
        self._tasks = {uri: t for uri, t in self._tasks.items() if not t.done() and not t.cancelling()}

    @property
    def in_flight(self) -> int:
        return len(self._sending)

    async def close(self) -> None:
        self.cancel_all()
        for task in list(self._sending):
            with contextlib.suppress(BaseException):
                await task


def _shares_most(warming: str, prompt: str) -> bool:
    """Whether the prompt being warmed is, for at least 3/4 of it, the start of `prompt`."""
    n = min(len(warming), len(prompt))
    same = 0
    step = 256
    while same < n and warming[same : same + step] == prompt[same : same + step]:
        same += step
    while same < n and warming[same] == prompt[same]:
        same += 1
    same = min(same, n)
    return same >= 0.75 * len(warming)
