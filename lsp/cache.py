"""Completions cached on the document state around the cursor.

A repeated request (same prefix and suffix) is answered from the cache; so is typing through the
current suggestion: if the new prefix is an old prefix plus characters that begin that old
completion, the rest of the completion is still the answer, with no engine call.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass


def _key(prefix: str, suffix: str) -> str:
    return hashlib.sha1(f"{len(prefix)}\0{prefix[-4000:]}\0{suffix[:1000]}".encode("utf-8", "surrogatepass")).hexdigest()


@dataclass
class Entry:
    prefix: str
    suffix: str
    completion: str
    request_id: str


class CompletionCache:
    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._exact: OrderedDict[str, Entry] = OrderedDict()
        self._recent: dict[str, list[Entry]] = {}  # per document, newest last
        self.hits = self.misses = 0

    def put(self, uri: str, prefix: str, suffix: str, completion: str, request_id: str) -> None:
        entry = Entry(prefix, suffix, completion, request_id)
        key = _key(prefix, suffix)
        self._exact[key] = entry
        self._exact.move_to_end(key)
        while len(self._exact) > self.size:
            self._exact.popitem(last=False)
        recent = self._recent.setdefault(uri, [])
        recent.append(entry)
        del recent[:-8]

    def get(self, uri: str, prefix: str, suffix: str) -> Entry | None:
        found = self._exact.get(_key(prefix, suffix))
        if found is None:
            for old in reversed(self._recent.get(uri, [])):
                typed = prefix[len(old.prefix):] if prefix.startswith(old.prefix) else None
                if typed and old.suffix == suffix and old.completion.startswith(typed) and len(old.completion) > len(typed):
                    found = Entry(prefix, suffix, old.completion[len(typed):], old.request_id)
                    break
        if found is None:
            self.misses += 1
        else:
            self.hits += 1
        return found

    def forget(self, uri: str) -> None:
        self._recent.pop(uri, None)
