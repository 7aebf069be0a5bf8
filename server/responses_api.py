"""OpenAI's Responses API (`POST /v1/responses`), for the clients that default to it (the SDK's
`client.responses`, the AI SDK's `createOpenAI(...)(model)`): text in, text out, streamed as its
typed events in their order, `instructions`, structured output (`text.format`), truncation.

A response is one gateway call on the chat surface, like a chat completion: guarded, generated
and audited the same way. Nothing is kept after it (`store` is refused), so a follow-up sends the
whole conversation as `input`.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .api_calls import actor_of, deltas, open_call, parse, refused, state_of, until_disconnect
from .errors import APIError, from_failure
from .gateway import Call, CallFailed, ChatPrompt, Delta, Params, Priority
from .schemas import ResponsesBody


class _Shape:
    """One response as its JSON object and as the events that build it."""

    def __init__(self, body: ResponsesBody, model: str) -> None:
        self.body, self.model = body, model
        self.id, self.item = f"resp_{uuid.uuid4().hex}", f"msg_{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.sequence = 0

    def message(self, text: str, status: str) -> dict[str, Any]:
        content = [] if status == "in_progress" else [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
        return {"id": self.item, "type": "message", "role": "assistant", "status": status, "content": content}

    def response(
        self, status: str, text: str | None = None, finish: str | None = None, usage: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        b = self.body
        incomplete = {"reason": "max_output_tokens"} if finish == "length" else None
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "completed_at": int(time.time()) if status == "completed" else None,
            "status": status,
            "model": self.model,
            "output": [] if text is None else [self.message(text, "incomplete" if incomplete else "completed")],
            "instructions": b.instructions,
            "max_output_tokens": b.max_output_tokens,
            "temperature": b.temperature if b.temperature is not None else 1.0,
            "top_p": b.top_p if b.top_p is not None else 1.0,
            "parallel_tool_calls": b.parallel_tool_calls if b.parallel_tool_calls is not None else True,
            "tool_choice": b.tool_choice or "auto",
            "tools": [],
            "text": {
                "format": b.text.format.model_dump(by_alias=True, exclude_none=True) if b.text and b.text.format else {"type": "text"}
            },
            "truncation": b.truncation or "disabled",
            "metadata": b.metadata or {},
            "store": False,
            "previous_response_id": None,
            "incomplete_details": incomplete,
            "error": None,
            "usage": usage,
            "user": b.user,
        }

    def event(self, kind: str, **fields: Any) -> str:
        """One server-sent event, numbered in order."""
        data = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def _usage(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


async def responses(request: Request) -> Response:
    state = state_of(request)
    body = await parse(request, ResponsesBody, "support_chat", f"resp-{uuid.uuid4().hex}")
    served = state.gateway.model_for("support_chat")
    if body.model is not None and body.model not in (served.name, "default"):
        raise APIError(
            404, f"model {body.model!r} does not exist; this endpoint serves {served.name!r}", param="model", code="model_not_found"
        )
    if not served.chat:
        raise APIError(400, f"model {served.name!r} has no chat template; use /v1/completions", code="no_chat_template")
    shape = _Shape(body, served.name)
    try:
        if (refusal := body.unsupported()) is not None:
            raise refusal
        messages = body.messages()
        grammar = body.grammar()
    except APIError as exc:
        refused(request, "support_chat", shape.id, exc)
        raise
    params = Params(
        max_tokens=body.max_output_tokens,
        temperature=body.temperature if body.temperature is not None else 1.0,
        top_p=body.top_p if body.top_p is not None else 1.0,
        grammar=grammar,
    )
    actor = actor_of(request, body)
    call = Call(
        "support_chat",
        actor,
        ChatPrompt(messages, fit=body.truncation == "auto"),  # auto: the oldest turns dropped to fit, as OpenAI truncates
        params,
        Priority.CHAT,
        request_id=shape.id,
        affinity=body.prompt_cache_key,
    )
    first, gen = await until_disconnect(request, open_call(state, call))
    if body.stream:
        return StreamingResponse(
            _events(shape, first, gen), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )

    async def collect() -> tuple[str, Delta]:
        parts, last = [], first
        async for delta in deltas(first, gen):
            parts.append(delta.text)
            last = delta
        return "".join(parts), last

    try:
        text, last = await until_disconnect(request, collect())
    except CallFailed as exc:
        raise from_failure(exc) from None
    status = "incomplete" if last.finish_reason == "length" else "completed"
    return JSONResponse(shape.response(status, text, last.finish_reason, _usage(last.prompt_tokens, last.tokens)))


async def _events(shape: _Shape, first: Delta, gen: AsyncIterator[Delta]) -> AsyncIterator[str]:
    """The Responses stream: created, in progress, the message and its text part opened, the text
    in deltas, each closed in turn, and the response completed (or incomplete, or failed)."""
    yield shape.event("response.created", response=shape.response("in_progress"))
    yield shape.event("response.in_progress", response=shape.response("in_progress"))
    yield shape.event("response.output_item.added", output_index=0, item=shape.message("", "in_progress"))
    part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    yield shape.event("response.content_part.added", item_id=shape.item, output_index=0, content_index=0, part=part)
    parts, last = [], first
    where = {"item_id": shape.item, "output_index": 0, "content_index": 0}
    try:
        async for delta in deltas(first, gen):
            last = delta
            if delta.text:
                parts.append(delta.text)
                yield shape.event("response.output_text.delta", **where, delta=delta.text, logprobs=[])
    except CallFailed as exc:  # after the headers: the failure travels as the stream's own events
        err = from_failure(exc)
        yield shape.event("error", code=err.code, message=err.message, param=err.param)
        failed = {**shape.response("failed"), "error": {"code": err.code, "message": err.message}}
        yield shape.event("response.failed", response=failed)
        return
    text = "".join(parts)
    status = "incomplete" if last.finish_reason == "length" else "completed"
    yield shape.event("response.output_text.done", **where, text=text, logprobs=[])
    yield shape.event("response.content_part.done", **where, part={**part, "text": text})
    yield shape.event("response.output_item.done", output_index=0, item=shape.message(text, status))
    whole = shape.response(status, text, last.finish_reason, _usage(last.prompt_tokens, last.tokens))
    yield shape.event(f"response.{status}", response=whole)


routes = [Route("/responses", responses, methods=["POST"])]
