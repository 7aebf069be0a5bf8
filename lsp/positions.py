"""LSP positions are UTF-16 code units; Python strings index code points.

Written here rather than taken from pygls's codec because that one is lenient on purpose (a
position past the end is clamped, a position inside a surrogate pair rounds up) and mutates the
request's Position; a completion at a position the client got wrong must be refused, not guessed.
"""

from __future__ import annotations


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
