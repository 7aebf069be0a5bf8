"""Prompts rendered and counted with the model's own tokenizer (exact).

For the in-process engine the prompt goes out as token ids. For an upstream whose model's
tokenizer is installed here, counts stay exact but the prompt goes out as the upstream takes it:
a conversation as messages (the upstream applies its own template), fill-in-the-middle as text
built from the model's control tokens (no OpenAI server takes token ids from every client, and
vLLM has no `suffix`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from .. import chat_window
from ..chat_window import Choice, Message
from ..engine.types import Messages
from ..tool_calls import HERMES, OPEN
from .protocol import Rendered


class TokenizerText:
    def __init__(self, tokenizer: Any, fim_tokens: tuple[str, str, str] | None, as_ids: bool = True) -> None:
        self.tokenizer, self.fim_tokens, self.as_ids = tokenizer, fim_tokens, as_ids
        self._special = [str(t) for t in getattr(tokenizer, "all_special_tokens", [])] + [
            str(t) for t in (getattr(tokenizer, "added_tokens_encoder", {}) or {})
        ]

    @property
    def chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    @functools.cached_property
    def reasoning(self) -> bool | None:
        template = str(getattr(self.tokenizer, "chat_template", None) or "")
        if "<think>" not in template and "</think>" not in template and "<think>" not in self.tokenizer.get_vocab():
            return None
        try:
            prompt = self.tokenizer.apply_chat_template([{"role": "user", "content": "x"}], add_generation_prompt=True, tokenize=False)
        except Exception:  # a template that cannot render a plain question: it says nothing of thinking
            return False
        return str(prompt).rstrip().endswith("<think>")

    @functools.cached_property
    def tools(self) -> str | None:
        if not self.as_ids or "tools" not in str(getattr(self.tokenizer, "chat_template", None) or ""):
            return None  # (an upstream gets messages, not a prompt rendered here: tools are not passed on)
        probe = [{"type": "function", "function": {"name": "probe_tool", "description": "", "parameters": {"type": "object"}}}]
        try:
            prompt = str(self.tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tools=probe, tokenize=False))
        except Exception:  # a template that cannot render tools does not serve them
            return None
        # Hermes' format, with its tag one token (the grammar that forces a call names the token)
        one_token = len(self.tokenizer(OPEN, add_special_tokens=False)["input_ids"]) == 1
        return HERMES if OPEN in prompt and "probe_tool" in prompt and one_token else None

    @property
    def fim(self) -> bool:
        return self.fim_tokens is not None

    @property
    def special_tokens(self) -> list[str]:
        return self._special

    def choose(self, messages: tuple[Message, ...], budget: int) -> Choice:
        return chat_window.choose(self.tokenizer, messages, budget)

    def render_chat(self, messages: Sequence[Message]) -> Rendered:
        ids = chat_window.render(self.tokenizer, list(messages))
        return Rendered(ids if self.as_ids else Messages(tuple(messages)), len(ids))

    def render_fim(self, prefix: str, suffix: str) -> Rendered:
        if self.fim_tokens is None:
            raise ValueError("the model has no fill-in-the-middle tokens")
        ids = fim_prompt_ids(self.tokenizer, self.fim_tokens, prefix, suffix)
        if self.as_ids:
            return Rendered(ids, len(ids))
        pre, suf, mid = self.fim_tokens
        return Rendered(f"{pre}{prefix}{suf}{suffix}{mid}", len(ids))

    def encode(self, text: str | Sequence[Message], special: bool) -> list[int]:
        if not isinstance(text, str):
            return chat_window.render(self.tokenizer, list(text))
        return list(self.tokenizer(text, add_special_tokens=special)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        vocab = len(self.tokenizer)
        if any(not 0 <= i < vocab for i in ids):  # the tokenizer cannot decode them for the guard
            raise ValueError(f"prompt token ids must be integers in [0, {vocab})")
        return str(self.tokenizer.decode(ids))


def fim_prompt_ids(tokenizer: Any, tokens: tuple[str, str, str], prefix: str, suffix: str) -> list[int]:
    """The model's fill-in-the-middle prompt (prefix, suffix, middle order: the one the Qwen and
    StarCoder families are trained on) as token ids. The control tokens come from the tokenizer's
    vocabulary and the code is encoded with special tokens split, so a file that contains the text
    `<|fim_suffix|>` is code to the model, not a second hole."""
    pre, suf, mid = (tokenizer.convert_tokens_to_ids(t) for t in tokens)

    def code(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]) if text else []

    return [pre, *code(prefix), suf, *code(suffix), mid]
