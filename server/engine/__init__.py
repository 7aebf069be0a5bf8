"""The shared streaming engine. Clients use `Engine.stream` and the types below, nothing else.

`Engine` and `EngineMetrics` are imported on first use (PEP 562), so that commands which only
need the types (`tandem audit`, `tandem guard`) start without loading torch."""

from typing import TYPE_CHECKING, Any

from .types import (
    DECODE_STEPS,
    Candidate,
    ContextOverflow,
    Delta,
    EngineClosed,
    EngineConfig,
    EngineError,
    EngineOverloaded,
    GenerationRequest,
    Grammar,
    InvalidRequest,
    LogitControls,
    Messages,
    Priority,
    PromptEcho,
    TokenLogprob,
)

if TYPE_CHECKING:
    from .engine import Engine
    from .metrics import EngineMetrics


def __getattr__(name: str) -> Any:
    if name == "Engine":
        from .engine import Engine

        return Engine
    if name == "EngineMetrics":
        from .metrics import EngineMetrics

        return EngineMetrics
    raise AttributeError(name)


__all__ = [
    "DECODE_STEPS",
    "Candidate",
    "ContextOverflow",
    "Delta",
    "Engine",
    "EngineClosed",
    "EngineConfig",
    "EngineError",
    "EngineMetrics",
    "EngineOverloaded",
    "GenerationRequest",
    "Grammar",
    "InvalidRequest",
    "LogitControls",
    "Messages",
    "Priority",
    "PromptEcho",
    "TokenLogprob",
]
