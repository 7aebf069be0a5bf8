"""Request bodies of the OpenAI-compatible API, and their parsing into clear 400s.

Validation is strict (a string is not an integer, `true` is not "true"), like OpenAI's own API:
a client that sends the wrong type learns it at once instead of getting a surprising answer.
`null` is taken wherever OpenAI takes it, as the field's default. Unknown fields are ignored, so
newer clients keep working. Sampling values are checked for
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
from .gateway import Grammar, LogitControls

Body = TypeVar("Body", bound=BaseModel)
TokenId = Annotated[int, Field(ge=0, lt=2**31)]

MAX_BODY_BYTES = 4 * 1024 * 1024  # eight times the largest prompt the guard admits
MAX_DEPTH = 32  # no route's body nests deeper than a few levels
INT64 = 2**63
MAX_CHOICES = 16  # n and best_of: answers to one prompt (each a row of the running batch)
MAX_LOGPROBS = 20  # alternatives per token (vLLM's default limit; OpenAI's is 20 for chat, 5 for completions)
MAX_BIASED = 1024  # entries of logit_bias or stop_token_ids


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)


class StreamOptions(_Strict):
    include_usage: bool = False


class JsonSchemaFormat(_Strict):
    name: str | None = Field(default=None, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StructuredOutputs(_Strict):
    """vLLM's structured outputs: one of a JSON schema, a regular expression, a choice of strings,
    a grammar (Lark or GBNF), or any JSON object."""

    json_: dict[str, Any] | str | None = Field(default=None, alias="json")
    regex: str | None = None
    choice: list[str] | None = Field(default=None, min_length=1, max_length=1024)
    grammar: str | None = None
    json_object: bool | None = None


class _Sampling(_Strict):
    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1, lt=INT64)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)  # None: 1.0, as OpenAI
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)  # None: 1.0
    seed: int | None = Field(default=None, ge=-INT64, lt=INT64)
    stop: str | list[str] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    n: int | None = Field(default=None, ge=1, le=MAX_CHOICES)
    user: str | None = Field(default=None, max_length=256)  # the end user, for the audit log (stored pseudonymised)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = Field(default=None, max_length=MAX_BIASED)  # token id (as a string) -> bias in [-100, 100]
    # vLLM's extensions, which its clients send in the body (`extra_body`)
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=2.0)
    min_tokens: int | None = Field(default=None, ge=0, lt=INT64)
    stop_token_ids: list[TokenId] | None = Field(default=None, max_length=MAX_BIASED)
    # structured output: OpenAI's response_format, vLLM's structured_outputs and its older guided_* fields
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputs | None = None
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = Field(default=None, min_length=1, max_length=1024)
    guided_grammar: str | None = None

    def grammar(self) -> Grammar | None:
        """What the answer must follow, from whichever field gave it (one at most)."""
        found: list[Grammar] = []
        if self.response_format is not None and self.response_format.type != "text":
            found.append(_response_format(self.response_format))
        so = self.structured_outputs
        if so is not None:
            given = [
                (k, v)
                for k, v in (("json", so.json_), ("regex", so.regex), ("choice", so.choice), ("grammar", so.grammar))
                if v is not None
            ]
            given += [("json", {"type": "object"})] if so.json_object else []
            found += [_grammar(kind, value, f"structured_outputs.{kind}") for kind, value in given]
        for kind in ("json", "regex", "choice", "grammar"):
            if (value := getattr(self, f"guided_{kind}")) is not None:
                found.append(_grammar(kind, value, f"guided_{kind}"))
        if len(found) > 1:
            raise APIError(
                400,
                f"give one constraint on the answer, not {len(found)} ({', '.join(g.field for g in found)})",
                param=found[1].field,
                code="invalid_value",
            )
        return found[0] if found else None

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        stops = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        if len(stops) > 4:
            raise APIError(400, "stop takes at most 4 sequences", param="stop")
        return stops

    def controls(self) -> LogitControls:
        bias: list[tuple[int, float]] = []
        for key, value in (self.logit_bias or {}).items():
            if not key.isdigit() or len(key) > 10:
                raise APIError(400, f"logit_bias keys are token ids, got {key[:40]!r}", param="logit_bias", code="invalid_value")
            if not -100.0 <= value <= 100.0:
                raise APIError(
                    400, f"logit_bias values must be in [-100, 100], got {value} for token {key}", param="logit_bias", code="invalid_value"
                )
            bias.append((int(key), value))
        return LogitControls(
            logit_bias=tuple(bias),
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            repetition_penalty=self.repetition_penalty if self.repetition_penalty is not None else 1.0,
            min_tokens=self.min_tokens or 0,
            stop_token_ids=tuple(self.stop_token_ids or ()),
        )


class CompletionBody(_Sampling):
    prompt: str | list[str] | list[TokenId]
    max_tokens: int | None = Field(default=None, ge=0, lt=INT64)  # 0: the prompt's own logprobs only (with echo)
    suffix: str | None = None
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    echo: bool | None = None
    best_of: int | None = Field(default=None, ge=1, le=MAX_CHOICES)
    # Tandem's extension: "background" is served after every interactive request (an editor
    # warming the engine's prefix cache for the text around its cursor)
    priority: Literal["interactive", "background"] = "interactive"

    def single_prompt(self) -> str | list[int]:
        if isinstance(self.prompt, list) and self.prompt and isinstance(self.prompt[0], str):
            if len(self.prompt) != 1:
                raise APIError(400, "this server takes one prompt per request", param="prompt")
            return str(self.prompt[0])
        return self.prompt  # type: ignore[return-value]


# what a content part of another kind than text is, as the refusal names it
NOT_TEXT = {
    "image_url": "images",
    "input_image": "images",
    "image": "images",
    "input_audio": "audio",
    "audio": "audio",
    "file": "files",
    "input_file": "files",
    "video_url": "video",
}


class ContentPart(_Strict):
    type: str = Field(max_length=64)
    text: str | None = None


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    def text(self, where: str) -> str:
        """The message's text (`where`: its path, which a refusal names)."""
        return content_text(self.content, where)


def content_text(content: str | list[ContentPart] | None, where: str) -> str:
    """A message's text, whether a string or text parts (chat's and the Responses API's names for
    them); a part that is not text is refused, saying what it is."""
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for j, part in enumerate(content):
        if part.type in ("text", "input_text", "output_text") and part.text is not None:
            texts.append(part.text)
        elif part.type in NOT_TEXT:
            raise APIError(
                400,
                f"this server's models read text only: {NOT_TEXT[part.type]} ({part.type!r} parts) are not supported",
                param=f"{where}.content.{j}",
                code=f"{NOT_TEXT[part.type]}_not_supported",
            )
        else:
            raise APIError(
                400, f"content part {j} of {where} has no text (type {part.type[:64]!r})", param=f"{where}.content.{j}", code="invalid_type"
            )
    return "".join(texts)


class ChatBody(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, lt=INT64)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)


class TokenizeBody(_Strict):
    """vLLM's /tokenize (prompt or messages, add_special_tokens, return_token_strs) and
    llama.cpp's (content, add_special, with_pieces)."""

    model: str | None = None
    prompt: str | None = None
    content: str | None = None
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    add_special_tokens: bool | None = None
    add_special: bool | None = None
    return_token_strs: bool | None = None
    with_pieces: bool | None = None

    def text(self) -> str | None:
        given = [name for name in ("prompt", "content", "messages") if getattr(self, name) is not None]
        if len(given) != 1:
            raise APIError(400, "give exactly one of prompt, content (text) or messages", param="prompt", code="invalid_value")
        return self.prompt if self.prompt is not None else self.content

    def special(self) -> bool:
        """Whether the tokenizer's own tokens (BOS) are added: vLLM's default yes, llama.cpp's no."""
        if self.add_special_tokens is not None:
            return self.add_special_tokens
        return bool(self.add_special) if self.add_special is not None else self.content is None


class DetokenizeBody(_Strict):
    model: str | None = None
    tokens: list[TokenId] = Field(max_length=1_000_000)


def _grammar(kind: str, value: Any, field: str) -> Grammar:
    if kind == "json":
        return Grammar("json_schema", value if isinstance(value, str) else json.dumps(value), field)
    if kind == "choice":
        return Grammar("choice", json.dumps(value), field)
    return Grammar(kind, value, field)


def _response_format(rf: ResponseFormat) -> Grammar:
    if rf.type == "json_object":
        return Grammar("json_schema", '{"type": "object"}', "response_format")
    if rf.json_schema is None or rf.json_schema.schema_ is None:
        raise APIError(
            400, "a json_schema response_format needs json_schema.schema", param="response_format.json_schema.schema", code="invalid_value"
        )
    return Grammar("json_schema", json.dumps(rf.json_schema.schema_), "response_format")


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


class InputItem(_Strict):
    """One item of a Responses request's `input`: a message (its content text or parts)."""

    type: str | None = Field(default=None, max_length=64)
    role: Literal["user", "assistant", "system", "developer"] | None = None
    content: str | list[ContentPart] | None = None


class TextFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(default=None, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class TextConfig(_Strict):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ResponsesBody(_Strict):
    """OpenAI's Responses API, text in and out (what it cannot honour yet is refused by name)."""

    model: str | None = None
    input: str | list[InputItem]
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1, lt=INT64)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stream: bool | None = None
    text: TextConfig | None = None
    truncation: Literal["auto", "disabled"] | None = None
    metadata: dict[str, str] | None = Field(default=None, max_length=16)
    user: str | None = Field(default=None, max_length=256)
    safety_identifier: str | None = Field(default=None, max_length=256)
    prompt_cache_key: str | None = Field(default=None, max_length=256)
    parallel_tool_calls: bool | None = None
    tool_choice: Literal["auto", "none"] | None = None  # (with no tools, both mean a plain answer)
    # refused unless empty, false or null: `unsupported` says why
    tools: list[dict[str, Any]] | None = None
    previous_response_id: str | None = None
    conversation: str | dict[str, Any] | None = None
    store: bool | None = None
    background: bool | None = None
    include: list[str] | None = None
    top_logprobs: int | None = None
    reasoning: dict[str, Any] | None = None
    max_tool_calls: int | None = None

    def unsupported(self) -> APIError | None:
        reasons = {
            "tools": (bool(self.tools), "tools on /v1/responses are not served yet; use /v1/chat/completions"),
            "previous_response_id": (
                self.previous_response_id is not None,
                "responses are not kept here: send the whole conversation as input",
            ),
            "conversation": (self.conversation is not None, "conversations are not kept here: send the whole conversation as input"),
            "store": (bool(self.store), "responses are not kept here (store: false)"),
            "background": (bool(self.background), "background responses are not served; stream instead"),
            "include": (bool(self.include), "include is not served"),
            "top_logprobs": (bool(self.top_logprobs), "logprobs on /v1/responses are not served yet; use /v1/chat/completions"),
            "reasoning": (self.reasoning is not None, "this model has no reasoning settings"),
            "max_tool_calls": (self.max_tool_calls is not None, "no tools are served on /v1/responses"),
        }
        for param, (refused, why) in reasons.items():
            if refused:
                return APIError(400, f"{param}: {why}", param=param, code="unsupported_parameter")
        return None

    def messages(self) -> tuple[tuple[str, str], ...]:
        """The conversation: the instructions first (as the system's), then the input's messages."""
        out: list[tuple[str, str]] = [("system", self.instructions)] if self.instructions else []
        if isinstance(self.input, str):
            return (*out, ("user", self.input))
        for i, item in enumerate(self.input):
            if item.type not in (None, "message") or item.role is None:
                what = item.type or "an item without a role"
                raise APIError(
                    400, f"input.{i}: {what!r} items are not served; send messages", param=f"input.{i}", code="unsupported_parameter"
                )
            out.append(("system" if item.role == "developer" else item.role, content_text(item.content, f"input.{i}")))
        if not out or out[-1][0] == "system":
            raise APIError(400, "input has no message to answer", param="input", code="invalid_value")
        return tuple(out)

    def grammar(self) -> Grammar | None:
        f = self.text.format if self.text is not None else None
        if f is None or f.type == "text":
            return None
        if f.type == "json_object":
            return Grammar("json_schema", '{"type": "object"}', "text.format")
        if f.schema_ is None:
            raise APIError(400, "a json_schema text format needs its schema", param="text.format.schema", code="invalid_value")
        return Grammar("json_schema", json.dumps(f.schema_), "text.format")
