"""Why a call failed: one family of errors with stable codes, the gateway's only vocabulary of failure.

The gateway raises `CallFailed` (or one of its two guard subclasses) for everything that can go
wrong with a call, the engine's own errors included, so a surface knows one type and one set of
codes. What a code means on the wire (an HTTP status, a dialog frame) each surface says once, in
its own table: `server/errors.py` for HTTP, `dialog/errors.py` for the chat. Nothing here knows a
transport.
"""

from __future__ import annotations

from enum import StrEnum


class Code(StrEnum):
    CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"  # the prompt (with max_tokens) does not fit the model's window
    INVALID_VALUE = "invalid_value"  # a parameter or prompt the engine cannot serve as asked
    TOOLS_NOT_SUPPORTED = "tools_not_supported"  # tools offered to a model whose chat template has none
    INPUT_TOO_LARGE = "input_too_large"  # over the guard's size cap: not even scanned
    CONTENT_BLOCKED = "content_blocked"  # the input guard refused it
    OUTPUT_BLOCKED = "output_blocked"  # the output guard stopped the answer
    OVERLOADED = "overloaded"  # the engine's queue is full: retry after `retry_after` seconds
    AUDIT_UNAVAILABLE = "audit_unavailable"  # the audit writer is not keeping up: nothing is served unaudited
    ENGINE_UNAVAILABLE = "engine_unavailable"  # the engine is shutting down or its worker has failed
    ENGINE_ERROR = "engine_error"  # generation failed inside the engine
    UPSTREAM_FAILED = "upstream_failed"  # an upstream failed the generation and no other could take it (or the answer had started)


class CallFailed(Exception):
    """A call the gateway refused or ended. `param` names the field at fault, `scanner` the guard
    scanner that refused it, `retry_after` (seconds) when trying again later can succeed."""

    def __init__(
        self, code: Code, message: str, *, param: str | None = None, scanner: str | None = None, retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.code, self.message, self.param, self.scanner, self.retry_after = code, message, param, scanner, retry_after

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code.value!r}, {self.message!r})"


class InputBlocked(CallFailed):
    """The input guard refused the call (its size, its token count or its content)."""


class OutputRefused(CallFailed):
    """The output guard stopped the answer while it streamed."""
