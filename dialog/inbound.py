"""A helpdesk's agent replying into a conversation: `POST /v1/dialog/conversations/{id}/messages`
with `{"author": "Dana (Helpdesk)", "text": "…"}`, signed like the webhooks Tandem sends (the site's
webhook secret; `Tandem-Signature: t=…,v1=…`). An unsigned, badly signed or replayed request is
refused before anything is read into the conversation; a good one is an agent's reply like one
from the console (the conversation is taken over in the author's name)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from . import frames
from .staff import NAME, StaffMember
from .webhooks import SignatureRefused

if TYPE_CHECKING:
    from .service import DialogService

MAX_BODY = 64 * 1024


class AgentReply(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    author: str = Field(min_length=1, max_length=60, pattern=NAME.pattern)
    text: str = Field(min_length=1, max_length=16_000)


def parse_reply(body: bytes) -> AgentReply | None:
    """The reply in a request's body, or None for anything else (never an exception)."""
    try:
        return AgentReply.model_validate(json.loads(body))
    except (ValueError, ValidationError, RecursionError):
        return None


def _refused(status: int, code: str, message: str) -> Response:
    return JSONResponse({"error": code, "message": message}, status_code=status)


async def agent_reply(request: Request) -> Response:
    service: DialogService = request.state.dialog
    body = await request.body()
    if len(body) > MAX_BODY:
        return _refused(413, "too_large", f"the body is over {MAX_BODY} bytes")
    conv = await service.store.conversation(request.path_params["cid"])
    try:  # (an unknown conversation is refused the same way: ids cannot be probed)
        if conv is None:
            raise SignatureRefused("mismatch", "no such conversation")
        await service.webhooks.verify_inbound(conv["site_key"], request.headers.get("tandem-signature"), body)
    except SignatureRefused as exc:
        return _refused(401, "bad_signature", f"the Tandem-Signature header does not verify ({exc.code})")
    reply = parse_reply(body)
    if reply is None:
        return _refused(400, "bad_body", 'the body is {"author": "name shown to the visitor", "text": "the reply"}')
    agent = StaffMember(f"helpdesk:{reply.author}", reply.author, (conv["site_key"],))
    try:
        await service.staff_action(agent, conv["id"], "reply", reply.text)
    except frames.FrameError as err:
        return _refused(400, err.code, err.message)
    return JSONResponse({"ok": True}, status_code=201)
