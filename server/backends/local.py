"""The in-process engine on a model loaded here: the embedded default, and the single-box setup."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from ..engine.types import Delta, GenerationRequest
from ..models import LoadedModel
from .protocol import ModelInfo
from .tokenizer_text import TokenizerText

if TYPE_CHECKING:  # (the engine's class brings torch)
    from ..engine import Engine


class LocalBackend:
    """`engine` is the in-process `Engine` (or anything with its interface: the protocol tests'
    scripted engine)."""

    def __init__(self, model: LoadedModel, engine: Engine | Any, registry: CollectorRegistry | None = None) -> None:
        self.model, self.engine = model, engine
        self.registry = registry  # the engine's own metrics, shown on /metrics while it serves
        self._text = TokenizerText(model.tokenizer, model.fim_tokens, as_ids=True)
        self._info = ModelInfo(
            name=model.name,
            quant=model.quant,
            context_length=int(engine.context_length),
            native_context_length=model.context_length,
            fim=model.fim_tokens is not None,
            chat=self._text.chat_template,
            footprint_bytes=model.footprint_bytes,
            backend="local",
            tools=self._text.tools,
        )

    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def text(self) -> TokenizerText:
        return self._text

    def stream(self, req: GenerationRequest) -> AsyncIterator[Delta]:
        return self.engine.stream(req)  # type: ignore[no-any-return]

    @property
    def alive(self) -> bool:
        return bool(self.engine.alive)

    @property
    def load(self) -> tuple[int, int]:
        return int(self.engine.running), int(self.engine.waiting)

    async def close(self) -> None:
        await asyncio.to_thread(self.engine.close)  # joins the worker thread: off the event loop
