"""The dialog protocol's client frames, validated strictly, and the error codes the widget knows how
to explain. v2 (people in the loop) added, all optional to a v1 client: `handoff` and `rate` from the
widget; `status` (who answers: bot, waiting, agent, closed) and `agent_message` from the server, and
`author` on an agent's messages in the history."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

PROTOCOL_VERSION = 2
SUPPORTED_VERSIONS = (1, 2)  # v2 only adds frames: a v1 widget (a cached script) still works
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
    languages: list[Annotated[str, Field(max_length=35)]] | None = Field(default=None, max_length=16)  # navigator.languages


class Message(_Frame):
    type: Literal["message"]
    client_msg_id: str = Field(min_length=1, max_length=64)
    text: str


class Cancel(_Frame):
    type: Literal["cancel"]


class Ping(_Frame):
    type: Literal["ping"]


class Identify(_Frame):
    """The site's signed-in customer (`Tandem.identify`, see identity.py); lengths are checked there."""

    type: Literal["identify"]
    name: str | None = Field(default=None, max_length=1024)
    email: str | None = Field(default=None, max_length=1024)
    id: str | None = Field(default=None, max_length=1024)
    hmac: str | None = Field(default=None, max_length=256)


class Handoff(_Frame):
    """The visitor asks for a person (the widget's button)."""

    type: Literal["handoff"]


class Rate(_Frame):
    """Thumbs on one answer (`message_id`, `value`), or 1-5 for the whole conversation (`score`)."""

    type: Literal["rate"]
    message_id: str | None = Field(default=None, max_length=64)
    value: Literal["up", "down"] | None = None
    score: int | None = Field(default=None, ge=1, le=5)


Frame = Hello | Message | Cancel | Ping | Identify | Handoff | Rate
ClientFrame = Annotated[Frame, Field(discriminator="type")]
_adapter: TypeAdapter[Frame] = TypeAdapter(ClientFrame)


class FrameError(Exception):
    def __init__(self, code: str, message: str, retry_after: int | None = None, fatal: bool = False) -> None:
        super().__init__(message)
        self.code, self.message, self.retry_after, self.fatal = code, message, retry_after, fatal

    def frame(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "error", "code": self.code, "message": self.message}
        if self.retry_after is not None:
            out["retry_after"] = self.retry_after
        return out


MAX_DEPTH = 8  # client frames are flat objects: anything nested deeper is not a frame
_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?|[\[\]{}]')  # strings (skipped whole) and brackets


def _too_deep(raw: str) -> bool:
    depth = 0
    for tok in _TOKENS.finditer(raw):
        c = tok.group()
        if c == "[" or c == "{":
            depth += 1
            if depth > MAX_DEPTH:
                return True
        elif c == "]" or c == "}":
            depth -= 1
    return False


class _NotJSON(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _NotJSON(f"{name} is not a JSON number")


def _encodable(value: Any) -> bool:
    """No lone surrogates (JSON's `\\ud800` escapes): every string must survive UTF-8."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(value, dict):
        return all(_encodable(k) and _encodable(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_encodable(v) for v in value)
    return True


def _clip(value: Any, limit: int = 40) -> str:
    """A client's value in an error message: short, and always valid UTF-8."""
    return str(value)[:limit].encode("utf-8", "backslashreplace").decode("utf-8")


def text_of(message: Mapping[str, Any]) -> str | bytes:
    """What an ASGI `websocket.receive` message carries (text, else bytes: refused by `decode`)."""
    return message["text"] if message.get("text") is not None else message.get("bytes") or b""


def decode(raw: str | bytes, types: tuple[str, ...], max_bytes: int = MAX_FRAME_BYTES) -> dict[str, Any]:
    """One frame's JSON object, of one of `types`, or `FrameError` (and never anything else: a
    malformed frame gets an error frame, whatever it holds: deep nesting, NaN, numbers too long,
    lone surrogates, binary). The widget's frames and the console's both come through here."""
    if isinstance(raw, bytes):
        raise FrameError("bad_frame", "frames are JSON text, not binary")
    if len(raw.encode("utf-8", "surrogatepass")) > max_bytes:
        raise FrameError("frame_too_large", f"a frame may be at most {max_bytes} bytes")
    if _too_deep(raw):
        raise FrameError("bad_frame", f"a frame may nest at most {MAX_DEPTH} levels deep")
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise FrameError("bad_frame", f"not valid JSON: {exc.msg}") from None
    except _NotJSON as exc:  # NaN, Infinity
        raise FrameError("bad_frame", f"not valid JSON: {exc}") from None
    except ValueError:  # an integer of thousands of digits (Python's int conversion limit)
        raise FrameError("bad_frame", "not valid JSON: a number has too many digits") from None
    except RecursionError:  # not reached below MAX_DEPTH, but never a dropped connection
        raise FrameError("bad_frame", f"a frame may nest at most {MAX_DEPTH} levels deep") from None
    if not isinstance(data, dict) or "type" not in data:
        raise FrameError("bad_frame", "a frame is a JSON object with a `type`")
    if not _encodable(data):
        raise FrameError("bad_frame", "strings must be valid Unicode (no lone surrogates)")
    if data["type"] not in types:
        raise FrameError("unknown_type", f"unknown frame type {_clip(data['type'])!r}")
    return data


def validated(adapter: TypeAdapter[Any], data: dict[str, Any]) -> Any:
    try:
        return adapter.validate_python(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"][1:]) or "frame"
        raise FrameError("bad_frame", f"{_clip(where)}: {first['msg']}") from None


TYPES = ("hello", "message", "cancel", "ping", "identify", "handoff", "rate")


def parse(raw: str | bytes) -> Frame:
    """One client frame, or `FrameError` (see `decode`)."""
    return validated(_adapter, decode(raw, TYPES))  # type: ignore[no-any-return]
