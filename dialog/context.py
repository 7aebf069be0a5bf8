"""Fitting a conversation into the model's window.

The site's system prompt and the newest user message are always kept; earlier turns are added
newest first while they fit the budget (the window less the room kept for the answer), and the
oldest ones are dropped. What was kept and dropped goes into the audit record.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Fitted:
    messages: tuple[tuple[str, str], ...]  # (role, content), system first, newest user message last
    turns_kept: int
    turns_dropped: int
    tokens: int
    budget: int

    def audit(self, window: int) -> dict[str, int]:
        return {"window": window, "budget": self.budget, "tokens": self.tokens, "turns_included": self.turns_kept, "turns_dropped": self.turns_dropped}


class TooLong(Exception):
    """Even the system prompt and the new message alone do not fit."""


def fit(system: str, history: list[tuple[str, str]], new: str, count: Callable[[list[tuple[str, str]]], int], budget: int) -> Fitted:
    """`count(messages)` is the exact prompt length in tokens (the model's chat template applied)."""
    pinned = [("system", system), ("user", new)]
    base = count(pinned)
    if base > budget:
        raise TooLong(f"the message needs {base} tokens; the conversation window leaves {budget}")
    # per-message costs, to choose the turns without re-templating for every candidate
    costs = [count([m]) for m in history]
    kept, total = 0, base
    for cost in reversed(costs):
        if total + cost > budget:
            break
        total, kept = total + cost, kept + 1
    while True:  # the exact count confirms it; template overheads can differ slightly
        chosen = history[len(history) - kept:] if kept else []
        messages = [pinned[0], *chosen, pinned[1]]
        tokens = count(messages)
        if tokens <= budget or kept == 0:
            return Fitted(tuple(messages), kept, len(history) - kept, tokens, budget)
        kept -= 1
