"""The engine interface the gateway talks to, whatever generates behind it.

A `Backend` is the in-process engine on a local model (`local.py`) or a pool of OpenAI-compatible
upstreams (`upstream/`). The gateway needs three things of it: `stream(request)`, the model's
facts (`ModelInfo`: name, window, fill-in-the-middle, chat), and a way to turn a conversation or a
cursor position into the backend's prompt and count its tokens (`PromptText`). Nothing here
imports torch, so commands and tests that never generate can use these types.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from ..chat_window import Choice, Message
from ..engine.types import Delta, EngineClosed, EngineError, GenerationRequest, Messages

TOKEN_COUNTS = ("tokenizer", "upstream", "estimate")
"""How a backend counts tokens: the model's own tokenizer (exact), the upstream's tokenize
endpoint (exact for the text, the chat template's wrapping estimated), or an estimate from the
text's length (stated in /v1/models, so a client knows the gateway's budgets are approximate)."""


class BackendFailed(EngineError):
    """The backend could not finish a generation (an upstream failed, and no other could take it
    over). `after_output`: part of the answer had already gone out, so it was not retried."""

    def __init__(self, message: str, after_output: bool = False) -> None:
        super().__init__(message)
        self.after_output = after_output


class BackendUnavailable(EngineClosed):
    """Nothing can generate now (no upstream answers); `retry_after` is when to try again."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class ModelInfo:
    """What clients are told of the model (/v1/models) and what the audit record names."""

    name: str  # the id clients use in "model"
    quant: str  # weight precision, or "upstream" where the pool cannot know it
    context_length: int  # the window the gateway enforces
    native_context_length: int  # the model's own (equal where it is not known separately)
    fim: bool  # fill-in-the-middle (`suffix`) is served
    chat: bool  # /v1/chat/completions is served (the model has a chat template)
    footprint_bytes: int | None  # weights in this process's memory; None for upstreams
    backend: str  # "local" | "upstream"
    token_count: str = "tokenizer"  # one of TOKEN_COUNTS
    tools: str | None = None  # the format of tool calls served (PromptText.tools), None: tools are refused


@dataclass(frozen=True)
class Rendered:
    """A prompt as the backend takes it, and its length in tokens as `PromptText` counts them."""

    prompt: str | list[int] | Messages
    tokens: int
    suffix: str | None = None  # an upstream that fills in the middle itself gets the suffix apart


class PromptText(Protocol):
    """How prompts become the backend's input, and how long they are."""

    @property
    def chat_template(self) -> bool: ...

    @property
    def reasoning(self) -> bool | None:
        """Whether the model writes a `<think>` section before its answer: None for a model that does
        not; True where its chat template opens the section in the prompt; False where it opens it itself."""
        ...

    @property
    def tools(self) -> str | None:
        """The format of tool calls the chat template teaches and the gateway reads back
        (`tool_calls.HERMES`), or None where tools are not served (a template without them)."""
        ...

    @property
    def fim(self) -> bool: ...

    @property
    def special_tokens(self) -> list[str]:
        """The model's control tokens, which the guard keeps out of callers' text."""
        ...

    def choose(self, messages: tuple[Message, ...], budget: int) -> Choice:
        """The messages to send so the prompt fits `budget` tokens (oldest turns dropped first)."""
        ...

    def render_chat(self, messages: Sequence[Message]) -> Rendered: ...

    def render_fim(self, prefix: str, suffix: str) -> Rendered: ...

    def decode(self, ids: list[int]) -> str:
        """Token ids as text, for the guard; raises ValueError when they cannot be read."""
        ...

    def encode(self, text: str | Sequence[Message], special: bool) -> list[int]:
        """Text as the model's token ids (with its BOS and the like, when `special`), or messages
        as the chat template renders them for an answer; raises ValueError where the tokenizer is
        not here."""
        ...


class Backend(Protocol):
    """The engine interface: what the gateway generates through."""

    @property
    def info(self) -> ModelInfo: ...

    @property
    def text(self) -> PromptText: ...

    def stream(self, req: GenerationRequest) -> AsyncIterator[Delta]:
        """Generate; closing the iterator cancels the request (and frees its slot, wherever it runs).
        Raises the engine's errors (`server.engine.types`), before or during the stream."""
        ...

    @property
    def alive(self) -> bool: ...

    @property
    def load(self) -> tuple[int, int]:
        """(running, waiting) requests."""
        ...

    async def close(self) -> None: ...
