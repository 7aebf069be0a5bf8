"""`/tokenize` and `/detokenize`, at the root where vLLM and llama.cpp serve them, in both their
shapes: text or a conversation (as the chat template renders it) to the model's token ids, and back.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .api_calls import state_of
from .errors import APIError, from_failure
from .gateway import CallFailed
from .schemas import DetokenizeBody, TokenizeBody, parse_body, read_body
from .state import AppState


def _surface_of(state: AppState, model: str | None) -> str:
    """The surface whose model a tokenizer request names (the completion model's by default)."""
    if model is None or model in ("default", state.gateway.model_for("ide_completion").name):
        return "ide_completion"
    if model == state.gateway.model_for("support_chat").name:
        return "support_chat"
    raise APIError(404, f"model {model[:200]!r} does not exist on this server", param="model", code="model_not_found")


async def tokenize(request: Request) -> Response:
    state = state_of(request)
    body = parse_body(await read_body(request), TokenizeBody)
    surface = _surface_of(state, body.model)
    text = body.text()
    messages = None
    if body.messages is not None:
        messages = tuple(("system" if m.role == "developer" else m.role, m.text(f"messages.{i}")) for i, m in enumerate(body.messages))

    def ids_and_pieces() -> tuple[list[int], list[str]]:  # (tokenising a long text is CPU work: off the event loop)
        ids = state.gateway.tokenize(surface, text, messages, body.special())
        return ids, [state.gateway.detokenize(surface, [i]) for i in ids] if body.with_pieces or body.return_token_strs else []

    try:
        ids, pieces = await asyncio.to_thread(ids_and_pieces)
    except CallFailed as exc:
        raise from_failure(exc) from None
    out: dict[str, Any] = {"tokens": [{"id": i, "piece": p} for i, p in zip(ids, pieces)] if body.with_pieces else ids}
    out.update(count=len(ids), max_model_len=state.gateway.model_for(surface).context_length)
    if body.return_token_strs:
        out["token_strs"] = pieces
    return JSONResponse(out)


async def detokenize(request: Request) -> Response:
    state = state_of(request)
    body = parse_body(await read_body(request), DetokenizeBody)
    try:
        text = state.gateway.detokenize(_surface_of(state, body.model), body.tokens)
    except CallFailed as exc:
        raise from_failure(exc) from None
    return JSONResponse({"prompt": text, "content": text})  # vLLM's name and llama.cpp's


routes = [
    Route("/tokenize", tokenize, methods=["POST"]),
    Route("/detokenize", detokenize, methods=["POST"]),
]
