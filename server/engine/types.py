"""The shapes that cross the engine's boundary: what a client asks for and what it gets back.

This module imports nothing from the package so that every client (HTTP API, dialog, language
server) can depend on it without pulling in torch.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Priority(enum.IntEnum):
    """Lower runs first. Interactive completion is admitted ahead of chat."""

    INTERACTIVE = 0
    CHAT = 1
    BATCH = 2


DECODE_STEPS = ("transformers", "eager", "compiled")
"""How the engine decodes: through transformers' forward (the reference), through its own step on
repacked weights (eager), or with that step compiled in the background (compiled, a minute or two
of CPU at low priority; the eager step serves meanwhile)."""


@dataclass(frozen=True)
class EngineConfig:
    max_batch_size: int = 32
    max_waiting: int = 64
    prefill_token_budget: int = 4096  # prompt tokens admitted per step, so decode is not starved
    prefix_cache_tokens: int = 8192  # 0 turns the prefix cache off
    chunk_prefill_above: int = (
        256  # a prompt with more new tokens than this is prefilled in chunks between decode steps (chunked.py); 0: never
    )
    context_length: int | None = None  # default: the model's own
    decode: str = "eager"  # one of DECODE_STEPS; a model the engine's step does not support uses transformers'
    speculative: bool = True  # prompt-lookup drafts for the greedy rows that ask for them, while the batch is small (speculative.py)

    def __post_init__(self) -> None:
        if self.decode not in DECODE_STEPS:
            raise ValueError(f"decode must be one of {', '.join(DECODE_STEPS)}, got {self.decode!r}")


@dataclass(frozen=True)
class Messages:
    """A chat prompt left for the backend to render with its own template (an upstream that the
    gateway has no tokenizer for); the in-process engine takes only text or token ids."""

    turns: tuple[tuple[str, str], ...]  # (role, content)


@dataclass(frozen=True)
class LogitControls:
    """What a request asks of its next-token scores beyond temperature and top-p (OpenAI's and
    vLLM's names and meanings). The default changes nothing, and a row that has it costs nothing
    extra: only rows whose controls differ from it go through `sampling.apply_controls`."""

    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias added to its logit)
    presence_penalty: float = 0.0  # subtracted once from every token the output already holds
    frequency_penalty: float = 0.0  # subtracted per occurrence in the output
    repetition_penalty: float = 1.0  # transformers' (CTRL's): prompt and output tokens, divided if positive
    min_tokens: int = 0  # end-of-text and stop_token_ids are masked until this many tokens are out
    stop_token_ids: tuple[int, ...] = ()  # tokens that end the answer like end-of-text (not shown)

    @property
    def active(self) -> bool:
        return self != NO_CONTROLS


NO_CONTROLS = LogitControls()


@dataclass(frozen=True)
class Grammar:
    """What an answer must follow, in one of llguidance's formats: `json_schema` (a JSON schema as
    text), `regex`, `choice` (a JSON list of strings), `lark` or `gbnf`. `field` is the request's
    field it came from, which a refusal names."""

    kind: str
    text: str
    field: str = "response_format"

    def __post_init__(self) -> None:
        if self.kind not in GRAMMAR_KINDS:
            raise ValueError(f"a grammar's kind is one of {', '.join(GRAMMAR_KINDS)}, got {self.kind!r}")


GRAMMAR_KINDS = ("json_schema", "regex", "choice", "lark", "gbnf", "grammar")  # grammar: Lark or GBNF, whichever it is


@dataclass(frozen=True)
class Candidate:
    """A token and its log-probability under the model's raw scores (as vLLM reports them)."""

    token_id: int
    token: str  # the token alone as text (a partial UTF-8 character shows as U+FFFD; see `bytes`)
    bytes: bytes
    logprob: float | None  # None only for a prompt's first token, which nothing predicts


@dataclass(frozen=True)
class TokenLogprob:
    """The chosen token of one position, and the most likely alternatives there."""

    chosen: Candidate
    top: tuple[Candidate, ...] = ()


@dataclass(frozen=True)
class PromptEcho:
    """A request's prompt as the engine read it, sent before its first token (completions' `echo`):
    its text, and each of its tokens with its log-probability (when asked for)."""

    text: str
    logprobs: tuple[TokenLogprob, ...] | None = None


@dataclass(frozen=True)
class GenerationRequest:
    """One generation. `prompt` is text (tokenised by the engine) or token ids (or, for an
    upstream, `Messages`)."""

    prompt: str | list[int] | Messages
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
    # For a pool of upstreams: the text after the cursor, where the upstream fills in the middle
    # itself (no local tokenizer to build the prompt), and the key that keeps a conversation or
    # a document on one upstream (its prefix cache). The in-process engine refuses a suffix.
    suffix: str | None = None
    affinity: str | None = None
    controls: LogitControls = NO_CONTROLS
    logprobs: int | None = None  # None: none; k: each token's log-probability and its k likeliest alternatives
    echo: bool = False  # send the prompt back first (`PromptEcho`), with its logprobs when `logprobs` is set
    n: int = 1  # answers to the one prompt: rows forked from one prefill, each delta naming its `index`
    grammar: Grammar | None = None  # constrained decoding: every answer follows it (engine/grammar.py)


@dataclass(frozen=True)
class Delta:
    """A piece of streamed output. `finish_reason` is set on the last delta only."""

    text: str
    tokens: int  # tokens generated so far for this request
    finish_reason: str | None = None  # "stop" | "length"
    prompt_tokens: int = 0
    index: int = 0  # which of the request's `n` answers this belongs to
    logprobs: tuple[TokenLogprob, ...] = ()  # one per token this delta's text comes from (when asked for)
    prompt: PromptEcho | None = None  # on the first delta of index 0, when `echo` was asked for
    reasoning: str = ""  # (the gateway's) a reasoning model's thinking, told apart from `text`


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
