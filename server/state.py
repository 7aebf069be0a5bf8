"""What the lifespan owns and hands to every request: the loaded model and its engine."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from .engine import Engine
from .models import LoadedModel


@dataclass
class AppState:
    model: LoadedModel
    engine: Engine
    registry: CollectorRegistry
    started: int  # unix time the server started
