"""A small LRU of prompt KV, so a prompt that begins like a recent one skips that part of prefill.

As-you-type completion sends the same long prefix again at every keystroke, and a chat's next
turn begins with the whole previous conversation; both hit here. Entries are whole prompts; a new
prompt reuses the longest common prefix with any entry (token-exact), bounded by a token budget.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from .prefill import KV


class PrefixCache:
    def __init__(self, max_tokens: int, min_reuse: int = 16) -> None:
        self.max_tokens = max_tokens
        self.min_reuse = min_reuse
        self._entries: OrderedDict[tuple[int, ...], tuple[torch.Tensor, KV]] = OrderedDict()
        self._tokens = 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, prompt: list[int]) -> tuple[int, KV | None]:
        """Longest reusable prefix: (token count, its KV). At most len(prompt) - 1 tokens are
        reused, because the last prompt token must run through the model to give logits."""
        if self.max_tokens <= 0 or not self._entries:
            return 0, None
        query = torch.tensor(prompt[:-1], dtype=torch.long)
        best, best_key = 0, None
        for key, (ids, _) in self._entries.items():
            n = min(len(key), len(query))
            if n <= best:
                continue
            same = ids[:n] == query[:n]
            common = n if bool(same.all()) else int(same.int().argmin())
            if common > best:
                best, best_key = common, key
        if best < self.min_reuse or best_key is None:
            return 0, None
        self._entries.move_to_end(best_key)
        return best, self._entries[best_key][1]

    def store(self, prompt: list[int], kv: KV) -> None:
        if len(prompt) < self.min_reuse or len(prompt) > self.max_tokens:
            return
        key = tuple(prompt)
        if key in self._entries:
            self._entries.move_to_end(key)
            return
        self._entries[key] = (torch.tensor(prompt, dtype=torch.long), kv)
        self._tokens += len(key)
        while self._tokens > self.max_tokens:
            old, _ = self._entries.popitem(last=False)
            self._tokens -= len(old)
