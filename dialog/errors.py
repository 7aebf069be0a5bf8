"""The gateway's failure codes as the chat says them: one table from a code to the error frame the
widget gets (its code, its words, whether the answer counts as blocked)."""

from __future__ import annotations

from dataclasses import dataclass

from server.gateway import CallFailed, Code

from .frames import FrameError

PLAIN_WORDS = {
    "blocked": "Sorry, I can't help with that message.",
    "too_long": "That message is too long for me to read in one go.",
    "answer_blocked": "The answer was stopped because it contained something it should not.",
    "overloaded": "We're very busy right now. Please try again in a moment.",
    "error": "Something went wrong while answering. Please try again.",
}


@dataclass(frozen=True)
class Said:
    frame_code: str
    words: str
    blocked: bool = False  # the answer ends `blocked` (the guard's doing), not `error`
    retry: bool = False  # the visitor may send the same message again (after `retry_after`)


FRAMES: dict[Code, Said] = {
    Code.CONTENT_BLOCKED: Said("message_blocked", PLAIN_WORDS["blocked"], blocked=True),
    Code.INPUT_TOO_LARGE: Said("message_too_large", PLAIN_WORDS["too_long"], blocked=True),
    Code.CONTEXT_LENGTH_EXCEEDED: Said("message_too_large", PLAIN_WORDS["too_long"], blocked=True),
    Code.OUTPUT_BLOCKED: Said("answer_blocked", PLAIN_WORDS["answer_blocked"], blocked=True),
    Code.OVERLOADED: Said("overloaded", PLAIN_WORDS["overloaded"], retry=True),
    Code.AUDIT_UNAVAILABLE: Said("overloaded", PLAIN_WORDS["overloaded"], retry=True),
    Code.INVALID_VALUE: Said("error", PLAIN_WORDS["error"]),
    Code.TOOLS_NOT_SUPPORTED: Said("error", PLAIN_WORDS["error"]),  # (the chat offers no tools: never met)
    Code.ENGINE_UNAVAILABLE: Said("error", PLAIN_WORDS["error"], retry=True),
    Code.ENGINE_ERROR: Said("error", PLAIN_WORDS["error"]),
    Code.UPSTREAM_FAILED: Said("error", PLAIN_WORDS["error"]),
}


def frame_for(code: Code, retry_after: int | None = None) -> FrameError:
    """The error frame the visitor gets for a failure with this code."""
    row = FRAMES[code]
    return FrameError(row.frame_code, row.words, retry_after=retry_after if row.retry else None)


def said(exc: CallFailed) -> tuple[Said, FrameError]:
    """How the chat reports a failed call: its table row, and the frame the visitor gets."""
    return FRAMES[exc.code], frame_for(exc.code, exc.retry_after)
