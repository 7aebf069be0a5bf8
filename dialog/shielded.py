"""Database calls that a cancelled caller cannot cut in half.

Cancelling a task while aiosqlite runs one of its statements makes SQLAlchemy invalidate the
connection, and the sqlite3 connection under it stays open, holding its transaction (the write lock
included) until the garbage collector happens to finalise it: until then every other writer (the
operator's `tandem` commands among them) waits and fails with "database is locked". A visitor's
stop, a person taking a conversation over and a closing socket all cancel tasks that are writing.
So each store call runs to its end in a task of its own: the cancelled caller stops waiting for it,
the call itself finishes (`tests/dialog/test_dialog_store.py` cancels writers at random and checks
that the lock is free).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")
C = TypeVar("C", bound=type)

_running: set[asyncio.Future[Any]] = set()  # (the event loop keeps only weak references to tasks)


def shielded(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    @functools.wraps(fn)
    async def call(*args: Any, **kwargs: Any) -> T:
        task = asyncio.ensure_future(fn(*args, **kwargs))
        _running.add(task)
        task.add_done_callback(_running.discard)
        return await asyncio.shield(task)

    return call


def shield_methods(cls: C) -> C:
    """Every public coroutine method of `cls` shielded (the private ones run inside those)."""
    for name, member in list(vars(cls).items()):
        if not name.startswith("_") and inspect.iscoroutinefunction(member):
            setattr(cls, name, shielded(member))
    return cls
