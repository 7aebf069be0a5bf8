"""What the lifespan owns and hands to every request: the gateway (which alone holds the engine,
and says what model it serves)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter

from .backends import Backend
from .backends.spec import BackendSpec
from .gateway import Gateway


@dataclass
class AppState:
    gateway: Gateway
    registry: CollectorRegistry
    started: int  # unix time the server started
    completion_feedback: Counter  # accepted / dismissed, from clients
    open_backend: Callable[[BackendSpec], Awaitable[Backend]]  # for a hot swap: loads a model or opens a pool
    swapping: asyncio.Lock = field(default_factory=asyncio.Lock)  # one swap at a time
