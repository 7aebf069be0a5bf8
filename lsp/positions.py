"""LSP positions are UTF-16 code units; Python strings index code points. And text from the client
is cleaned of lone surrogates (`clean`, `scrub`) before anything uses it.

Written here rather than taken from pygls's codec because that one is lenient on purpose (a
position past the end is clamped, a position inside a surrogate pair rounds up) and mutates the
request's Position; a completion at a position the client got wrong must be refused, not guessed.
"""

from __future__ import annotations

import re
from typing import Any


class PositionError(ValueError):
    pass


def utf16_units(ch: str) -> int:
    return 2 if ord(ch) > 0xFFFF else 1


def offset_of(text: str, line: int, character: int) -> int:
    """The code-point offset in `text` of (line, UTF-16 character)."""
    if line < 0 or character < 0:
        raise PositionError(f"negative position ({line}, {character})")
    start = 0
    for _ in range(line):
        nl = text.find("\n", start)
        if nl < 0:
            raise PositionError(f"line {line} is past the end of the document ({text.count(chr(10)) + 1} lines)")
        start = nl + 1
    end = text.find("\n", start)
    end = len(text) if end < 0 else end
    if end > start and text[end - 1] == "\r":
        end -= 1
    units, at = 0, start
    while units < character:
        if at >= end:
            raise PositionError(f"character {character} is past the end of line {line} ({units} UTF-16 units)")
        units += utf16_units(text[at])
        at += 1
    if units != character:
        raise PositionError(f"character {character} of line {line} falls inside a surrogate pair")
    return at


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def clean(text: str) -> str:
    """`text` with each lone surrogate (JSON can carry one, escaped: "\\udc80") replaced by U+FFFD.

    A lone surrogate cannot be encoded as UTF-8, so a document holding one would break every
    prompt it reaches (its own and, as a snippet, those of every other document of its language).
    U+FFFD is one UTF-16 unit too, so the client's positions still mean the same place. JSON
    decoding joins an escaped pair into one code point: whatever surrogate is left is a lone one.
    """
    return _LONE_SURROGATE.sub("\ufffd", text) if _LONE_SURROGATE.search(text) else text


def scrub(value: Any) -> Any:
    """Decoded JSON with every string (keys too) `clean`."""
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, list):
        return [scrub(v) for v in value]
    if isinstance(value, dict):
        return {clean(k): scrub(v) for k, v in value.items()}
    return value
