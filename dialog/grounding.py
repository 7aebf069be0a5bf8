"""Answers grounded in the site's own knowledge: each turn's question (with the visitor's previous
one, for follow-ups) finds the best passages of the site's knowledge base, and the system prompt
lays them out, numbered under their titles, for the model to answer from. The answer then carries
their titles as its sources, and the audit record names them. A site without documents is
answered from its system prompt alone, as before."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .knowledge.index import Hit, KnowledgeBase

MAX_PASSAGES = 3
MAX_PASSAGE_CHARS = 800
RELATIVE_CUTOFF = 0.5  # a passage scoring under half the best one matched a stray word ("days"), not the question
INSTRUCTIONS = (
    "Answer the customer's question from the passages below, in one or two sentences, using their words. "
    "If the passages do not answer it, say that you do not know and offer to connect them with a person. "
    "Do not make anything up."
)
NOTHING_FOUND = (
    "Nothing in the company's documents answers this. If the customer asks about the company, its products, "
    "orders or policies, say that you do not know and offer to connect them with a person. Do not make anything up."
)


@dataclass(frozen=True)
class Grounding:
    system: str  # the site's system prompt with the passages (or what to do without any)
    hits: tuple[Hit, ...]

    @property
    def sources(self) -> list[dict[str, Any]]:
        """What the visitor is shown: each passage's document and heading, once."""
        seen: dict[tuple[str, str], dict[str, Any]] = {}
        for h in self.hits:
            seen.setdefault((h.source, h.heading), {"title": h.title, "heading": h.heading, "source": h.source})
        return list(seen.values())

    @property
    def refs(self) -> tuple[str, ...]:
        return tuple(f"{h.source}#{h.passage_id}" for h in self.hits)


async def ground(
    kb: KnowledgeBase, site_key: str, system_prompt: str, question: str, previous: str | None, budget_chars: int
) -> Grounding | None:
    """The system prompt for this turn; passages are taken best first while they fit `budget_chars`
    (a share of the model's window: the conversation needs the rest)."""
    if not await kb.has_documents(site_key):
        return None
    hits = await kb.search(site_key, question, MAX_PASSAGES)
    if not hits and previous:  # a follow-up ("and to Norway?") leans on the question before it
        hits = await kb.search(site_key, f"{previous} {question}", MAX_PASSAGES)
    hits = [h for h in hits if h.score >= RELATIVE_CUTOFF * hits[0].score] if hits else []
    kept: list[Hit] = []
    used = 0
    for h in hits:
        size = min(len(h.text), MAX_PASSAGE_CHARS) + len(h.title) + len(h.heading) + 8
        if kept and used + size > budget_chars:
            break
        kept.append(h)
        used += size
    hits = kept
    if not hits:
        return Grounding(f"{system_prompt}\n\n{NOTHING_FOUND}", ())
    laid_out = "\n\n".join(
        f"[{i}] {h.title}{' › ' + h.heading.split(' › ', 1)[-1] if h.heading and h.heading != h.title else ''}\n"
        f"{h.text[: min(MAX_PASSAGE_CHARS, max(80, budget_chars))]}"
        for i, h in enumerate(hits, 1)
    )
    return Grounding(f"{system_prompt}\n\n{INSTRUCTIONS}\n\nPassages:\n\n{laid_out}", tuple(hits))
