"""Generations in flight or finished, per document: each one serves every keystroke it can.

A generation starts from a document state (the text before and after the cursor) and streams the
model's raw output into `text` in the background, whatever happens to the request that started
it. A later request whose prefix is that state plus characters the generation wrote (the user
typing through the suggestion, or accepting it) is answered from the rest of `text`, at once or as
soon as enough of it has arrived, without a new engine call: the next line is often written
before it is asked for. A request the generation cannot answer cancels it; so does closing the
document, and a generation nobody has asked about for `LINGER_SECONDS` after its last request was
cancelled. A generation cut short (cancelled, or the engine failing) keeps its whole lines, but
is never an empty answer: a request that finds nothing usable in it starts a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

LINGER_SECONDS = 0.75  # a generation whose request was cancelled waits this long for the next keystroke to want it
KEPT_PER_DOCUMENT = 8


@dataclass(eq=False)
class Generation:
    uri: str
    prefix: str  # the document before the cursor when the generation started
    suffix: str  # the document after the cursor then
    request_id: str = ""
    text: str = ""  # the model's raw output so far
    done: bool = False
    cut: bool = False  # ended before the model did (cancelled or failed): its last line may be partial
    error: BaseException | None = None
    started: float = field(default_factory=time.monotonic)
    waiting: int = 0  # requests waiting on it now
    stopped_early: bool = False  # ended because the block was complete, not by the model
    abandoned: bool = False  # its last request was cancelled before an answer; nobody has wanted it since
    last_wanted: float = field(default_factory=time.monotonic)
    task: asyncio.Task[None] | None = None
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    def rest_after(self, prefix: str, suffix: str) -> str | None:
        """The raw output from the document state (prefix, suffix) on, if this generation leads
        there (same text after the cursor; the text before it is the starting state plus a
        beginning of the output); None otherwise. Typed text the output has not reached yet leads
        there too while the generation runs ("" until it catches up)."""
        if suffix != self.suffix or not prefix.startswith(self.prefix):
            return None
        typed = prefix[len(self.prefix) :]
        if self.text.startswith(typed):
            return self.text[len(typed) :]
        if not self.done and typed.startswith(self.text):
            return ""  # ahead of the output so far: it may still write what was typed
        return None

    async def wait(self, ready: Callable[[], bool], timeout: float) -> bool:
        """Until `ready()` or the generation ends or `timeout` passes; True unless it timed out."""
        self.waiting += 1
        self.last_wanted = time.monotonic()
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(lambda: self.done or ready())
            return True
        except TimeoutError:
            return False
        finally:
            self.waiting -= 1
            self.last_wanted = time.monotonic()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def run(self, pieces: AsyncIterator[tuple[str, str]], complete: Callable[[str], bool]) -> None:
        """Consume the engine's stream; stop early once `complete(text)` says the block has ended."""
        try:
            async for request_id, piece in pieces:
                self.request_id = request_id
                self.text += piece
                await self._notify()
                if complete(self.text):
                    self.stopped_early = True
                    break  # leaving the stream cancels the rest of the generation in the engine
        except asyncio.CancelledError:
            self.cut = True
            raise
        except Exception as exc:  # the engine failed: what arrived stays, cut
            self.cut, self.error = True, exc
        finally:
            aclose = getattr(pieces, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()  # closes the HTTP stream now, not when the garbage collector finds it
            self.done = True
            # wake the waiters without awaiting (a cancelled task may not await the lock again)
            asyncio.get_running_loop().create_task(self._notify())

    def cancel(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()


class Generations:
    """The recent generations of each open document, newest last."""

    def __init__(self) -> None:
        self._by_uri: dict[str, list[Generation]] = {}
        self.hits = self.misses = 0

    def find(self, uri: str, prefix: str, suffix: str) -> tuple[Generation, str] | None:
        """The newest generation that leads to this state, with its output from here on."""
        for gen in reversed(self._by_uri.get(uri, [])):
            rest = gen.rest_after(prefix, suffix)
            if rest is not None and gen.error is None:
                gen.abandoned = False
                return gen, rest
        return None

    def running(self) -> int:
        return sum(not g.done for gens in self._by_uri.values() for g in gens)

    def live(self, uri: str) -> list[Generation]:
        return [g for g in self._by_uri.get(uri, []) if not g.done]

    def add(self, gen: Generation) -> None:
        kept = self._by_uri.setdefault(gen.uri, [])
        kept.append(gen)
        del kept[:-KEPT_PER_DOCUMENT]

    def cancel_live(self, uri: str, keep: Generation | None = None) -> int:
        """Cancel the document's running generations (except `keep`); how many were cancelled."""
        cancelled = 0
        for gen in self.live(uri):
            if gen is not keep:
                gen.cancel()
                cancelled += 1
        return cancelled

    def cancel_everywhere(self) -> int:
        """Cancel every document's running generations (completions were switched off)."""
        return sum(self.cancel_live(uri) for uri in list(self._by_uri))

    def forget(self, uri: str) -> None:
        for gen in self._by_uri.pop(uri, []):
            gen.cancel()

    def unwanted(self, now: float) -> list[Generation]:
        """Running generations nobody waits on whose last request was cancelled a while ago."""
        return [
            g
            for gens in self._by_uri.values()
            for g in gens
            if not g.done and g.waiting == 0 and g.abandoned and now - g.last_wanted > LINGER_SECONDS
        ]
