"""OpenAI's Responses API (`POST /v1/responses`), for the clients that default to it (the SDK's
`client.responses`, the AI SDK's `createOpenAI(...)(model)`): text in, text out, streamed as its
typed events in their order, `instructions`, structured output (`text.format`), truncation, and
function tools (the model's calls as `function_call` items, their results sent back as
`function_call_output` items), served as chat's are (`api_tools.py`).

A response is one gateway call on the chat surface, like a chat completion: guarded, generated
and audited the same way. Nothing is kept after it (`store` is refused), so a follow-up sends the
whole conversation as `input`.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .api_calls import actor_of, deltas, open_call, parse, refused, state_of, until_disconnect
from .api_tools import ToolUse, tool_use, tools_message
from .errors import APIError, from_failure
from .gateway import Call, CallFailed, ChatPrompt, Delta, HermesCalls, Params, Priority, ToolCall
from .schemas import ResponseNamedChoice, ResponsesBody


class _Shape:
    """One response as its JSON object and as the events that build it."""

    def __init__(self, body: ResponsesBody, model: str) -> None:
        self.body, self.model = body, model
        self.tools: ToolUse | None = None  # (set once the body's tools are checked)
        self.id, self.item = f"resp_{uuid.uuid4().hex}", f"msg_{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.sequence = 0

    def reader(self) -> HermesCalls | None:
        """What reads the answer for calls, where tools were offered."""
        reading = self.tools.reading if self.tools is not None else None
        return HermesCalls(*reading) if reading is not None else None

    def message(self, text: str, status: str) -> dict[str, Any]:
        content = [] if status == "in_progress" else [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
        return {"id": self.item, "type": "message", "role": "assistant", "status": status, "content": content}

    def output(self, text: str, calls: list[ToolCall], status: str) -> list[dict[str, Any]]:
        """The output items: the message (where there is text, or nothing else), then each call."""
        message = [self.message(text.strip() if calls else text, status)] if text.strip() or not calls else []
        return message + [function_call(c, "completed") for c in calls]

    def response(
        self,
        status: str,
        text: str | None = None,
        finish: str | None = None,
        usage: dict[str, Any] | None = None,
        calls: list[ToolCall] | None = None,
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
            "output": [] if text is None else self.output(text, calls or [], "incomplete" if incomplete else "completed"),
            "instructions": b.instructions,
            "max_output_tokens": b.max_output_tokens,
            "temperature": b.temperature if b.temperature is not None else 1.0,
            "top_p": b.top_p if b.top_p is not None else 1.0,
            "parallel_tool_calls": b.parallel_tool_calls if b.parallel_tool_calls is not None else True,
            "tool_choice": b.tool_choice.model_dump() if isinstance(b.tool_choice, ResponseNamedChoice) else b.tool_choice or "auto",
            "tools": [t.model_dump(exclude_none=True) | {"strict": bool(t.strict)} for t in b.tools or ()],
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


def function_call(call: ToolCall, status: str) -> dict[str, Any]:
    """A call as the Responses API's output item (its id is the item's; `call_id` is what a
    function_call_output names)."""
    arguments = "" if status == "in_progress" else call.arguments
    return {
        "id": f"fc_{call.id[5:]}",
        "type": "function_call",
        "call_id": call.id,
        "name": call.name,
        "arguments": arguments,
        "status": status,
    }


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
        grammar = body.grammar()
        tools = tool_use(body.chat_tools(), body.chat_tool_choice(), body.parallel_tool_calls, grammar is not None)
        messages = body.messages(tools_message(tools))
    except APIError as exc:
        refused(request, "support_chat", shape.id, exc)
        raise
    shape.tools = tools
    params = Params(
        max_tokens=body.max_output_tokens,
        temperature=body.temperature if body.temperature is not None else 1.0,
        top_p=body.top_p if body.top_p is not None else 1.0,
        grammar=tools.grammar if tools is not None and tools.grammar is not None else grammar,
        tool_choice=tools.choice if tools is not None else None,
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
    calls: list[ToolCall] = []
    if (reader := shape.reader()) is not None:
        text, calls = reader.read(text)
    status = "incomplete" if last.finish_reason == "length" else "completed"
    return JSONResponse(shape.response(status, text, last.finish_reason, _usage(last.prompt_tokens, last.tokens), calls))


async def _events(shape: _Shape, first: Delta, gen: AsyncIterator[Delta]) -> AsyncIterator[str]:
    """The Responses stream: created, in progress, the message and its text part opened, the text
    in deltas, each closed in turn, and the response completed (or incomplete, or failed). Where
    tools were offered, the message opens with its first text, and each call the answer makes is
    an item of its own: added, its arguments (whole, once the call is read), done."""
    yield shape.event("response.created", response=shape.response("in_progress"))
    yield shape.event("response.in_progress", response=shape.response("in_progress"))
    reader = shape.reader()
    part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    parts: list[str] = []
    items: list[dict[str, Any]] = []  # the output items as they were sent, for the final response
    opened = False  # whether the message is open (at output index len(items))

    def open_message() -> Iterator[str]:
        nonlocal opened
        opened = True
        yield shape.event("response.output_item.added", output_index=len(items), item=shape.message("", "in_progress"))
        yield shape.event("response.content_part.added", item_id=shape.item, output_index=len(items), content_index=0, part=part)

    def close_message(status: str) -> Iterator[str]:
        nonlocal opened
        text, where = "".join(parts), {"item_id": shape.item, "output_index": len(items), "content_index": 0}
        yield shape.event("response.output_text.done", **where, text=text, logprobs=[])
        yield shape.event("response.content_part.done", **where, part={**part, "text": text})
        yield shape.event("response.output_item.done", output_index=len(items), item=shape.message(text, status))
        items.append(shape.message(text, status))
        opened, shape.item = False, f"msg_{uuid.uuid4().hex}"  # (text after a call is a message of its own)

    def call_events(call: ToolCall) -> Iterator[str]:
        where = {"item_id": f"fc_{call.id[5:]}", "output_index": len(items)}
        yield shape.event("response.output_item.added", output_index=len(items), item=function_call(call, "in_progress"))
        yield shape.event("response.function_call_arguments.delta", **where, delta=call.arguments)
        yield shape.event("response.function_call_arguments.done", **where, arguments=call.arguments, name=call.name)
        yield shape.event("response.output_item.done", output_index=len(items), item=function_call(call, "completed"))
        items.append(function_call(call, "completed"))

    if reader is None:
        for event in open_message():
            yield event
    last = first
    try:
        async for delta in deltas(first, gen):
            last = delta
            text, new = delta.text, list[ToolCall]()
            if reader is not None:
                text, new = reader.feed(text)
                if delta.finish_reason is not None:
                    rest, more = reader.finish()
                    text, new = text + rest, new + more
            if text:
                if not opened:
                    for event in open_message():
                        yield event
                parts.append(text)
                yield shape.event(
                    "response.output_text.delta", item_id=shape.item, output_index=len(items), content_index=0, delta=text, logprobs=[]
                )
            for call in new:
                if opened:
                    for event in close_message("completed"):
                        yield event
                    parts.clear()
                for event in call_events(call):
                    yield event
    except CallFailed as exc:  # after the headers: the failure travels as the stream's own events
        err = from_failure(exc)
        yield shape.event("error", code=err.code, message=err.message, param=err.param)
        failed = {**shape.response("failed"), "error": {"code": err.code, "message": err.message}}
        yield shape.event("response.failed", response=failed)
        return
    status = "incomplete" if last.finish_reason == "length" else "completed"
    if opened:
        for event in close_message(status):
            yield event
    if not items:  # (an answer of nothing: the message, empty, as a whole response has it)
        items.append(shape.message("", status))
    whole = shape.response(status, "", last.finish_reason, _usage(last.prompt_tokens, last.tokens)) | {"output": items}
    yield shape.event(f"response.{status}", response=whole)


routes = [Route("/responses", responses, methods=["POST"])]
