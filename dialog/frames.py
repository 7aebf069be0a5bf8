"""The dialog protocol's client frames (v1, see design.md), validated strictly, and the error
codes the widget knows how to explain."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 16 * 1024


class _Frame(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class Hello(_Frame):
    type: Literal["hello"]
    v: int = PROTOCOL_VERSION
    site_key: str = Field(min_length=1, max_length=128)
    token: str | None = Field(default=None, max_length=1024)
    conversation_id: str | None = Field(default=None, max_length=64)
    last_seq: int | None = Field(default=None, ge=0)


class Message(_Frame):
    type: Literal["message"]
    client_msg_id: str = Field(min_length=1, max_length=64)
    text: str


class Cancel(_Frame):
    type: Literal["cancel"]


class Ping(_Frame):
    type: Literal["ping"]


ClientFrame = Annotated[Hello | Message | Cancel | Ping, Field(discriminator="type")]
_adapter: TypeAdapter[Hello | Message | Cancel | Ping] = TypeAdapter(ClientFrame)


class FrameError(Exception):
    def __init__(self, code: str, message: str, retry_after: int | None = None, fatal: bool = False) -> None:
        super().__init__(message)
        self.code, self.message, self.retry_after, self.fatal = code, message, retry_after, fatal

    def frame(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "error", "code": self.code, "message": self.message}
        if self.retry_after is not None:
            out["retry_after"] = self.retry_after
        return out


def parse(raw: str | bytes) -> Hello | Message | Cancel | Ping:
    if isinstance(raw, bytes):
        raise FrameError("bad_frame", "frames are JSON text, not binary")
    if len(raw.encode("utf-8", "surrogatepass")) > MAX_FRAME_BYTES:
        raise FrameError("frame_too_large", f"a frame may be at most {MAX_FRAME_BYTES} bytes")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise FrameError("bad_frame", f"not valid JSON: {exc.msg}") from None
    if not isinstance(data, dict) or "type" not in data:
        raise FrameError("bad_frame", "a frame is a JSON object with a `type`")
    if data["type"] not in ("hello", "message", "cancel", "ping"):
        raise FrameError("unknown_type", f"unknown frame type {str(data['type'])[:40]!r}")
    try:
        return _adapter.validate_python(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"][1:]) or "frame"
        raise FrameError("bad_frame", f"{where}: {first['msg']}") from None
