"""What the lifespan owns and hands to every request: the gateway (which alone holds the engine,
and says what model it serves)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter

from .gateway import Gateway

if TYPE_CHECKING:
    from .backends.upstream import UpstreamPool


@dataclass
class AppState:
    gateway: Gateway
    registry: CollectorRegistry
    started: int  # unix time the server started
    completion_feedback: Counter  # accepted / dismissed, from clients
    upstreams: UpstreamPool | None = None  # the pool, when the gateway generates through upstreams (for /healthz)
