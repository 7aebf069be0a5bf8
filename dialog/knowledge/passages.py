"""Sections cut into passages small enough for a small model to read several of in one prompt and
copy a fact from: whole paragraphs where they fit, sentences where a paragraph is too long, never
across a heading. Each passage keeps its heading path and its document's title and source."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .documents import Document

MAX_WORDS = 90  # a passage: about 120 tokens of the default model


@dataclass(frozen=True)
class Passage:
    source: str
    title: str
    heading: str  # the heading path joined with " › " (empty above the first heading)
    ordinal: int  # its place in the document
    text: str

    @property
    def words(self) -> int:
        return len(self.text.split())


def passages(doc: Document, max_words: int = MAX_WORDS) -> list[Passage]:
    out: list[Passage] = []
    for section in doc.sections:
        heading = " › ".join(section.headings)
        for text in _pack(_pieces(section.text, max_words), max_words):
            out.append(Passage(doc.source, doc.title, heading, len(out), text))
    return out


def _pieces(text: str, max_words: int) -> list[str]:
    """Paragraphs, and the sentences (then word runs) of any paragraph longer than a passage."""
    out: list[str] = []
    for para in re.split(r"\n\s*\n", text):
        para = para.strip()
        if not para:
            continue
        if len(para.split()) <= max_words:
            out.append(para)
            continue
        for sentence in re.split(r"(?<=[.!?])\s+", para):
            words = sentence.split()
            out += [" ".join(words[i : i + max_words]) for i in range(0, len(words), max_words)]
    return out


def _pack(pieces: list[str], max_words: int) -> list[str]:
    """Consecutive pieces joined while they fit one passage."""
    out: list[str] = []
    size = 0
    for piece in pieces:
        n = len(piece.split())
        if out and size + n <= max_words:
            out[-1] += "\n\n" + piece
            size += n
        else:
            out.append(piece)
            size = n
    return out
