"""What the lifespan owns and hands to every request: the loaded model and the gateway (which
alone holds the engine)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter

from .gateway import Gateway
from .models import LoadedModel


@dataclass
class AppState:
    model: LoadedModel
    gateway: Gateway
    registry: CollectorRegistry
    started: int  # unix time the server started
    completion_feedback: Counter  # accepted / dismissed, from clients
