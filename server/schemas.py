"""Request bodies of the OpenAI-compatible API, and their parsing into clear 400s.

Validation is strict (a string is not an integer, `true` is not "true"), like OpenAI's own API:
a client that sends the wrong type learns it at once instead of getting a surprising answer.
Unknown fields are ignored, so newer clients keep working. Sampling values are checked for
finite, sane ranges here, at the door, so no request can push non-finite numbers into a batch
it shares with others, or into the audit record of its own refusal. A body that JSON itself
cannot hold sanely (NaN, Infinity, numbers too large for a float or too long for an int, deep
nesting) is a 400 too, never a 500.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request

from .errors import APIError

Body = TypeVar("Body", bound=BaseModel)

MAX_BODY_BYTES = 4 * 1024 * 1024  # eight times the largest prompt the guard admits
MAX_DEPTH = 32  # no route's body nests deeper than a few levels
INT64 = 2**63


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)


class StreamOptions(_Strict):
    include_usage: bool = False


class _Sampling(_Strict):
    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1, lt=INT64)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=-INT64, lt=INT64)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, lt=INT64)
    user: str | None = Field(default=None, max_length=256)  # the end user, for the audit log (stored pseudonymised)

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        stops = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        if len(stops) > 4:
            raise APIError(400, "stop takes at most 4 sequences", param="stop")
        return stops


TokenId = Annotated[int, Field(ge=0, lt=2**31)]


class CompletionBody(_Sampling):
    prompt: str | list[str] | list[TokenId]
    suffix: str | None = None
    # Tandem's extension: "background" is served after every interactive request (an editor
    # warming the engine's prefix cache for the text around its cursor)
    priority: Literal["interactive", "background"] = "interactive"

    def single_prompt(self) -> str | list[int]:
        if isinstance(self.prompt, list) and self.prompt and isinstance(self.prompt[0], str):
            if len(self.prompt) != 1:
                raise APIError(400, "this server takes one prompt per request", param="prompt")
            return str(self.prompt[0])
        return self.prompt  # type: ignore[return-value]


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatBody(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, lt=INT64)


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body, refused with a 413 as soon as it passes `limit` (never read whole first)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"request body is {declared} bytes; the limit is {limit}", code="body_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(413, f"request body is over the limit of {limit} bytes", code="body_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _check_shape(value: Any, limit: int) -> None:
    """Refuse nesting deeper than `limit` and strings JSON escapes made invalid (lone surrogates),
    walking iteratively so that no depth can overflow the stack."""
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise APIError(
                    400, "request body holds a lone surrogate (an unpaired \\ud800-\\udfff escape)", code="invalid_encoding"
                ) from None
        elif isinstance(item, (dict, list)):
            if level > limit:
                raise APIError(400, f"request body nests deeper than {limit} levels", code="invalid_json")
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)


_RANGE_ERRORS = {
    "greater_than",
    "greater_than_equal",
    "less_than",
    "less_than_equal",
    "finite_number",
    "too_short",
    "too_long",
    "string_too_long",
    "string_too_short",
    "literal_error",
    "string_pattern_mismatch",
}


def parse_body(raw: bytes, model: type[Body]) -> Body:
    """bytes → validated body, or an APIError that says exactly what was wrong."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise APIError(400, f"request body is not valid UTF-8 (byte {exc.start})", code="invalid_encoding") from None
    try:
        data: Any = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise APIError(
            400, f"request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", code="invalid_json"
        ) from None
    except RecursionError:
        raise APIError(400, f"request body nests deeper than {MAX_DEPTH} levels", code="invalid_json") from None
    except ValueError as exc:  # NaN/Infinity, or an integer with more digits than Python converts
        raise APIError(400, f"request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "request body must be a JSON object", code="invalid_json")
    _check_shape(data, MAX_DEPTH)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
        code = "invalid_value" if first["type"] in _RANGE_ERRORS else "invalid_type"
        raise APIError(400, f"invalid request: {problems}", param=param, code=code) from None
