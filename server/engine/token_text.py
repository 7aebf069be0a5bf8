"""Single tokens as text and bytes, for log-probabilities.

A byte-level BPE token (GPT-2's scheme, which Qwen2 and the default model use) may hold part of
a UTF-8 character, so its text alone is not its content: OpenAI reports each token's `bytes`
beside its text, and this gives both (the bytes from the byte-level alphabet where the tokenizer
has one, the text as the tokenizer decodes the token alone).
"""

from __future__ import annotations

import functools
from typing import Any

from transformers.convert_slow_tokenizer import bytes_to_unicode


class TokenText:
    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._byte_of = {c: b for b, c in bytes_to_unicode().items()}
        self.text = functools.lru_cache(maxsize=65536)(self._text)
        self.bytes = functools.lru_cache(maxsize=65536)(self._bytes)

    def _text(self, token_id: int) -> str:
        return str(self._tokenizer.decode([token_id], skip_special_tokens=False))

    def _bytes(self, token_id: int) -> bytes:
        piece = self._tokenizer.convert_ids_to_tokens(token_id)
        if isinstance(piece, str) and piece and all(c in self._byte_of for c in piece):
            return bytes(self._byte_of[c] for c in piece)
        return self.text(token_id).encode("utf-8")
