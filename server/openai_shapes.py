"""How the OpenAI API writes answers: chat completions and (legacy) completions, as stream chunks
and as whole responses, their logprobs in each endpoint's own shape, a reasoning model's thinking
under its names. The routes (`openai_api.py`) build the calls; these build the JSON.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .gateway import Candidate, Delta, HermesCalls, PromptEcho, TokenLogprob, ToolCall


@dataclass
class Choice:
    """One answer as the response is built: what came of it so far."""

    index: int
    parts: list[str] = field(default_factory=list)
    thinking: list[str] = field(default_factory=list)  # a reasoning model's, apart from the answer
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish: str | None = None
    tokens: int = 0
    echo: PromptEcho | None = None

    def add(self, delta: Delta) -> None:
        self.parts.append(delta.text)
        self.thinking.append(delta.reasoning)
        self.logprobs.extend(delta.logprobs)
        self.tokens = delta.tokens
        self.echo = delta.prompt or self.echo
        if delta.finish_reason is not None:
            self.finish = delta.finish_reason

    @property
    def text(self) -> str:
        return "".join(self.parts)

    @property
    def score(self) -> float:
        """The answer's log-probability (best_of ranks by it)."""
        return sum(e.chosen.logprob or 0.0 for e in self.logprobs)


class Shape(Protocol):
    """How one endpoint writes its answers: as stream chunks and as a whole response."""

    def opening(self, index: int) -> dict[str, Any] | None: ...

    def chunk(self, delta: Delta) -> dict[str, Any] | None: ...

    def usage_chunk(self, usage: dict[str, int]) -> dict[str, Any]: ...

    def whole(self, choices: list[Choice], usage: dict[str, int]) -> dict[str, Any]: ...


def _candidate(c: Candidate) -> dict[str, Any]:
    return {"token": c.token, "logprob": c.logprob, "bytes": list(c.bytes) if c.token_id >= 0 else None}


def chat_logprobs(entries: tuple[TokenLogprob, ...] | list[TokenLogprob]) -> dict[str, Any]:
    """OpenAI's chat logprobs: each token with its alternatives."""
    return {"content": [{**_candidate(e.chosen), "top_logprobs": [_candidate(c) for c in e.top]} for e in entries], "refusal": None}


def completion_logprobs(entries: list[TokenLogprob], offset: int) -> dict[str, Any]:
    """The legacy completions shape: parallel lists, each token's alternatives as a dict that
    also holds the token chosen (so up to logprobs + 1 entries, as OpenAI and vLLM send them),
    and each token's offset in the returned text."""
    out: dict[str, list[Any]] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for e in entries:
        out["tokens"].append(e.chosen.token)
        out["token_logprobs"].append(e.chosen.logprob)
        top = None if e.chosen.logprob is None else {c.token: c.logprob for c in (*e.top, e.chosen)}
        out["top_logprobs"].append(top)
        out["text_offset"].append(offset)
        offset += len(e.chosen.token)
    return out


class CompletionShape:
    def __init__(self, rid: str, created: int, model: str, logprobs: bool) -> None:
        self.rid, self.created, self.model, self.logprobs = rid, created, model, logprobs
        self.offsets: dict[int, int] = {}  # each answer's text so far, for text_offset

    def _event(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.rid, "object": "text_completion", "created": self.created, "model": self.model, "choices": choices}

    def opening(self, index: int) -> dict[str, Any] | None:
        return None

    def _text_and_logprobs(self, index: int, text: str, entries: list[TokenLogprob], echo: PromptEcho | None) -> tuple[str, Any]:
        if echo is not None:
            text, entries = echo.text + text, [*(echo.logprobs or ()), *entries]
        offset = self.offsets.get(index, 0)
        self.offsets[index] = offset + len(text)
        return text, completion_logprobs(entries, offset) if self.logprobs else None

    def chunk(self, delta: Delta) -> dict[str, Any] | None:
        if not (delta.text or delta.finish_reason or delta.logprobs or delta.prompt):
            return None
        text, logprobs = self._text_and_logprobs(delta.index, delta.text, list(delta.logprobs), delta.prompt)
        return self._event([{"index": delta.index, "text": text, "logprobs": logprobs, "finish_reason": delta.finish_reason}])

    def usage_chunk(self, usage: dict[str, int]) -> dict[str, Any]:
        return {**self._event([]), "usage": usage}

    def whole(self, choices: list[Choice], usage: dict[str, int]) -> dict[str, Any]:
        out = []
        for c in choices:
            self.offsets.pop(c.index, None)
            text, logprobs = self._text_and_logprobs(c.index, c.text, c.logprobs, c.echo)
            out.append({"index": c.index, "text": text, "logprobs": logprobs, "finish_reason": c.finish or "stop"})
        return {**self._event(out), "usage": usage}


class ChatShape:
    """`tools`: the names of the tools offered and how many calls an answer may make (None: any);
    each answer is then read for calls (`HermesCalls`), streamed as tool-call deltas, each call whole."""

    def __init__(self, rid: str, created: int, model: str, logprobs: bool, tools: tuple[Sequence[str], int | None] | None = None) -> None:
        self.rid, self.created, self.model, self.logprobs, self.tools = rid, created, model, logprobs, tools
        self.readers: dict[int, HermesCalls] = {}

    def _event(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.rid, "object": "chat.completion.chunk", "created": self.created, "model": self.model, "choices": choices}

    def _reader(self) -> HermesCalls | None:
        return HermesCalls(*self.tools) if self.tools is not None else None

    def opening(self, index: int) -> dict[str, Any] | None:  # chat opens each answer with the assistant's role
        return self._event([{"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}])

    def chunk(self, delta: Delta) -> dict[str, Any] | None:
        text, finish = delta.text, delta.finish_reason
        calls: list[dict[str, Any]] = []  # as the stream writes them, with their index among the answer's calls
        if self.tools is not None:
            reader = self.readers.setdefault(delta.index, self._reader())  # type: ignore[arg-type]
            made = len(reader.calls)
            text, new = reader.read(text) if finish is not None else reader.feed(text)
            finish = _finish(finish, reader)
            calls = [_call_json(c, made + k) for k, c in enumerate(new)]
        if not (text or delta.reasoning or finish or delta.logprobs or calls):
            return None
        logprobs = chat_logprobs(delta.logprobs) if self.logprobs else None
        content: dict[str, Any] = {"content": text} if text else {}
        if delta.reasoning:
            content |= _reasoning(delta.reasoning)
        if calls:
            content["tool_calls"] = calls
        return self._event([{"index": delta.index, "delta": content, "logprobs": logprobs, "finish_reason": finish}])

    def usage_chunk(self, usage: dict[str, int]) -> dict[str, Any]:
        return {**self._event([]), "usage": usage}

    def _message(self, c: Choice) -> tuple[dict[str, Any], str]:
        message: dict[str, Any] = {"role": "assistant", "content": c.text}
        finish = c.finish or "stop"
        if (reader := self._reader()) is not None:
            text, calls = reader.read(c.text)
            if calls:
                message = {"role": "assistant", "content": text.strip() or None, "tool_calls": [_call_json(c, None) for c in calls]}
            finish = _finish(finish, reader) or finish
        if any(c.thinking):
            message |= _reasoning("".join(c.thinking))
        return message, finish

    def whole(self, choices: list[Choice], usage: dict[str, int]) -> dict[str, Any]:
        out = []
        for c in choices:
            message, finish = self._message(c)
            out.append(
                {
                    "index": c.index,
                    "message": message,
                    "logprobs": chat_logprobs(c.logprobs) if self.logprobs else None,
                    "finish_reason": finish,
                }
            )
        return {"id": self.rid, "object": "chat.completion", "created": self.created, "model": self.model, "choices": out, "usage": usage}


def _finish(finish: str | None, reader: HermesCalls) -> str | None:
    """An answer that ended by itself after making calls ended to call them (OpenAI's `tool_calls`)."""
    return "tool_calls" if finish == "stop" and reader.calls else finish


def _call_json(call: ToolCall, index: int | None) -> dict[str, Any]:
    """A call as OpenAI writes it; streamed, with its index among the answer's calls."""
    out = {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
    return {"index": index, **out} if index is not None else out


def _reasoning(text: str) -> dict[str, str]:
    """A reasoning model's thinking, under the name vLLM and DeepSeek's API use and the shorter one
    newer clients read."""
    return {"reasoning_content": text, "reasoning": text}
