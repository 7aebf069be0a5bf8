"""Constrained decoding: a row whose output must follow a grammar (a JSON schema, a regular
expression, a choice of strings, a Lark or GBNF grammar) gets, at each step, only the tokens
that keep it inside the grammar.

The grammar work is llguidance's (the library behind vLLM's and SGLang's `guidance` backend:
a Rust Earley parser over the tokenizer's trie, a few tens of microseconds per token on this
CPU, no GPU and no compiler needed). Here: its tokenizer built once per engine, one matcher per
row, its bitmask turned into a mask on that row's scores, and each chosen token fed back.
"""

from __future__ import annotations

import json
import threading
from typing import TYPE_CHECKING, Any

import llguidance
import llguidance.hf
import llguidance.numpy
import numpy as np
import torch

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

from .types import Grammar, InvalidRequest

BITS = torch.arange(32, dtype=torch.int32)
JSON_LAYOUT: JsonCompileOptions = {"whitespace_flexible": False, "key_separator": ": ", "item_separator": ", "}


class Grammars:
    """The engine's llguidance tokenizer (built on first use: about a second) and its grammars."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos_ids: frozenset[int]) -> None:
        self._hf, self.vocab_size, self.eos_ids = tokenizer, vocab_size, eos_ids
        self._tokenizer: llguidance.LLTokenizer | None = None
        self._lock = threading.Lock()

    @property
    def tokenizer(self) -> llguidance.LLTokenizer:
        with self._lock:
            if self._tokenizer is None:
                # (every token that ends an answer here ends it for the grammar too, allowed once it is complete)
                self._tokenizer = llguidance.hf.from_tokenizer(self._hf, n_vocab=self.vocab_size, eos_token=sorted(self.eos_ids))
            return self._tokenizer

    def compile(self, grammar: Grammar) -> str:
        """The llguidance grammar, or InvalidRequest naming the request's field and what is wrong."""
        try:
            if grammar.kind == "json_schema":
                # JSON laid out as people write it, one way: a grammar that allowed any whitespace
                # would let a model pad forever (vLLM's `disable_any_whitespace`)
                text = llguidance.LLMatcher.grammar_from_json_schema(json.loads(grammar.text), defaults=JSON_LAYOUT)
            else:
                text = llguidance.grammar_from(grammar.kind, grammar.text)  # type: ignore[arg-type]
        except (ValueError, TypeError) as exc:
            raise InvalidRequest(f"{grammar.field} is not a valid {grammar.kind}: {exc}", grammar.field) from None
        error = llguidance.LLMatcher.validate_grammar(text, self.tokenizer)
        if error:
            raise InvalidRequest(f"{grammar.field} is not a valid {grammar.kind}: {error.strip()[:500]}", grammar.field)
        return text

    def matcher(self, compiled: str) -> Constraint:
        return Constraint(llguidance.LLMatcher(self.tokenizer, compiled), self.vocab_size)


class Constraint:
    """One row's grammar state."""

    def __init__(self, matcher: llguidance.LLMatcher, vocab_size: int) -> None:
        self.matcher, self.vocab_size = matcher, vocab_size
        self._bits = llguidance.numpy.allocate_token_bitmask(1, vocab_size)

    def mask(self, scores: torch.Tensor) -> None:
        """Only the tokens the grammar allows next keep their score ([1, V], in place)."""
        llguidance.numpy.fill_next_token_bitmask(self.matcher, self._bits, 0)
        words = torch.from_numpy(np.ascontiguousarray(self._bits[0]))
        allowed = ((words[:, None] >> BITS) & 1).bool().view(-1)
        n = min(scores.shape[-1], allowed.shape[0])
        scores[0, :n].masked_fill_(~allowed[:n], float("-inf"))
        scores[0, n:] = float("-inf")  # (ids past the tokenizer's vocabulary: never text)

    def consume(self, token: int) -> None:
        self.matcher.consume_token(token)

    @property
    def failed(self) -> str | None:
        return self.matcher.get_error() or None if self.matcher.is_error() else None

    @property
    def done(self) -> bool:
        """Nothing may follow: the grammar is complete and allows no more tokens."""
        return bool(self.matcher.is_stopped())

    def fork(self) -> Constraint:
        return Constraint(self.matcher.deep_copy(), self.vocab_size)
