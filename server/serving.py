"""A replica that stops without losing anything: `tandem serve` under uvicorn, draining on SIGTERM.

uvicorn on its own stops at SIGTERM by closing every socket at once (WebSockets with 1012) and
cancelling what runs after a few seconds: a support answer half streamed is cut. Here the first
SIGTERM starts a drain instead: `/healthz` answers 503 `draining` (the load balancer stops sending
new visitors), a new chat socket is closed with 1012 (the widget reconnects, through the balancer,
to another replica), and the answers and calls already running finish; once none is left, or
`drain_seconds` have passed, the server stops as uvicorn would. A second SIGTERM or a SIGINT
stops it at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable
from types import FrameType

import uvicorn

log = logging.getLogger("tandem.serve")


class Drain:
    """Whether this replica is draining, and whether work it must finish is still running."""

    def __init__(self) -> None:
        self.draining = False
        self._busy: list[Callable[[], bool]] = []
        self._on_begin: list[Callable[[], None]] = []

    def watch(self, busy: Callable[[], bool], on_begin: Callable[[], None] | None = None) -> None:
        """`busy()` says whether something still runs that the drain waits for; `on_begin` hears the drain start."""
        self._busy.append(busy)
        if on_begin is not None:
            self._on_begin.append(on_begin)

    def begin(self) -> None:
        if not self.draining:
            self.draining = True
            for hear in self._on_begin:
                hear()

    @property
    def busy(self) -> bool:
        return any(busy() for busy in self._busy)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, drain: Drain, drain_seconds: float) -> None:
        super().__init__(config)
        self.drain, self.drain_seconds = drain, drain_seconds
        self._task: asyncio.Task[None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig != signal.SIGTERM or self.drain.draining or self.drain_seconds <= 0:
            super().handle_exit(sig, frame)
            return
        log.info("SIGTERM: draining (new chat sockets go to the other replicas; running answers finish, up to %g s)", self.drain_seconds)
        self.drain.begin()
        self._task = asyncio.get_running_loop().create_task(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        deadline = time.monotonic() + self.drain_seconds
        while self.drain.busy and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if self.drain.busy:
            log.warning("drain: %g s passed with work still running; stopping anyway", self.drain_seconds)
        else:
            log.info("drain: nothing left running; stopping")
        self.should_exit = True
