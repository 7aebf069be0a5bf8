"""Tools: how a conversation that offers them, or holds their calls and results, travels through
the guard to the chat template, and how the model's answer is read back as calls.

The guard and the audit log work on `(role, text)` messages, so the parts of a tool conversation
that are not a message's text travel as messages of roles of their own: the tools offered
(`TOOLS`, their JSON, first) and an assistant message's calls (`CALLS`, their JSON, just after
that message). Every byte the model reads is scanned like any message; `template_input` turns them
back into what `apply_chat_template(tools=…)` takes.

The format read back is Hermes' (`<tool_call>{"name": …, "arguments": …}</tool_call>`, the one
Qwen2.5's and Hermes' templates teach; vLLM's `hermes` parser). `forced` makes the (Lark) grammar that
holds an answer to it when a call is required, so even a small model's call is well-formed.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

TOOLS = "tools"  # the tools offered, as a JSON list in OpenAI's shape
CALLS = "tool_calls"  # the calls of the assistant message before it, as a JSON list in OpenAI's shape
ROLES = (TOOLS, CALLS)
HERMES = "hermes"
OPEN, CLOSE = "<tool_call>", "</tool_call>"

# JSON written one way (as the template shows it): a grammar that allowed any whitespace would let
# a small model pad forever
_LAYOUT = {"whitespace_flexible": False, "key_separator": ": ", "item_separator": ", "}


def template_input(messages: Sequence[tuple[str, str]]) -> tuple[list[dict[str, Any]], list[Any] | None]:
    """The chat template's messages and tools from messages that may hold `TOOLS` and `CALLS`."""
    out: list[dict[str, Any]] = []
    tools: list[Any] | None = None
    for role, content in messages:
        if role == TOOLS:
            tools = json.loads(content)
        elif role == CALLS:
            calls = [_template_call(c) for c in json.loads(content)]
            if out and out[-1]["role"] == "assistant" and "tool_calls" not in out[-1]:
                out[-1]["tool_calls"] = calls
            else:
                out.append({"role": "assistant", "content": "", "tool_calls": calls})
        else:
            out.append({"role": role, "content": content})
    return out, tools


def calls_message(calls: Sequence[tuple[str | None, str, str]]) -> tuple[str, str]:
    """An assistant's calls (id, name, arguments as JSON text) as the message after its own."""
    return CALLS, json.dumps(
        [{"id": i, "type": "function", "function": {"name": n, "arguments": a}} for i, n, a in calls], ensure_ascii=False
    )


def _template_call(call: dict[str, Any]) -> dict[str, Any]:
    """A call as templates read it: its arguments an object, not the JSON text OpenAI sends (as vLLM
    gives them; Qwen's template writes `arguments | tojson`)."""
    function = dict(call.get("function") or {})
    try:
        function["arguments"] = json.loads(function.get("arguments") or "{}")
    except (TypeError, ValueError):
        pass  # (the door refuses arguments that are not JSON; text the guard redacted is left as text)
    return {**call, "function": function}


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # JSON text, as OpenAI sends it
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")


class HermesCalls:
    """Reads an answer as it streams: text outside `<tool_call>…</tool_call>` is the message's
    content, each well-formed call inside is a `ToolCall`. A call is given whole once it closes
    (its arguments are not streamed piece by piece: a call that turned out malformed would have
    been half sent); a tag cut across deltas is held until it is whole. A call that does not parse,
    or names a tool not offered, is given back as text, as the model wrote it.

    An answer that is nothing but one call's JSON, without the tags, is a call too: small models
    (Qwen2.5-Coder-0.5B among them) often leave the tags out. Such an answer is held whole until it
    ends, then read as a call or, failing that, given as the text it is."""

    def __init__(self, names: Sequence[str], limit: int | None = None) -> None:
        self.names, self.limit = set(names), limit  # limit: at most this many calls (1: no parallel calls)
        self.calls: list[ToolCall] = []
        self._held, self._inside = "", False
        self._bare: bool | None = None  # whether the answer opens as bare JSON (None: not known yet)
        self._space = ""  # content's trailing whitespace: sent when text follows, dropped when a call does

    def feed(self, text: str) -> tuple[str, list[ToolCall]]:
        self._held += text
        if self._bare is None and self._held.strip():
            self._bare = self._held.lstrip().startswith("{")
        if self._bare is not False:
            return "", []  # (held: it may be one bare call)
        content, new = [], []
        while True:
            if not self._inside:
                at = self._held.find(OPEN)
                if at < 0:
                    keep = _partial_tag(self._held)
                    content.append(self._emit(self._held[: len(self._held) - keep]))
                    self._held = self._held[len(self._held) - keep :]
                    break
                content.append(self._emit(self._held[:at]))
                self._held, self._inside, self._space = self._held[at + len(OPEN) :], True, ""
            else:
                end = self._held.find(CLOSE)
                if end < 0:
                    break
                body, self._held, self._inside = self._held[:end], self._held[end + len(CLOSE) :], False
                call = self._call(body)
                if call is None:
                    content.append(self._emit(OPEN + body + CLOSE))
                elif call is not _DROPPED:
                    new.append(call)
        return "".join(content), new

    def read(self, text: str) -> tuple[str, list[ToolCall]]:
        """A whole answer at once: its content and its calls."""
        content, calls = self.feed(text)
        rest, more = self.finish()
        return content + rest, calls + more

    def finish(self) -> tuple[str, list[ToolCall]]:
        """What is left at the end: a call the model did not close is taken if it parses whole."""
        if self._bare:
            self._bare = False
            if (call := self._call(self._held.strip())) is not None and call is not _DROPPED:
                self._held = ""
                return "", [call]
            text, found = self.feed("")
            more_text, more = self.finish()
            return text + more_text, found + more
        rest, self._held = self._held, ""
        calls: list[ToolCall] = []
        if self._inside:
            self._inside = False
            call = self._call(rest)
            rest = OPEN + rest if call is None else ""
            calls = [call] if call is not None and call is not _DROPPED else []
        text = self._emit(rest)
        return text + ("" if self.calls else self._space), calls

    def _emit(self, text: str) -> str:
        """Content to send now: its trailing whitespace is held until more text follows (the
        whitespace around calls is not content)."""
        text = self._space + text
        body = text.rstrip()
        self._space = text[len(body) :]
        return body

    def _call(self, body: str) -> ToolCall | None:
        try:
            parsed = json.loads(body)
        except ValueError:
            return None
        if not isinstance(parsed, dict) or parsed.get("name") not in self.names:
            return None
        arguments = parsed.get("arguments", parsed.get("parameters", {}))
        if self.limit is not None and len(self.calls) >= self.limit:
            return _DROPPED
        call = ToolCall(str(parsed["name"]), json.dumps(arguments, ensure_ascii=False))
        self.calls.append(call)
        return call


_DROPPED = ToolCall("", "")  # a call past the limit (parallel calls not allowed): neither a call nor text


def _partial_tag(text: str) -> int:
    """How many characters at the end of `text` could begin `<tool_call>`."""
    for n in range(min(len(OPEN) - 1, len(text)), 0, -1):
        if OPEN.startswith(text[-n:]):
            return n
    return 0


_SCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties")  # names -> schemas
_SCHEMAS = ("items", "additionalItems", "contains", "not", "if", "then", "else", "prefixItems", "anyOf", "oneOf", "allOf")


def _closed(schema: Any) -> Any:
    """The schema with its objects closed to the properties they name (as OpenAI's strict mode
    reads a schema): a small model held to an open object invents keys until its budget runs out."""
    if isinstance(schema, list):
        return [_closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in _SCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {name: _closed(s) for name, s in out[key].items()}
    for key in _SCHEMAS:
        if key in out:
            out[key] = _closed(out[key])
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def forced(functions: Sequence[tuple[str, dict[str, Any]]], most: int) -> str:
    """The Lark grammar (llguidance's) an answer must follow when it must call one of `functions`
    (name, parameters' JSON schema): from one to `most` of Hermes' calls, each naming a function
    offered with arguments that match its schema. (Held to a grammar that allowed any number, a
    small model repeats its call until max_tokens: the routes allow one call per tool offered.)"""
    rules = []
    for i, (name, parameters) in enumerate(functions):
        schema = {
            "type": "object",
            "properties": {"name": {"const": name}, "arguments": _closed(parameters or {"type": "object", "properties": {}})},
            "required": ["name", "arguments"],
            "additionalProperties": False,
            "x-guidance": _LAYOUT,
        }
        rules.append(f"f{i}: %json {json.dumps(schema)}")
    alternatives = " | ".join(f"f{i}" for i in range(len(functions)))
    calls = "call" + ' ("\\n" call)?' * (most - 1)
    return "\n".join([f"start: {calls}", f'call: <tool_call> "\\n" ({alternatives}) "\\n" </tool_call>', *rules])
