"""A scripted stand-in for the engine, for protocol tests that need exact model output
(a secret split across tokens, a block after text has gone out). It honours the engine's
interface: `stream(GenerationRequest) -> AsyncIterator[Delta]`, plus the read-only status."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from server.engine import Candidate, ContextOverflow, Delta, EngineError, GenerationRequest, InvalidRequest, TokenLogprob


class ScriptedEngine:
    def __init__(self, context_length: int = 2048) -> None:
        self.context_length = context_length
        self.requests: list[GenerationRequest] = []
        self.script: list[str] = ["Hello", " there."]
        self.error: EngineError | None = None
        self.delay = 0.0
        self.alive, self.running, self.waiting = True, 0, 0
        self.closed_early = 0

    async def stream(self, req: GenerationRequest) -> AsyncIterator[Delta]:
        self.requests.append(req)
        if self.error is not None:
            raise self.error
        if req.max_tokens < 0 or (req.max_tokens == 0 and not (req.echo and req.n == 1)):  # as the engine refuses it
            raise InvalidRequest(f"max_tokens must be at least 1 (0 only to echo one prompt), got {req.max_tokens}", "max_tokens")
        if isinstance(req.prompt, list) and len(req.prompt) + req.max_tokens > self.context_length:  # as the engine refuses it
            raise ContextOverflow(
                f"prompt ({len(req.prompt)} tokens) + max_tokens ({req.max_tokens}) exceeds {self.context_length}", "max_tokens"
            )
        pieces = self.script[: req.max_tokens]
        finished = False
        try:
            for i, piece in enumerate(pieces):
                await asyncio.sleep(self.delay)
                last = i == len(pieces) - 1
                finish = ("stop" if len(pieces) < req.max_tokens else "length") if last else None
                # asked for logprobs: each piece is one token, with one alternative that spells it too
                logprobs = (TokenLogprob(Candidate(i, piece, piece.encode(), -0.5), (Candidate(i, piece, piece.encode(), -0.5),)),)
                yield Delta(piece, i + 1, finish, 5, logprobs=logprobs if req.logprobs is not None else ())
            finished = True
        finally:
            if not finished:
                self.closed_early += 1

    def close(self) -> None:
        self.alive = False
