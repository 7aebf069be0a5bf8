"""Waiting on conditions, never on time: the one helper every test polls through.

`eventually(check, what)` calls `check` until it returns something true and returns that; past
`timeout` it fails saying what never happened. `stays(check, what, seconds)` is the converse, for
a claim that something does *not* happen: `check` must hold at every poll for the whole window.
Both read the condition at the ticks of `_ticks`, whose interval is the one pause in the tests'
waiting (a poll interval, never a wait for something to have happened)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar, overload

T = TypeVar("T")
POLL_SECONDS = 0.02


def _ticks(seconds: float) -> Iterator[float]:
    """The seconds elapsed at each poll, the last one at or after `seconds`."""
    start = time.monotonic()
    while True:
        elapsed = time.monotonic() - start
        yield elapsed
        if elapsed >= seconds:
            return
        time.sleep(POLL_SECONDS)


async def _ticks_async(seconds: float) -> AsyncIterator[float]:
    start = time.monotonic()
    while True:
        elapsed = time.monotonic() - start
        yield elapsed
        if elapsed >= seconds:
            return
        await asyncio.sleep(POLL_SECONDS)


def eventually(check: Callable[[], T], what: str = "the condition", timeout: float = 30.0) -> T:
    for _ in _ticks(timeout):
        value = check()
        if value:
            return value
    raise AssertionError(f"{what}: not within {timeout:g} s")


@overload
async def eventually_async(check: Callable[[], Awaitable[T]], what: str = ..., timeout: float = ...) -> T: ...
@overload
async def eventually_async(check: Callable[[], T], what: str = ..., timeout: float = ...) -> T: ...
async def eventually_async(check: Callable[[], Any], what: str = "the condition", timeout: float = 30.0) -> Any:
    """The same on an event loop; `check` may return an awaitable."""
    async for _ in _ticks_async(timeout):
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
    raise AssertionError(f"{what}: not within {timeout:g} s")


def stays(check: Callable[[], object], what: str, seconds: float, fail: bool = True) -> bool:
    """That `check` holds throughout the next `seconds`, failing (or, with fail=False, returning
    False) the moment it does not."""
    for elapsed in _ticks(seconds):
        if not check():
            assert not fail, f"{what}: broken after {elapsed:.2f} s"
            return False
    return True


async def stays_async(check: Callable[[], object], what: str, seconds: float) -> None:
    """`stays` on an event loop (the loop keeps running while it watches)."""
    async for elapsed in _ticks_async(seconds):
        assert check(), f"{what}: broken after {elapsed:.2f} s"
