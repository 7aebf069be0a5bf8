"""Which backend serves which surface, and replacing one without a pause.

A deployment may send the IDE's completions to one backend (a code model on a GPU pool) and the
support chat to another (the model here); by default one backend serves both. A swap (a new
local model, a new list of upstreams) takes effect for calls that start after it; calls already
running finish on the backend they started on, which is closed once the last of them ends. The
gateway holds a backend for exactly the length of a call (`hold`), so nothing is cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from .backends import Backend, ModelInfo

SURFACES = ("ide_completion", "support_chat")
ROLES = {"completion": "ide_completion", "chat": "support_chat"}  # how an operator names a surface (`--upstream chat=URL`)
log = logging.getLogger("tandem.routing")


class _Held:
    """A backend and the calls running on it."""

    def __init__(self, backend: Backend) -> None:
        self.backend, self.calls = backend, 0
        self.idle = asyncio.Event()
        self.idle.set()


@dataclass(frozen=True)
class Draining:
    model: str
    calls: int


class Routing:
    def __init__(self, backends: dict[str, Backend]) -> None:
        if set(backends) != set(SURFACES):
            raise ValueError(f"a backend for each of {', '.join(SURFACES)}")
        held: dict[int, _Held] = {}
        self._current = {s: held.setdefault(id(b), _Held(b)) for s, b in backends.items()}
        self._draining: list[_Held] = []
        self._closers: set[asyncio.Task[None]] = set()

    def backend(self, surface: str) -> Backend:
        return self._current[surface].backend

    def backends(self) -> list[Backend]:
        """Every backend serving now, each once."""
        return list({id(h.backend): h.backend for h in self._current.values()}.values())

    def served(self) -> list[ModelInfo]:
        return [b.info for b in self.backends()]

    def surfaces_of(self, backend: Backend) -> list[str]:
        return [s for s, h in self._current.items() if h.backend is backend]

    @contextlib.contextmanager
    def hold(self, surface: str) -> Iterator[Backend]:
        """The surface's backend, kept from being closed until the call is over."""
        held = self._current[surface]
        held.calls += 1
        held.idle.clear()
        try:
            yield held.backend
        finally:
            held.calls -= 1
            if held.calls == 0:
                held.idle.set()

    def swap(self, backend: Backend, surfaces: Iterable[str] = SURFACES) -> list[Draining]:
        """Serve `surfaces` from `backend` from now on; the backends they leave are closed (in the
        background) once their running calls end. Returns what is draining."""
        surfaces = list(surfaces)
        unknown = set(surfaces) - set(SURFACES)
        if unknown:
            raise ValueError(f"unknown surface {sorted(unknown)[0]!r}")
        fresh = next((h for h in self._current.values() if h.backend is backend), None) or _Held(backend)
        left = {id(self._current[s]): self._current[s] for s in surfaces}
        for surface in surfaces:
            self._current[surface] = fresh
        still = {id(h) for h in self._current.values()}
        for held in left.values():
            if id(held) not in still and held is not fresh:
                self._draining.append(held)
                task = asyncio.get_running_loop().create_task(self._retire(held))
                self._closers.add(task)
                task.add_done_callback(self._closers.discard)
        return self.draining()

    def draining(self) -> list[Draining]:
        return [Draining(h.backend.info.name, h.calls) for h in self._draining]

    async def _retire(self, held: _Held) -> None:
        await held.idle.wait()
        try:
            await held.backend.close()
            log.info("%s closed: its last call ended", held.backend.info.name)
        except Exception:
            log.exception("closing %s failed", held.backend.info.name)
        finally:
            self._draining.remove(held)

    async def settled(self) -> None:
        """Until every replaced backend has drained and closed (tests, shutdown)."""
        while self._closers:
            await asyncio.gather(*list(self._closers), return_exceptions=True)

    async def close(self) -> None:
        await self.settled()
        for backend in self.backends():
            await backend.close()
