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
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.requests import Request

from .errors import APIError
from .gateway import Grammar, LogitControls, calls_message

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


# OpenAI's fields a body does not serve: name -> (whether a value asks for what is not served, why).
# A value that asks for nothing (null, false, empty, or what is served anyway) passes; any other is
# a 400 naming the field, never ignored. The README's compatibility matrix lists each.
Refused = dict[str, tuple[Callable[[Any], bool], str]]


def _given(value: Any) -> bool:
    return value not in (None, False, "", [], {})


def _other_than(*served: Any) -> Callable[[Any], bool]:
    return lambda value: value is not None and value not in served


def refuse(data: Any, refused: Refused, where: str = "") -> None:
    """Raise the 400 for the first field of `data` that asks for what is not served."""
    if isinstance(data, dict):
        for name, (asks, why) in refused.items():
            if name in data and asks(data[name]):
                raise APIError(400, f"{where}{name}: {why}", param=f"{where}{name}", code="unsupported_parameter")


_TEXT_ONLY = "this server's models read and write text only"
_NOT_KEPT = "nothing is kept here after the answer"
_ONE_TIER = "one service tier is served here (auto)"
_NO_REASONING = "this server has no reasoning settings (a reasoning model's thinking comes back as reasoning_content)"
_NO_NETWORK = "no tool here reaches the network"
_MODERATION = "OpenAI's moderation is not served; the gateway's own guard screens every request"
_CACHE = "the prefix cache is this server's, in memory, and takes no options"


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
    safety_identifier: str | None = Field(default=None, max_length=256)  # OpenAI's newer name for user
    prompt_cache_key: str | None = Field(default=None, max_length=256)  # keeps calls that share a prefix on one upstream
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


class _Refusing(_Strict):
    REFUSED: ClassVar[Refused] = {}

    @model_validator(mode="before")
    @classmethod
    def _refuse(cls, data: Any) -> Any:
        refuse(data, cls.REFUSED)
        return data


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


FUNCTION_NAME = r"^[A-Za-z0-9_.:-]{1,64}$"  # (OpenAI's, with the dots and colons MCP's tool names use)
MAX_TOOLS = 128


class FunctionCall(_Strict):
    name: str = Field(max_length=64)
    arguments: str = Field(max_length=MAX_BODY_BYTES)  # JSON text

    def checked(self, where: str) -> FunctionCall:
        try:
            json.loads(self.arguments)
        except ValueError:
            raise APIError(400, f"{where}.arguments is not JSON", param=f"{where}.arguments", code="invalid_value") from None
        return self


class ToolCallItem(_Strict):
    """A call the assistant made, as the conversation sends it back."""

    id: str | None = Field(default=None, max_length=256)
    type: Literal["function"] = "function"
    function: FunctionCall


class FunctionDef(_Strict):
    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema of its arguments (None: none)
    strict: bool | None = None  # (calls are held to the schema when they are required; see tool_choice)


class ToolDef(_Strict):
    type: Literal["function"]
    function: FunctionDef


class FunctionName(_Strict):
    name: str = Field(max_length=64)


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: FunctionName


class ChatMessage(_Strict):
    REFUSED: ClassVar[Refused] = {
        "name": (_given, "a participant's name is not passed to the model: put it in the message's content"),
        "audio": (_given, _TEXT_ONLY),
        "function_call": (_given, "the legacy function_call is not served: send the call as tool_calls"),
        "refusal": (_given, "an assistant's refusal is not passed to the model: send it as content"),
    }

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    tool_calls: list[ToolCallItem] | None = Field(default=None, max_length=MAX_TOOLS)  # an assistant's
    tool_call_id: str | None = Field(default=None, max_length=256)  # a tool result's: the call it answers

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


class ChatBody(_Sampling, _Refusing):
    REFUSED: ClassVar[Refused] = {
        "functions": (_given, "the legacy functions are not served: send them as tools"),
        "function_call": (_given, "the legacy function_call is not served: use tool_choice"),
        "audio": (_given, _TEXT_ONLY),
        "modalities": (_other_than(["text"]), f'{_TEXT_ONLY}: modalities ["text"]'),
        "prediction": (_given, "predicted outputs are not served"),
        "reasoning_effort": (_given, _NO_REASONING),
        "verbosity": (_given, "verbosity is not adjustable here: say it in the system message"),
        "web_search_options": (_given, _NO_NETWORK),
        "store": (_given, f"{_NOT_KEPT} (store: false)"),
        "metadata": (_given, f"{_NOT_KEPT}: metadata is kept only with store"),
        "service_tier": (_other_than("auto", "default"), _ONE_TIER),
        "moderation": (_given, _MODERATION),
        "prompt_cache_options": (_given, _CACHE),
        "prompt_cache_retention": (_other_than("in_memory"), _CACHE),
    }

    @model_validator(mode="before")
    @classmethod
    def _refuse_in_messages(cls, data: Any) -> Any:
        messages = data.get("messages") if isinstance(data, dict) else None
        for i, message in enumerate(messages if isinstance(messages, list) else []):  # (any other type: the validation says so)
            refuse(message, ChatMessage.REFUSED, f"messages.{i}.")
        return data

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, lt=INT64)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    tools: list[ToolDef] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None


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
    """One item of a Responses request's `input`: a message (its content text or parts), a function
    call the model made (`function_call`) or its result (`function_call_output`)."""

    type: str | None = Field(default=None, max_length=64)
    role: Literal["user", "assistant", "system", "developer"] | None = None
    content: str | list[ContentPart] | None = None
    call_id: str | None = Field(default=None, max_length=256)
    name: str | None = Field(default=None, max_length=64)
    arguments: str | None = Field(default=None, max_length=MAX_BODY_BYTES)
    output: str | list[ContentPart] | None = None


class ResponseTool(_Strict):
    """A tool of the Responses API: a function is flat there (no `function` object)."""

    type: str = Field(max_length=64)
    name: str | None = Field(default=None, pattern=FUNCTION_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    def as_chat(self, where: str) -> ToolDef:
        if self.type != "function":
            raise APIError(
                400,
                f"{where}: {self.type[:64]!r} tools are not served here, only functions",
                param=f"{where}.type",
                code="unsupported_parameter",
            )
        if self.name is None:
            raise APIError(400, f"{where}: a function needs its name", param=f"{where}.name", code="invalid_value")
        return ToolDef(
            type="function",
            function=FunctionDef(name=self.name, description=self.description, parameters=self.parameters, strict=self.strict),
        )


class ResponseNamedChoice(_Strict):
    type: Literal["function"]
    name: str = Field(max_length=64)


class TextFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(default=None, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class TextConfig(_Strict):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ResponsesStreamOptions(_Strict):
    include_obfuscation: Literal[False] | None = None  # (no obfuscation padding is sent: there is nothing to hide it from on loopback)


class ResponsesBody(_Refusing):
    """OpenAI's Responses API: text in and out, and function tools (what it cannot honour is
    refused by name)."""

    REFUSED: ClassVar[Refused] = {
        "previous_response_id": (_given, f"{_NOT_KEPT}: send the whole conversation as input"),
        "conversation": (_given, f"{_NOT_KEPT}: send the whole conversation as input"),
        "store": (_given, f"{_NOT_KEPT} (store: false)"),
        "background": (_given, "background responses are not served; stream instead"),
        "background_options": (_given, "background responses are not served; stream instead"),
        "include": (_given, "no extra output is served to include"),
        "top_logprobs": (_given, "logprobs on /v1/responses are not served; use /v1/chat/completions"),
        "reasoning": (_given, _NO_REASONING),
        "max_tool_calls": (_given, "not served: use parallel_tool_calls false for one call"),
        "prompt": (_given, "stored prompt templates are not served: send the prompt as input"),
        "context_management": (_given, "context management is not served: truncation auto drops the oldest turns"),
        "service_tier": (_other_than("auto", "default"), _ONE_TIER),
        "moderation": (_given, _MODERATION),
        "prompt_cache_options": (_given, _CACHE),
        "prompt_cache_retention": (_other_than("in_memory"), _CACHE),
        "image": (_given, _TEXT_ONLY),
        "access_programs": (_given, "access programs are OpenAI's, not this server's"),
    }

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
    tool_choice: Literal["auto", "none", "required"] | ResponseNamedChoice | None = None
    tools: list[ResponseTool] | None = Field(default=None, max_length=MAX_TOOLS)
    stream_options: ResponsesStreamOptions | None = None

    def chat_tools(self) -> list[ToolDef] | None:
        return [t.as_chat(f"tools.{i}") for i, t in enumerate(self.tools)] if self.tools else None

    def chat_tool_choice(self) -> str | NamedToolChoice | None:
        c = self.tool_choice
        return NamedToolChoice(type="function", function=FunctionName(name=c.name)) if isinstance(c, ResponseNamedChoice) else c

    def messages(self, head: list[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
        """The conversation: `head` (the tools offered), the instructions (as the system's), then the
        input's messages, function calls (those in a row as one message of calls) and their results."""
        out: list[tuple[str, str]] = [*head, *([("system", self.instructions)] if self.instructions else [])]
        if isinstance(self.input, str):
            return (*out, ("user", self.input))
        calls: list[tuple[str | None, str, str]] = []
        for i, item in enumerate(self.input):
            if item.type == "function_call":
                if item.name is None or item.arguments is None:
                    raise APIError(
                        400, f"input.{i}: a function_call needs its name and arguments", param=f"input.{i}", code="invalid_value"
                    )
                calls.append(
                    (item.call_id, item.name, FunctionCall(name=item.name, arguments=item.arguments).checked(f"input.{i}").arguments)
                )
                continue
            if calls:
                out.append(calls_message(calls))
                calls = []
            if item.type == "function_call_output":
                out.append(("tool", content_text(item.output, f"input.{i}")))
                continue
            if item.type not in (None, "message") or item.role is None:
                what = item.type or "an item without a role"
                raise APIError(
                    400, f"input.{i}: {what!r} items are not served; send messages", param=f"input.{i}", code="unsupported_parameter"
                )
            out.append(("system" if item.role == "developer" else item.role, content_text(item.content, f"input.{i}")))
        if calls:
            out.append(calls_message(calls))
        if len(out) == len(head) or out[-1][0] == "system":
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
