"""The OpenAI-compatible routes: /v1/completions, /v1/chat/completions, /v1/models.

Each handler turns a validated body into one gateway `Call` (the gateway guards, generates and
audits it) and shapes the deltas as OpenAI's JSON or server-sent events. A client that goes
away cancels its generation, wherever it is: queued or prefilling (before the first delta,
`_until_disconnect` watches), streaming (Starlette cancels the response task) or being collected
into a whole answer (`_until_disconnect` again).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .errors import APIError, from_failure
from .gateway import Actor, Call, CallFailed, ChatPrompt, Delta, FimPrompt, ModelInfo, Params, Priority, TextPrompt
from .schemas import Body, ChatBody, CompletionBody, _Sampling, parse_body, read_body
from .state import AppState


def _state(request: Request) -> AppState:
    return request.state.tandem  # type: ignore[no-any-return]


def _check_model(state: AppState, body: _Sampling, surface: str) -> None:
    served = state.gateway.model_for(surface).name
    if body.model is not None and body.model not in (served, "default"):
        raise APIError(
            404,
            f"model {body.model!r} does not exist; this endpoint serves {served!r}",
            param="model",
            code="model_not_found",
        )
    if body.n != 1:
        raise APIError(400, "only n=1 is supported", param="n")


async def _open(state: AppState, call: Call) -> tuple[Delta, AsyncIterator[Delta]]:
    """Start a call and wait for its first delta, so that refusals become HTTP errors
    before any response header is sent."""
    gen = state.gateway.stream(call)
    try:
        first = await gen.__anext__()
    except CallFailed as exc:
        raise from_failure(exc) from None
    return first, gen


async def _deltas(first: Delta, gen: AsyncIterator[Delta]) -> AsyncIterator[Delta]:
    try:
        yield first
        if first.finish_reason is None:
            async for delta in gen:
                yield delta
    finally:
        await gen.aclose()  # type: ignore[attr-defined]


async def _until_disconnect(request: Request, work: Any) -> Any:
    """Run `work` to completion, or cancel it when the client disconnects first."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task, watcher = asyncio.ensure_future(work), asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task  # the generation is closed (and its slot freed) before we go on
    if task.cancelled():
        raise APIError(499, "client closed the request", code="client_closed_request")
    return task.result()


def _sse(events: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    async def body() -> AsyncIterator[str]:
        try:
            async for event in events:
                yield f"data: {json.dumps(event, ensure_ascii=False)}\n\n"
        except CallFailed as exc:  # after the headers: the error travels in the stream
            err = from_failure(exc)
            yield f"data: {json.dumps({'error': {'message': err.message, 'type': err.type, 'code': err.code}})}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _actor(request: Request, body: _Sampling) -> Actor:
    client = request.headers.get("x-tandem-client") or request.headers.get("user-agent")
    kind = "ide_user" if request.headers.get("x-tandem-client", "").startswith("tandem-lsp") else "api_client"
    return Actor(kind, user=body.user, ip=request.client.host if request.client else None, client=client[:120] if client else None)


async def _parse(request: Request, body_type: type[Body], surface: str, rid: str) -> Body:
    """The validated body; a body refused here is audited as a refused request before the 4xx goes out."""
    try:
        return parse_body(await read_body(request), body_type)
    except APIError as exc:
        client = request.headers.get("x-tandem-client") or request.headers.get("user-agent")
        actor = Actor("api_client", ip=request.client.host if request.client else None, client=client[:120] if client else None)
        _state(request).gateway.record_refusal(surface, actor, rid, exc.code, exc.param)
        raise


def _call(request: Request, body: _Sampling, surface: str, prompt: Any, max_tokens: int | None, priority: Priority, rid: str) -> Call:
    params = Params(max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p, seed=body.seed, stop=body.stop_strings())
    # X-Tandem-Affinity: calls that should share an upstream (the language server sends a hash of the document)
    affinity = request.headers.get("x-tandem-affinity", "")[:128] or None
    return Call(surface, _actor(request, body), prompt, params, priority, request_id=rid, affinity=affinity)


async def _respond(
    request: Request,
    body: _Sampling,
    call: Call,
    chunk: Callable[[str | None, str | None], dict[str, Any]],
    whole: Callable[[str, str, dict[str, int]], dict[str, Any]],
    opening_chunk: bool = False,
) -> Response:
    """Shared by both endpoints: stream `chunk(text, finish)` events or return `whole(...)`."""
    state = _state(request)
    first, gen = await _until_disconnect(request, _open(state, call))  # a queued request whose client left must not run
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    if body.stream:

        async def events() -> AsyncIterator[dict[str, Any]]:
            if opening_chunk:  # chat opens with the assistant's role
                yield chunk(None, None)
            last = first
            async for delta in _deltas(first, gen):
                last = delta
                if delta.text or delta.finish_reason:
                    yield chunk(delta.text, delta.finish_reason)
            if include_usage:
                yield {**chunk(None, None), "choices": [], "usage": _usage(last.prompt_tokens, last.tokens)}

        return _sse(events())

    async def collect() -> tuple[str, Delta]:
        parts, last = [], first
        async for delta in _deltas(first, gen):
            parts.append(delta.text)
            last = delta
        return "".join(parts), last

    try:
        text, last = await _until_disconnect(request, collect())
    except CallFailed as exc:
        raise from_failure(exc) from None
    return JSONResponse(whole(text, last.finish_reason or "stop", _usage(last.prompt_tokens, last.tokens)))


async def completions(request: Request) -> Response:
    state = _state(request)
    rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    body = await _parse(request, CompletionBody, "ide_completion", rid)
    _check_model(state, body, "ide_completion")
    model = state.gateway.model_for("ide_completion")
    prompt = body.single_prompt()
    if body.suffix is not None:
        if not model.fim:
            raise APIError(
                400,
                f"model {model.name!r} has no fill-in-the-middle tokens, so `suffix` is not supported; send the prefix alone",
                param="suffix",
                code="fim_not_supported",
            )
        if not isinstance(prompt, str):
            raise APIError(400, "`suffix` needs a text prompt", param="prompt")
    guarded = FimPrompt(prompt, body.suffix) if body.suffix is not None else TextPrompt(prompt)  # type: ignore[arg-type]
    priority = Priority.BATCH if body.priority == "background" else Priority.INTERACTIVE
    call = _call(request, body, "ide_completion", guarded, body.max_tokens, priority, rid)

    def chunk(text: str | None, finish: str | None) -> dict[str, Any]:
        return {
            "id": rid,
            "object": "text_completion",
            "created": created,
            "model": model.name,
            "choices": [{"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}],
        }

    def whole(text: str, finish: str, usage: dict[str, int]) -> dict[str, Any]:
        return {**chunk(text, finish), "usage": usage}

    return await _respond(request, body, call, chunk, whole)


async def chat_completions(request: Request) -> Response:
    state = _state(request)
    rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    body = await _parse(request, ChatBody, "support_chat", rid)
    _check_model(state, body, "support_chat")
    model = state.gateway.model_for("support_chat")
    if not model.chat:
        raise APIError(400, f"model {model.name!r} has no chat template; use /v1/completions", code="no_chat_template")
    messages = tuple(("system" if m.role == "developer" else m.role, m.text()) for m in body.messages)
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    call = _call(request, body, "support_chat", ChatPrompt(messages), max_tokens, Priority.CHAT, rid)
    opened = [False]

    def chunk(text: str | None, finish: str | None) -> dict[str, Any]:
        delta: dict[str, Any] = {}
        if not opened[0]:
            delta, opened[0] = {"role": "assistant", "content": ""}, True
        elif text:
            delta = {"content": text}
        return {
            "id": rid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model.name,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }

    def whole(text: str, finish: str, usage: dict[str, int]) -> dict[str, Any]:
        return {
            "id": rid,
            "object": "chat.completion",
            "created": created,
            "model": model.name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": finish}],
            "usage": usage,
        }

    return await _respond(request, body, call, chunk, whole, opening_chunk=True)


ENDPOINTS = {"ide_completion": "completions", "support_chat": "chat"}  # a model's surfaces, as clients know them


async def list_models(request: Request) -> Response:
    state = _state(request)
    return JSONResponse({"object": "list", "data": [_model_entry(state, m, surfaces) for m, surfaces in state.gateway.models()]})


def _model_entry(state: AppState, m: ModelInfo, surfaces: list[str]) -> dict[str, Any]:
    return {
        "id": m.name,
        "object": "model",
        "created": state.started,
        "owned_by": "tandem",
        # the window the gateway enforces (a configured --context-length), which clients budget against, not the model's native one
        "context_length": m.context_length,
        "native_context_length": m.native_context_length,
        "quantization": m.quant,
        "memory_footprint_bytes": m.footprint_bytes,
        "fim": m.fim,
        "chat": m.chat,
        "backend": m.backend,  # local: the in-process engine; upstream: a pool of OpenAI-compatible servers
        "token_count": m.token_count,  # tokenizer (exact), upstream (its tokenize endpoint) or estimate
        "endpoints": [ENDPOINTS[s] for s in surfaces],  # which of /v1/completions and /v1/chat/completions it serves
    }


routes = [
    Route("/completions", completions, methods=["POST"]),
    Route("/chat/completions", chat_completions, methods=["POST"]),
    Route("/models", list_models, methods=["GET"]),
]
