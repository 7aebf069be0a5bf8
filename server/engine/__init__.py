"""The shared streaming engine. Clients use `Engine.stream` and the types below, nothing else."""

from .engine import Engine, EngineConfig
from .metrics import EngineMetrics
from .types import (
    Delta,
    EngineClosed,
    EngineError,
    EngineOverloaded,
    EngineStats,
    GenerationRequest,
    InvalidRequest,
    Priority,
)

__all__ = [
    "Delta",
    "Engine",
    "EngineClosed",
    "EngineConfig",
    "EngineError",
    "EngineMetrics",
    "EngineOverloaded",
    "EngineStats",
    "GenerationRequest",
    "InvalidRequest",
    "Priority",
]
