"""The staff console's server side: one WebSocket per signed-in console (`/v1/console/socket`) and a
transcript download. A console signs in with a staff token in its first frame (never in the URL,
where logs and history keep it); it then gets its sites' conversations, live, and may open one to
read it as it streams, take it over, reply, hand it back or close it. The token is checked again
before every action, so removing a staff member stops their open console too. Another site's
conversation is answered as if it did not exist."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, TypeAdapter
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.websockets import WebSocket, WebSocketDisconnect

from server.auth import bearer

from . import frames
from .handoff import summary
from .staff import StaffMember
from .transcript import as_text, transcript

if TYPE_CHECKING:
    from .service import DialogService, Hub

log = logging.getLogger("tandem.dialog")
MAX_LISTED = 200
CID = Annotated[str, Field(min_length=1, max_length=64)]


class _ConsoleFrame(frames._Frame):
    pass


class SignIn(_ConsoleFrame):
    type: Literal["auth"]
    token: str = Field(max_length=256)


class Open(_ConsoleFrame):
    type: Literal["open"]
    conversation_id: CID


class Act(_ConsoleFrame):
    type: Literal["take", "hand_back", "close"]
    conversation_id: CID


class Reply(_ConsoleFrame):
    type: Literal["reply"]
    conversation_id: CID
    text: str = Field(max_length=16_000)


class Ping(_ConsoleFrame):
    type: Literal["ping"]


ConsoleFrame = SignIn | Open | Act | Reply | Ping
_frames: TypeAdapter[ConsoleFrame] = TypeAdapter(Annotated[ConsoleFrame, Field(discriminator="type")])
TYPES = ("auth", "open", "take", "hand_back", "close", "reply", "ping")


def _parse(raw: str | bytes) -> ConsoleFrame:
    return frames.validated(_frames, frames.decode(raw, TYPES, max_bytes=64 * 1024))  # type: ignore[no-any-return]


class Console:
    """One signed-in console."""

    def __init__(self, ws: WebSocket, staff: StaffMember, token: str) -> None:
        self.ws, self.staff, self.token = ws, staff, token
        self.alive = True
        self.watching: Hub | None = None

    async def send(self, frame: dict[str, Any]) -> None:
        if not self.alive:
            return
        try:
            await self.ws.send_json(frame)
        except Exception:
            self.alive = False


async def _sign_in(service: DialogService, ws: WebSocket) -> Console | None:
    try:
        message = await asyncio.wait_for(ws.receive(), service.config.hello_timeout)
        first = _parse(frames.text_of(message)) if message["type"] == "websocket.receive" else None
    except (TimeoutError, frames.FrameError):
        first = None
    staff = await service.staff.signed_in(first.token) if isinstance(first, SignIn) else None
    if staff is None or not isinstance(first, SignIn):
        with contextlib.suppress(Exception):  # (a client gone before its first frame)
            await ws.send_json({"type": "error", "code": "unauthorized", "message": "Sign in with a staff token (tandem staff add)."})
            await ws.close(code=4401)
        return None
    return Console(ws, staff, first.token)


async def _listing(service: DialogService, staff: StaffMember) -> list[dict[str, Any]]:
    keys = None if "*" in staff.sites else staff.sites
    return [summary(r) for r in await service.store.list_conversations(limit=MAX_LISTED, site_keys=keys)]


async def endpoint(service: DialogService, ws: WebSocket) -> None:
    await ws.accept()
    console = await _sign_in(service, ws)
    if console is None:
        return
    sites = [s.site_key for s in await service.store.list_sites() if console.staff.can_see(s.site_key)]
    await console.send(
        {"type": "ready", "staff": {"name": console.staff.name}, "sites": sites, "conversations": await _listing(service, console.staff)}
    )
    service.consoles.add(console)
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            try:
                frame = _parse(frames.text_of(message))
                if not isinstance(frame, Ping) and await service.staff.signed_in(console.token) is None:
                    await console.send({"type": "error", "code": "unauthorized", "message": "Your staff token was removed."})
                    await ws.close(code=4401)
                    return
                await _handle(service, console, frame)
            except frames.FrameError as err:
                await console.send(err.frame())
    except WebSocketDisconnect:
        pass
    except Exception:
        log.exception("dialog: console connection failed")
        with contextlib.suppress(Exception):
            await ws.close(code=1011)
    finally:
        service.consoles.discard(console)
        if console.watching is not None:
            service.unwatch(console.watching, console)


async def _handle(service: DialogService, console: Console, frame: ConsoleFrame) -> None:
    if isinstance(frame, Ping):
        await console.send({"type": "pong"})
    elif isinstance(frame, SignIn):
        raise frames.FrameError("already_signed_in", "This console has already signed in.")
    elif isinstance(frame, Open):
        await _open(service, console, frame.conversation_id)
    elif isinstance(frame, Reply):
        await service.staff_action(console.staff, frame.conversation_id, "reply", frame.text)
    else:
        await service.staff_action(console.staff, frame.conversation_id, frame.type)


async def _open(service: DialogService, console: Console, cid: str) -> None:
    """Read one conversation: what is stored, then every frame as it is sent."""
    hub = await service.console_hub(console.staff, cid)
    if console.watching is not None:
        service.unwatch(console.watching, console)
    console.watching = hub
    async with hub.lock:  # nothing slips between the history read and the live frames
        await hub.flush(service.store)
        dump = await transcript(service.store, cid)
        hub.watchers.add(console)
    assert dump is not None
    rows = await service.store.list_conversations(limit=1, conversation_id=cid)
    await console.send({"type": "opened", "conversation": summary(rows[0]), "transcript": dump, "seq": hub.seq})


async def transcript_download(request: Request) -> Response:
    """GET /v1/console/conversations/{id}/transcript?format=text|json, with a staff token."""
    service: DialogService = request.state.dialog
    staff = await service.staff.signed_in(bearer(request.scope["headers"]))
    if staff is None:
        return JSONResponse({"error": "unauthorized", "message": "a staff token is required"}, status_code=401)
    dump = await transcript(service.store, request.path_params["cid"])
    if dump is None or not staff.can_see(dump["site_key"]):
        return JSONResponse({"error": "not_found", "message": "no such conversation on your sites"}, status_code=404)
    name = f"transcript-{dump['id']}"
    if request.query_params.get("format", "json") == "text":
        return PlainTextResponse(as_text(dump), headers={"Content-Disposition": f'attachment; filename="{name}.txt"'})
    return JSONResponse(dump, headers={"Content-Disposition": f'attachment; filename="{name}.json"'})
