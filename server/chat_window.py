"""Fitting a conversation into the model's window, for the gateway.

The first system message and the newest message are always kept; earlier turns are kept newest
first while they fit the budget (the window less the room asked for the answer) and the oldest
are dropped. Choosing renders the chat template once, over numbered markers instead of the
messages: that gives the template's own text around each message, so the conversation is
tokenised once with character offsets and each message's share of the tokens (its wrapper
included) is read off where its content ends. The gateway's one render of what was chosen, after
the guard, is exact and checks the budget (`render`); a template that rewrites what it is given
(so the markers do not come back in order) is estimated from each message's own tokens instead.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from typing import Any

from .tool_calls import ROLES, TOOLS, template_input

Message = tuple[str, str]  # (role, content); a tool conversation's parts as roles of their own (`tool_calls.py`)

_MARK = "\x00{}\x00"  # NUL cannot come from a template's own text
_MARKS = re.compile("\x00([0-9]+)\x00")


@dataclass(frozen=True)
class Choice:
    messages: tuple[Message, ...]  # the pinned system message, the kept turns, the newest message
    kept: int  # earlier turns kept
    dropped: int  # earlier turns dropped, oldest first
    tokens: int  # the chosen prompt's length in tokens, as estimated


def render(tokenizer: Any, messages: tuple[Message, ...] | list[Message]) -> list[int]:
    """The model's prompt for these messages: its chat template applied, ready for an answer."""
    conversation, tools = template_input(messages)
    rendered = tokenizer.apply_chat_template(conversation, tools=tools, add_generation_prompt=True, tokenize=True, return_dict=True)
    return list(rendered["input_ids"])


def pinned(roles: list[str]) -> int:
    """How many leading messages are never dropped: the tools offered, then the first system message
    (the newest message is never dropped either)."""
    head = 1 if roles[:1] == [TOOLS] else 0
    return head + (1 if len(roles) > head + 1 and roles[head] == "system" else 0)


def choose(tokenizer: Any, messages: tuple[Message, ...], budget: int) -> Choice:
    """The messages to send so the prompt fits `budget` tokens."""
    head = pinned([r for r, _ in messages])
    history = messages[head:-1]
    costs = _costs(tokenizer, messages)
    total = sum(costs)
    if total <= budget or not history:
        return Choice(messages, len(history), 0, total)
    history_costs = costs[head:-1]
    total -= sum(history_costs)  # the pinned messages alone
    kept = 0
    for cost in reversed(history_costs):
        if total + cost > budget:
            break
        total, kept = total + cost, kept + 1
    return Choice((*messages[:head], *history[len(history) - kept :], messages[-1]), kept, len(history) - kept, total)


def _costs(tokenizer: Any, messages: tuple[Message, ...]) -> list[int]:
    """Each message's share of the prompt's tokens: from where the previous message's content ends
    to where its own does (the last one also carries what follows it); they add up to its length."""
    if any(role in ROLES for role, _ in messages):  # (their content is JSON the template reads, not text a marker can stand in for)
        return _estimated(tokenizer, messages)
    skeleton = tokenizer.apply_chat_template(
        [{"role": r, "content": _MARK.format(i)} for i, (r, _) in enumerate(messages)], add_generation_prompt=True, tokenize=False
    )
    parts = _MARKS.split(skeleton)  # [wrapper, "0", wrapper, "1", ..., wrapper]
    if [int(n) for n in parts[1::2]] != list(range(len(messages))):  # it rewrites contents: estimate
        return _estimated(tokenizer, messages)
    wrappers, pieces, ends = parts[0::2], [], []
    at = 0
    for wrapper, (_, content) in zip(wrappers, messages, strict=False):
        pieces += [wrapper, content]
        at += len(wrapper) + len(content)
        ends.append(at)
    pieces.append(wrappers[-1])
    encoded = tokenizer("".join(pieces), add_special_tokens=False, return_offsets_mapping=True)
    starts = [start for start, _ in encoded["offset_mapping"]]
    bounds = [0, *(bisect.bisect_left(starts, end) for end in ends[:-1]), len(starts)]  # tokens starting before each end
    return [bounds[i + 1] - bounds[i] for i in range(len(messages))]


def _estimated(tokenizer: Any, messages: tuple[Message, ...]) -> list[int]:
    ids = render(tokenizer, messages)
    own = [len(tokenizer(content, add_special_tokens=False)["input_ids"]) if content else 0 for _, content in messages]
    wrapper = max(0, len(ids) - sum(own))
    return [n + wrapper // len(messages) + (wrapper % len(messages) if i == len(messages) - 1 else 0) for i, n in enumerate(own)]
