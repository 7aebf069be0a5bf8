"""Answers grounded in the site's own knowledge. Each turn's question (with the visitor's previous
one, for follow-ups) finds the best passages of the site's knowledge base; then one of three things:

* a passage answers it: the system prompt lays the passages out, numbered under their titles, for
  the model to answer from, and the answer ends with the passage's own words (an excerpt under its
  title) unless the model already stated its figures: a small model paraphrases loosely, the
  excerpt is what the visitor can rely on. The answer carries the passages' titles as its sources
  and the audit record names them;
* nothing answers it: the bot says it does not know and offers a person, in the visitor's language,
  without asking the model (which, this small, invents rather than admits);
* a greeting or thanks (no significant word at all): the model answers from the site's prompt.

A site without documents is answered from its system prompt alone, as before."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any

from .knowledge.index import STOPWORDS, Hit, KnowledgeBase, match_expression

MAX_PASSAGES = 3
MAX_PASSAGE_CHARS = 800
RELATIVE_CUTOFF = 0.5  # a passage scoring under half the best one matched a stray word ("days"), not the question
# Cosines (all-MiniLM-L6-v2) under which the passages are about something else: the best sentence
# and the best passage must both come close to the question. Set on the support benchmark's
# questions (`tandem bench-support`; README), where they keep most answerable questions and turn
# most unanswerable ones into "I don't know"; a sentence is the sharper signal, a passage guards it.
SENTENCE_FLOOR = 0.47
PASSAGE_FLOOR = 0.36
# BM25 alone has no comparable score: the best passage must contain this share of the question's
# significant words (prefixes, so "returns" meets "returned").
COVERAGE_FLOOR = 0.5
EXCERPT_SENTENCES = 3
EXCERPT_SHARE = 0.7  # a sentence scoring under this share of the best one answers something else
FOLLOW_UP_WORDS = 3  # a question this short that finds nothing on its own is read with the one before it
INSTRUCTIONS = (
    "Answer the customer's question from the passages below, in one or two sentences, using their words. "
    "If the passages do not answer it, say that you do not know and offer to connect them with a person. "
    "Do not make anything up."
)
SMALL_TALK = "If the customer greets or thanks you, reply briefly and ask how you can help. Do not make anything up."


@dataclass(frozen=True)
class Grounding:
    system: str  # the site's system prompt with the passages (or what to do without any)
    hits: tuple[Hit, ...]
    excerpt: str | None = None  # the best passage's own words for this question, with its title
    unknown: bool = False  # nothing answers the question: the honest reply, not the model's

    @property
    def figures(self) -> tuple[str, ...]:
        """The quoted words' numbers: an answer stating all of them needs no excerpt."""
        quoted = re.findall(r"“([^”]*)”", self.excerpt or "")
        return tuple(dict.fromkeys(f for q in quoted for f in re.findall(r"\d+(?:[.,:]\d+)*", q)))

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

    def appendix(self, answer: str, quote_label: str) -> str:
        """What follows the model's answer: the excerpt, unless the answer already states its figures."""
        if self.excerpt is None:
            return ""
        if self.figures and all(re.search(rf"(?<![\d.]){re.escape(f)}(?![\d])", answer) for f in self.figures):
            return ""
        return f"\n\n{quote_label} {self.excerpt}"


def _terms(text: str) -> set[str]:
    return {w[:5] for w in re.findall(r"\w+", text.lower()) if w not in STOPWORDS and len(w) > 2}


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+|\n+", text) if len(s.strip()) > 3]


def _label(hit: Hit) -> str:
    inner = hit.heading.split(" › ", 1)[-1] if hit.heading and hit.heading != hit.title else ""
    return f"{hit.title} › {inner}" if inner else hit.title


@dataclass(frozen=True)
class _Sentence:
    hit: Hit
    text: str
    order: int  # its place among the candidates: the passages' ranking, then the passage's own order
    score: float  # cosine with the question (dense), or shared words (BM25 alone)


async def _sentences_ranked(kb: KnowledgeBase, question: str, hits: list[Hit]) -> list[_Sentence]:
    """The passages' sentences, closest to the question first."""
    candidates = [(h, s) for h in hits for s in _sentences(h.text)]
    if not candidates:
        return []
    if kb.embedder is not None and hits[0].similarity is not None:
        vectors = await asyncio.to_thread(kb.embedder.embed, [question] + [s for _, s in candidates])
        scores = (vectors[1:] @ vectors[0]).tolist()
    else:
        wanted = _terms(question)
        scores = [len(wanted & _terms(s)) + (0.5 if h is hits[0] else 0.0) for h, s in candidates]
    ranked = [_Sentence(h, s, i, float(score)) for i, ((h, s), score) in enumerate(zip(candidates, scores, strict=True))]
    return sorted(ranked, key=lambda x: -x.score)


def relevant(question: str, hits: list[Hit], sentences: list[_Sentence]) -> bool:
    """Whether the best passages are about the question at all."""
    if not hits or not sentences:
        return False
    if hits[0].similarity is not None:
        return sentences[0].score >= SENTENCE_FLOOR and max(h.similarity or 0.0 for h in hits) >= PASSAGE_FLOOR
    wanted = _terms(question)
    top = hits[0]
    return bool(wanted) and len(wanted & _terms(f"{top.title} {top.heading} {top.text}")) / len(wanted) >= COVERAGE_FLOOR


def excerpt(sentences: list[_Sentence]) -> str:
    """The best sentences, in their passages' order, each passage's quoted under its title."""
    close = [x for x in sentences[:EXCERPT_SENTENCES] if x.score >= sentences[0].score * EXCERPT_SHARE]
    chosen = sorted(close, key=lambda x: x.order)
    groups: dict[str, tuple[Hit, list[str]]] = {}
    for x in chosen:
        groups.setdefault(x.hit.passage_id, (x.hit, []))[1].append(x.text)
    return " ".join(f"*{_label(hit)}*: “{' '.join(texts)}”" for hit, texts in groups.values())


async def ground(
    kb: KnowledgeBase,
    site_key: str,
    system_prompt: str,
    question: str,
    previous: str | None,
    budget_chars: int,
    dense: bool = True,
) -> Grounding | None:
    """This turn's grounding; passages are taken best first while they fit `budget_chars` (a share
    of the model's window: the conversation needs the rest). None: the site has no documents."""
    if not await kb.has_documents(site_key):
        return None
    if match_expression(question) is None:  # "hello", "thanks!": nothing to look up
        return Grounding(f"{system_prompt}\n\n{SMALL_TALK}", ())
    asked = [question]
    if previous and len(_terms(question)) <= FOLLOW_UP_WORDS:  # "and to Norway?" leans on the question before it
        asked.append(f"{previous} {question}")
    for query in asked:  # the question alone first; the follow-up reading only if that finds nothing
        hits = await kb.search(site_key, query, MAX_PASSAGES, dense=dense)
        sentences = await _sentences_ranked(kb, query, hits)
        found = relevant(query, hits, sentences)
        if found:
            break
    if not found:
        return Grounding(system_prompt, (), unknown=True)
    quoted = excerpt(sentences)
    in_quote = {
        x.hit.passage_id for x in sentences[:EXCERPT_SENTENCES] if x.score >= sentences[0].score * EXCERPT_SHARE
    }  # always among the passages and sources
    if hits[0].similarity is not None:
        floor = max(h.similarity or 0.0 for h in hits) * 0.8
        hits = [h for h in hits if (h.similarity or 0.0) >= floor or h.passage_id in in_quote]
    else:
        hits = [h for h in hits if h.score >= RELATIVE_CUTOFF * hits[0].score or h.passage_id in in_quote]
    kept: list[Hit] = []
    used = 0
    for h in hits:
        size = min(len(h.text), MAX_PASSAGE_CHARS) + len(h.title) + len(h.heading) + 8
        if kept and used + size > budget_chars:
            break
        kept.append(h)
        used += size
    laid_out = "\n\n".join(f"[{i}] {_label(h)}\n{h.text[: min(MAX_PASSAGE_CHARS, max(80, budget_chars))]}" for i, h in enumerate(kept, 1))
    return Grounding(f"{system_prompt}\n\n{INSTRUCTIONS}\n\nPassages:\n\n{laid_out}", tuple(kept), quoted or None)
