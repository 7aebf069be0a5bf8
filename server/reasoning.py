"""A reasoning model's thinking, told apart from its answer as the text streams.

DeepSeek-R1 and the models distilled from it (and QwQ, Qwen3) write `<think>…</think>` before the
answer; the R1-distilled ones' chat template already opens `<think>` in the prompt, so their
output starts inside the section. Like vLLM's `deepseek_r1` reasoning parser: text up to the first
`</think>` is reasoning (after a leading `<think>`, when the template did not open it), the rest
is the answer; an answer that never closes the section was all reasoning. A tag split across
deltas is held back until it is whole.
"""

from __future__ import annotations

OPEN, CLOSE = "<think>", "</think>"


class ReasoningSplit:
    def __init__(self, opened: bool) -> None:
        """`opened`: the prompt already opened the section (the output starts inside it)."""
        self._state = "thinking" if opened else "start"  # start: a leading <think> may still come
        self._held = ""
        self._answered = False  # whether any of the answer went out (the newlines after </think> are not its own)

    def feed(self, text: str) -> tuple[str, str]:
        """Raw output in; (reasoning, answer) that can go out now."""
        self._held += text
        reasoning = answer = ""
        while True:
            if self._state == "start":
                stripped = self._held.lstrip()
                if stripped.startswith(OPEN):
                    self._held, self._state = stripped[len(OPEN) :], "thinking"
                    continue
                if OPEN.startswith(stripped):  # (empty, or a tag still arriving)
                    return reasoning, answer
                self._state = "answering"  # no section: it is all answer
            if self._state == "thinking":
                cut = self._held.find(CLOSE)
                if cut >= 0:
                    reasoning += self._held[:cut]
                    self._held, self._state = self._held[cut + len(CLOSE) :], "answering"
                    continue
                keep = _partial_tag(self._held)
                reasoning += self._held[: len(self._held) - keep]
                self._held = self._held[len(self._held) - keep :]
                return reasoning, answer
            if not self._answered:
                self._held = self._held.lstrip("\n")
            answer += self._held
            self._answered = self._answered or bool(self._held)
            self._held = ""
            return reasoning, answer

    def finish(self) -> tuple[str, str]:
        """At the end: what was held back, where it belongs."""
        held, self._held = self._held, ""
        if self._state == "thinking":
            return held, ""
        return "", held if self._answered else held.lstrip("\n")


def _partial_tag(text: str) -> int:
    """How long a tail of `text` could be the start of `</think>`."""
    for n in range(min(len(CLOSE) - 1, len(text)), 0, -1):
        if CLOSE.startswith(text[-n:]):
            return n
    return 0
