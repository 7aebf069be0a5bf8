"""Invisible and bidirectional control characters (Trojan Source, tag-character smuggling).

Code is flagged and never rewritten (a changed byte in a string literal changes the program);
chat text has them stripped. A zero-width joiner inside an emoji sequence and a byte-order
mark at the very start are ordinary and pass.
"""

from __future__ import annotations

import unicodedata

from .report import Span

BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")
BANNED_CATEGORIES = ("Cf", "Co", "Cn")
ZWJ = "\u200d"


def _kind(ch: str) -> str:
    if ch in BIDI:
        return "bidi_control"
    if 0xE0000 <= ord(ch) <= 0xE007F:
        return "tag_character"
    if unicodedata.category(ch) == "Co":
        return "private_use"
    if unicodedata.category(ch) == "Cn":
        return "unassigned"
    return "invisible"


def _is_symbol(ch: str) -> bool:
    return unicodedata.category(ch) in ("So", "Sk", "Mn") or "\U0001f3fb" <= ch <= "\U0001f3ff"


def find_invisible(text: str) -> list[Span]:
    """One span per run of consecutive invisible characters of one kind."""
    if text.isascii():
        return []
    spans: list[Span] = []
    for i, ch in enumerate(text):
        if ch.isascii() or unicodedata.category(ch) not in BANNED_CATEGORIES:
            continue
        if i == 0 and ch == "\ufeff":
            continue
        if ch == ZWJ and 0 < i < len(text) - 1 and _is_symbol(text[i - 1]) and _is_symbol(text[i + 1]):
            continue
        kind = _kind(ch)
        if spans and spans[-1].end == i and spans[-1].type == kind:
            spans[-1] = Span(spans[-1].start, i + 1, kind)
        else:
            spans.append(Span(i, i + 1, kind))
    return spans


def strip(text: str, spans: list[Span]) -> str:
    parts, at = [], 0
    for span in spans:
        parts.append(text[at : span.start])
        at = span.end
    parts.append(text[at:])
    return "".join(parts)
