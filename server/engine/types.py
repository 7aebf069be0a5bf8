"""The shapes that cross the engine's boundary: what a client asks for and what it gets back.

This module imports nothing from the package so that every client (HTTP API, dialog, language
server) can depend on it without pulling in torch.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Priority(enum.IntEnum):
    """Lower runs first. Interactive completion is admitted ahead of chat."""

    INTERACTIVE = 0
    CHAT = 1
    BATCH = 2


@dataclass(frozen=True)
class EngineConfig:
    max_batch_size: int = 32
    max_waiting: int = 64
    prefill_token_budget: int = 4096  # prompt tokens admitted per step, so decode is not starved
    prefix_cache_tokens: int = 8192  # 0 turns the prefix cache off
    context_length: int | None = None  # default: the model's own
    preallocate_kv: bool = True  # False: transformers' concatenating cache (for benchmarks)
    fast_decode: bool = True  # decode steps of a Llama-family model skip transformers' forward
    pack_weights: bool = True  # repack the model's fp32 CPU Linear weights for MKL, in place (see packed.py)
    fuse_projections: bool = True  # with pack_weights: a layer's q/k/v, and its gate/up, as one packed matrix each
    compile_decode: bool = False  # compile the one-row decode step in the background (a minute or two of CPU)
    speculative: bool = True  # prompt-lookup drafts for the greedy rows that ask for them, while the batch is small (speculative.py)


@dataclass(frozen=True)
class GenerationRequest:
    """One generation. `prompt` is text (tokenised by the engine) or token ids."""

    prompt: str | list[int]
    max_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    priority: Priority = Priority.CHAT
    request_id: str = ""
    # Prompt-lookup speculation (greedy rows only; the same tokens either way). None: on for
    # INTERACTIVE (completion copies from its window), off otherwise.
    speculative: bool | None = None


@dataclass(frozen=True)
class Delta:
    """A piece of streamed output. `finish_reason` is set on the last delta only."""

    text: str
    tokens: int  # tokens generated so far for this request
    finish_reason: str | None = None  # "stop" | "length"
    prompt_tokens: int = 0


@dataclass
class EngineStats:
    """The engine's own record of what it did, for tests and /metrics (read-only for clients)."""

    steps: int = 0
    peak_batch_size: int = 0
    steps_by_batch_size: dict[int, int] = field(default_factory=dict)
    requests_finished: int = 0
    requests_cancelled: int = 0
    prefix_cache_hits: int = 0
    prefix_cache_tokens_reused: int = 0
    speculative_steps: int = 0  # decode steps that verified drafts
    drafted_tokens: int = 0
    accepted_tokens: int = 0  # drafts the model agreed with (each one a token without a step of its own)


class EngineError(Exception):
    """Base class of the errors the engine raises to its callers."""


class InvalidRequest(EngineError):
    """The request cannot be served as asked (too long for the context, bad parameters)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ContextOverflow(InvalidRequest):
    """The prompt, or the prompt with `max_tokens`, does not fit the model's context window."""


class EngineOverloaded(EngineError):
    """The waiting queue is full; the caller should retry after `retry_after` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"engine overloaded, retry after {retry_after} s")
        self.retry_after = retry_after


class EngineClosed(EngineError):
    """The engine is shutting down or its worker has failed."""
