"""What the OpenAI-style routes do with tools, whichever API's shape they came in: check that the
model serves them, tell the model of them (none where `tool_choice` is none), hold a required or
named call to a grammar, and say how the answers are read back (`openai_shapes.ChatShape`, the
Responses route). The calls and results of earlier turns travel as `tool_calls.py` describes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import APIError
from .gateway import TOOLS, Grammar, forced
from .schemas import NamedToolChoice, ToolDef

Choice = str | NamedToolChoice | None


@dataclass(frozen=True)
class ToolUse:
    offered: tuple[ToolDef, ...]  # what the model is told of (none where tool_choice is none)
    limit: int | None  # at most this many calls per answer (1: parallel_tool_calls false, or a named function)
    grammar: Grammar | None  # what a required or named call is held to
    choice: str  # auto, none, required or function:<name>, for the audit record

    @property
    def reading(self) -> tuple[tuple[str, ...], int | None] | None:
        """The names an answer's calls are read for and how many (None: answers are not read for calls)."""
        return (tuple(t.function.name for t in self.offered), self.limit) if self.offered else None


def tool_use(tools: Sequence[ToolDef] | None, choice: Choice, parallel: bool | None, constrained: bool) -> ToolUse | None:
    """`constrained`: the request holds its answer to a grammar of its own (response_format). A
    model that does not serve tools is refused by the gateway (`tools_not_supported`), which alone
    knows the backend the call will reach."""
    if not tools:
        if choice not in (None, "none", "auto"):
            raise APIError(400, "tool_choice needs tools", param="tool_choice", code="invalid_value")
        return None
    names = [t.function.name for t in tools]
    if len(set(names)) != len(names):
        raise APIError(400, "tools holds two functions of one name", param="tools", code="invalid_value")
    if choice == "none":  # no call: the model is not told of the tools, so any model serves it
        return ToolUse((), None, None, "none")
    required: list[ToolDef] | None = None
    if isinstance(choice, NamedToolChoice):
        required = [t for t in tools if t.function.name == choice.function.name]
        if not required:
            raise APIError(
                400,
                f"tool_choice names {choice.function.name[:64]!r}, which is not among the tools",
                param="tool_choice",
                code="invalid_value",
            )
    elif choice == "required":
        required = list(tools)
    parallel = parallel is not False and not isinstance(choice, NamedToolChoice)
    grammar = None
    if required is not None:
        if constrained:
            raise APIError(400, "a required tool call cannot also follow response_format", param="tool_choice", code="invalid_value")
        # (one call per tool offered at most: held to a grammar that allowed any number, a small model repeats its call)
        functions = [(t.function.name, t.function.parameters or {}) for t in required]
        grammar = Grammar("lark", forced(functions, len(functions) if parallel else 1), "tools")
    return ToolUse(
        tuple(tools),
        None if parallel else 1,
        grammar,
        f"function:{choice.function.name}" if isinstance(choice, NamedToolChoice) else choice or "auto",
    )


def tools_message(use: ToolUse | None) -> list[tuple[str, str]]:
    """The tools offered as the conversation's first message (`TOOLS`), in chat's shape, which templates take."""
    if use is None or not use.offered:
        return []
    return [(TOOLS, json.dumps([t.model_dump(exclude_none=True) for t in use.offered], ensure_ascii=False))]
