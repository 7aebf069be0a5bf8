"""The waiting room in front of the running batch: bounded, ordered by priority then arrival.

A full waiting room refuses new work with a retry-after estimate instead of growing without
limit, so an overloaded server answers fast and honestly rather than slowly for everyone.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import math
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from .types import EngineOverloaded, Priority

GATHER_SECONDS = 0.005
RATE_WINDOW_SECONDS = 30.0  # finished requests this recent make the throughput behind retry-after
UNMEASURED_ANSWER_TOKENS = 64  # before anything has finished, a queued request is guessed at this many tokens


class Waiting(Protocol):
    priority: Priority
    cancelled: bool
    prompt_ids: list[int]
    max_tokens: int

    @property
    def rows(self) -> int:
        """Batch rows it takes once prefilled (n answers: n rows)."""
        ...


class Scheduler:
    def __init__(self, max_waiting: int, on_cancelled: Callable[[Any], None] = lambda item: None) -> None:
        self.max_waiting = max_waiting
        self._on_cancelled = on_cancelled  # told of each request dropped because it was cancelled while it waited
        self._heap: list[tuple[int, int, Any]] = []
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self.tokens_per_second = 0.0  # the engine's recent aggregate decode rate, for retry-after
        self._finished: collections.deque[tuple[float, int]] = collections.deque()  # (when, tokens) of recent finishes

    def __len__(self) -> int:
        return len(self._heap)

    def submit(self, item: Waiting) -> None:
        with self._cond:
            if len(self._heap) >= self.max_waiting:
                raise EngineOverloaded(self._retry_after())
            heapq.heappush(self._heap, (int(item.priority), next(self._order), item))
            self._cond.notify()

    def withdraw(self, item: Waiting) -> bool:
        """Take a cancelled request out of the waiting room now, rather than when a batch slot
        frees: it must not hold a place (or count as waiting) while the batch is full. False if it
        is no longer waiting (the worker took it; its own cancel path finishes it)."""
        with self._cond:
            for i, entry in enumerate(self._heap):
                if entry[2] is item:
                    self._heap[i] = self._heap[-1]
                    self._heap.pop()
                    heapq.heapify(self._heap)
                    break
            else:
                return False
            self._cond.notify()
        self._on_cancelled(item)
        return True

    def wake(self) -> None:
        with self._cond:
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def take(self, slots: int, token_budget: int, block: bool) -> list[Any]:
        """Pop live requests of the most urgent priority that take up to `slots` batch rows and
        whose prompts fit `token_budget` (at least one prompt). With `block`, wait until there is
        something to do or the scheduler is closed."""
        with self._cond:
            if block and not self._heap and not self._closed:
                while not self._heap and not self._closed:
                    self._cond.wait()
                # Woken from idle by the first arrival of what is often a burst (a page of chat
                # widgets, several completions): gather the burst for a moment so that it is
                # prefilled in one pass rather than one request per pass.
                deadline = time.monotonic() + GATHER_SECONDS
                while not self._closed and (left := deadline - time.monotonic()) > 0:
                    self._cond.wait(left)
            taken: list[Any] = []
            spent = rows = 0
            while self._heap:
                item = self._heap[0][2]
                if item.cancelled:
                    heapq.heappop(self._heap)
                    self._on_cancelled(item)
                    continue
                if rows + item.rows > slots:
                    break
                if taken and spent + len(item.prompt_ids) > token_budget:
                    break
                if taken and item.priority != taken[0].priority:
                    break  # one prefill per priority: a completion's prefill is never padded out to chat prompts
                heapq.heappop(self._heap)
                taken.append(item)
                spent += len(item.prompt_ids)
                rows += item.rows
            return taken

    def ahead(self) -> tuple[Priority | None, int]:
        """The priority `take` would serve next (None: nothing waits) and the prompt tokens
        waiting at it."""
        with self._cond:
            live = [entry[2] for entry in self._heap if not entry[2].cancelled]
        if not live:
            return None, 0
        first = min(item.priority for item in live)
        return first, sum(len(item.prompt_ids) for item in live if item.priority == first)

    def drain(self) -> list[Any]:
        with self._cond:
            items = [entry[2] for entry in self._heap]
            self._heap.clear()
            return items

    def note_finished(self, generated: int) -> None:
        """A request left the engine having generated `generated` tokens: the measured throughput
        behind retry-after (the requests a waiting room drains in, not the worst case of max_tokens)."""
        now = time.monotonic()
        with self._cond:
            self._finished.append((now, generated))
            while self._finished and now - self._finished[0][0] > RATE_WINDOW_SECONDS:
                self._finished.popleft()

    def _retry_after(self) -> int:
        """Seconds until a place in the waiting room is likely free: the queue ahead divided by the
        rate requests have been finishing at lately (or, before any finished, the queue's expected
        tokens over the decode rate)."""
        now = time.monotonic()
        recent = [(t, n) for t, n in self._finished if now - t <= RATE_WINDOW_SECONDS]
        if len(recent) >= 2:
            span = max(now - recent[0][0], 1.0)
            per_second = len(recent) / span
            return max(1, min(60, math.ceil(len(self._heap) / per_second)))
        expected = sum(min(entry[2].max_tokens, UNMEASURED_ANSWER_TOKENS) for entry in self._heap)
        return max(1, min(60, math.ceil(expected / max(self.tokens_per_second, 1.0))))
