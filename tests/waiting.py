"""Waiting on conditions, never on time: the one helper every test polls through.

`eventually(check, what)` calls `check` until it returns something true and returns that; past
`timeout` it fails saying what never happened. The pause between polls is only the poll interval
of a condition, never a wait for something to have happened."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")
POLL_SECONDS = 0.02


def eventually(check: Callable[[], T], what: str = "the condition", timeout: float = 30.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g} s"
        time.sleep(POLL_SECONDS)


async def eventually_async(check: Callable[[], T | Awaitable[T]], what: str = "the condition", timeout: float = 30.0) -> T:
    """The same on an event loop; `check` may return an awaitable."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g} s"
        await asyncio.sleep(POLL_SECONDS)


def stays(check: Callable[[], object], what: str, seconds: float, fail: bool = True) -> bool:
    """That `check` holds throughout the next `seconds` (a claim that something does *not* happen
    needs a window to watch): polled the whole time, failing (or, with fail=False, returning False)
    the moment it does not."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not check():
            assert not fail, f"{what}: broken after {seconds - (deadline - time.monotonic()):.2f} s"
            return False
        time.sleep(POLL_SECONDS)
    return True


async def stays_async(check: Callable[[], object], what: str, seconds: float) -> None:
    """`stays` on an event loop (the loop keeps running while it watches)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert check(), f"{what}: broken after {seconds - (deadline - time.monotonic()):.2f} s"
        await asyncio.sleep(POLL_SECONDS)
