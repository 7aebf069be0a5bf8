"""What every OpenAI-style route does with a call: start it so that a refusal is an HTTP error
before any header goes out, follow it to its end or stop it when the client leaves (queued or
prefilling: `until_disconnect` watches; streaming: Starlette cancels the response task), and send
server-sent events; and a body refused at the door audited before its 4xx goes out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import StreamingResponse

from .errors import APIError, from_failure
from .gateway import Actor, Call, CallFailed, Delta
from .schemas import Body, parse_body, read_body
from .state import AppState


class HasUser(Protocol):
    user: str | None
    safety_identifier: str | None  # OpenAI's newer name for the end user


def state_of(request: Request) -> AppState:
    return request.state.tandem  # type: ignore[no-any-return]


async def open_call(state: AppState, call: Call) -> tuple[Delta, AsyncIterator[Delta]]:
    """Start a call and wait for its first delta, so that refusals become HTTP errors
    before any response header is sent."""
    gen = state.gateway.stream(call)
    try:
        first = await gen.__anext__()
    except CallFailed as exc:
        raise from_failure(exc) from None
    return first, gen


async def deltas(first: Delta, gen: AsyncIterator[Delta]) -> AsyncIterator[Delta]:
    try:
        yield first
        async for delta in gen:  # (with n answers, the first to finish is not the last delta)
            yield delta
    finally:
        await gen.aclose()  # type: ignore[attr-defined]


async def until_disconnect(request: Request, work: Any) -> Any:
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


def sse(events: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    async def body() -> AsyncIterator[str]:
        try:
            async for event in events:
                yield f"data: {json.dumps(event, ensure_ascii=False)}\n\n"
        except CallFailed as exc:  # after the headers: the error travels in the stream
            err = from_failure(exc)
            yield f"data: {json.dumps({'error': {'message': err.message, 'type': err.type, 'code': err.code}})}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def actor_of(request: Request, body: HasUser) -> Actor:
    client = request.headers.get("x-tandem-client") or request.headers.get("user-agent")
    kind = "ide_user" if request.headers.get("x-tandem-client", "").startswith("tandem-lsp") else "api_client"
    return Actor(
        kind,
        user=body.user or body.safety_identifier,
        ip=request.client.host if request.client else None,
        client=client[:120] if client else None,
    )


async def parse(request: Request, body_type: type[Body], surface: str, rid: str) -> Body:
    """The validated body; a body refused here is audited as a refused request before the 4xx goes out."""
    try:
        return parse_body(await read_body(request), body_type)
    except APIError as exc:
        refused(request, surface, rid, exc)
        raise


def refused(request: Request, surface: str, rid: str, exc: APIError) -> None:
    client = request.headers.get("x-tandem-client") or request.headers.get("user-agent")
    actor = Actor("api_client", ip=request.client.host if request.client else None, client=client[:120] if client else None)
    state_of(request).gateway.record_refusal(surface, actor, rid, exc.code, exc.param)
