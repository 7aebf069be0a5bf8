"""The knowledge base in the chat store: documents and their passages, guarded before they are
kept, and found again by BM25 over SQLite's FTS5 index (Porter-stemmed, accents folded) and, where
the embedding model is installed, by the passages' sentence vectors, the two rankings fused
(reciprocal rank fusion: BM25 finds the rare exact words, the vectors find the paraphrases)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from server.clock import utc_now as now
from server.gateway import redact_secrets

from ..shielded import shield_methods
from ..store import new_id
from .documents import Document, Section, read
from .embeddings import Embedder
from .passages import Passage, passages

# Words that say nothing about which passage answers (a question's "how", "do", "I").
STOPWORDS = frozenset(
    """a an and are as at be been but by can could did do does for from had has have how i if in into is it its me my
    no not of on or our please should so than that the their them then there these they this to us was we were what when
    where which who why will with would you your hi hello thanks thank""".split()
)
MAX_QUERY_WORDS = 32
HEADING_WEIGHT, TITLE_WEIGHT = 2.0, 1.5  # a word in a heading or title says more than one in the text
RRF_K = 60  # reciprocal rank fusion's constant, as its paper and every hybrid search engine use
CANDIDATES = 10  # how deep each ranking is read before they are fused


@dataclass(frozen=True)
class Hit:
    passage_id: str
    source: str
    title: str
    heading: str
    text: str
    score: float  # BM25 (higher is better here; 0 where only the vectors found it)
    similarity: float | None = None  # the question's cosine with the passage's vector (dense retrieval only)


@dataclass(frozen=True)
class Added:
    source: str
    passages: int
    redactions: int
    unchanged: bool  # the same file was there already: nothing read again


def query_words(query: str) -> list[str]:
    """A visitor's significant words, each matched on its own (so nothing they type is query
    syntax): any of them may match; the ranking puts passages with more, rarer ones first."""
    words = [w for w in re.findall(r"\w+", query.lower()) if w not in STOPWORDS and (len(w) > 1 or w.isdigit())]
    return list(dict.fromkeys(words))[:MAX_QUERY_WORDS]


def match_expression(query: str) -> str | None:
    """The FTS5 query for a visitor's words."""
    return " OR ".join(f'"{w}"' for w in query_words(query)) or None


@dataclass
class _Vectors:
    """A site's passages and their vectors, kept in memory until its passages change."""

    stamp: int  # the site's passage ids, hashed
    hits: list[Hit]
    matrix: Any  # torch float32 [passages, dim]


@shield_methods
class KnowledgeBase:
    def __init__(self, engine: AsyncEngine, embedder: Embedder | None = None) -> None:
        self.engine = engine
        self.embedder = embedder
        self._vectors: dict[str, _Vectors] = {}

    async def add(self, site_key: str, path: Path, source: str | None = None) -> Added:
        """Read, guard, split and index one file, replacing what was added under its name before."""
        source = redact_secrets(source or path.name)  # (a file name is the caller's text too)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        async with self.engine.connect() as conn:
            old = (
                await conn.execute(
                    text(
                        "SELECT sha256, redactions, (SELECT count(*) FROM knowledge_passages p WHERE p.document_id = d.id) AS n"
                        " FROM knowledge_documents d WHERE site_key = :s AND source = :src"
                    ),
                    {"s": site_key, "src": source},
                )
            ).first()
        if old is not None and old.sha256 == digest:
            return Added(source, old.n, old.redactions, unchanged=True)
        doc = read(path, source)
        guarded, redactions = _guarded(doc)
        async with self.engine.begin() as conn:
            await self._delete(conn, site_key, source)
            doc_id = new_id("doc")
            await conn.execute(
                text(
                    "INSERT INTO knowledge_documents (id, site_key, source, title, format, sha256, sections, redactions, added_at)"
                    " VALUES (:id, :s, :src, :title, :fmt, :sha, :sections, :red, :at)"
                ),
                {
                    "id": doc_id,
                    "s": site_key,
                    "src": source,
                    "title": guarded.title,
                    "fmt": guarded.format,
                    "sha": digest,
                    "sections": json.dumps([[list(s.headings), s.text] for s in guarded.sections], ensure_ascii=False),
                    "red": redactions,
                    "at": now(),
                },
            )
            count = await self._index(conn, site_key, doc_id, passages(guarded))
        return Added(source, count, redactions, unchanged=False)

    async def documents(self, site_key: str) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT d.source, d.title, d.format, d.redactions, d.added_at,"
                    " (SELECT count(*) FROM knowledge_passages p WHERE p.document_id = d.id) AS passages"
                    " FROM knowledge_documents d WHERE d.site_key = :s ORDER BY d.source"
                ),
                {"s": site_key},
            )
            return [dict(r._mapping) for r in rows]

    async def remove(self, site_key: str, source: str) -> bool:
        async with self.engine.begin() as conn:
            return await self._delete(conn, site_key, source)

    async def reindex(self, site_key: str) -> int:
        """Passages and index made again from the stored sections (after an upgrade changes how
        documents are split or indexed): no file is needed. Returns the number of passages."""
        total = 0
        async with self.engine.begin() as conn:
            docs = list(
                await conn.execute(
                    text("SELECT id, source, title, format, sections FROM knowledge_documents WHERE site_key = :s"), {"s": site_key}
                )
            )
            await conn.execute(text("DELETE FROM knowledge_fts WHERE site_key = :s"), {"s": site_key})
            await conn.execute(text("DELETE FROM knowledge_vectors WHERE site_key = :s"), {"s": site_key})
            await conn.execute(text("DELETE FROM knowledge_passages WHERE site_key = :s"), {"s": site_key})
            for d in docs:
                sections = tuple(Section(tuple(h), t) for h, t in json.loads(d.sections))
                total += await self._index(conn, site_key, d.id, passages(Document(d.source, d.title, d.format, sections)))
        return total

    async def has_documents(self, site_key: str) -> bool:
        async with self.engine.connect() as conn:
            found = await conn.execute(text("SELECT 1 FROM knowledge_documents WHERE site_key = :s LIMIT 1"), {"s": site_key})
            return found.first() is not None

    async def search(self, site_key: str, query: str, limit: int = 4, dense: bool = True) -> list[Hit]:
        """The best passages for `query`, best first: BM25's ranking fused with the vectors' where
        `dense` and the embedding model is installed, else BM25's."""
        if self.embedder is None or not dense:
            return await self._bm25(site_key, query, limit)
        lexical = await self._bm25(site_key, query, CANDIDATES)
        vectors = await self._site_vectors(site_key)
        if vectors is None:
            return lexical[:limit]
        (q,) = await asyncio.to_thread(self.embedder.embed, [query])
        similarity = (vectors.matrix @ q).tolist()
        nearest = sorted(range(len(similarity)), key=lambda i: -similarity[i])[:CANDIDATES]
        fused: dict[str, float] = {}
        found: dict[str, Hit] = {}
        for rank, hit in enumerate(lexical):
            fused[hit.passage_id] = 1 / (RRF_K + rank)
            found[hit.passage_id] = hit
        for rank, i in enumerate(nearest):
            pid = vectors.hits[i].passage_id
            fused[pid] = fused.get(pid, 0.0) + 1 / (RRF_K + rank)
            found.setdefault(pid, vectors.hits[i])
        index = {h.passage_id: i for i, h in enumerate(vectors.hits)}
        best = sorted(fused, key=lambda pid: -fused[pid])[:limit]
        return [replace(found[pid], similarity=similarity[index[pid]]) for pid in best]

    async def _bm25(self, site_key: str, query: str, limit: int) -> list[Hit]:
        """SQLite's FTS5 ranks by BM25; on PostgreSQL its full-text search ranks by ts_rank, each
        weighted the same way (title, heading, text)."""
        words = query_words(query)
        if not words:
            return []
        if self.engine.dialect.name == "postgresql":
            top = max(TITLE_WEIGHT, HEADING_WEIGHT, 1.0)  # (ts_rank's weights, text to title, lie in 0-1)
            weights = ", ".join(f"{w / top:.3f}" for w in (1.0, 1.0, HEADING_WEIGHT, TITLE_WEIGHT))
            sql = (
                "SELECT passage_id, source, title, heading, text,"
                f" ts_rank('{{{weights}}}', document, q, 1) AS score"
                " FROM knowledge_fts, to_tsquery('english', :q) AS q WHERE document @@ q AND site_key = :s ORDER BY score DESC LIMIT :k"
            )
            expression = " | ".join(f"'{w}'" for w in words)  # (letters and digits only: nothing of tsquery syntax)
        else:
            sql = (
                "SELECT passage_id, source, title, heading, text,"
                f" -bm25(knowledge_fts, {TITLE_WEIGHT}, {HEADING_WEIGHT}, 1.0) AS score"
                " FROM knowledge_fts WHERE knowledge_fts MATCH :q AND site_key = :s ORDER BY score DESC LIMIT :k"
            )
            expression = match_expression(query) or ""
        async with self.engine.connect() as conn:
            rows = await conn.execute(text(sql), {"q": expression, "s": site_key, "k": limit})
            return [Hit(r.passage_id, r.source, r.title, r.heading, r.text, float(r.score)) for r in rows]

    async def prepare(self, site_key: str) -> None:
        """Make the vectors of any passage that has none (a no-op without the embedding model)."""
        if self.embedder is not None:
            await self._site_vectors(site_key)

    async def _site_vectors(self, site_key: str) -> _Vectors | None:
        """The site's passage vectors: from memory while its passages are unchanged; made (and kept
        in the store) for any passage that has none, such as those added before the model was installed."""
        import numpy as np
        import torch

        assert self.embedder is not None
        async with self.engine.connect() as conn:  # (the ids, not a count: a reindex makes new ones in the old rows' places)
            ids = (await conn.execute(text("SELECT id FROM knowledge_passages WHERE site_key = :s ORDER BY id"), {"s": site_key})).scalars()
            stamp = hash(tuple(ids))
        cached = self._vectors.get(site_key)
        if cached is not None and cached.stamp == stamp:
            return cached
        async with self.engine.connect() as conn:
            rows = list(
                await conn.execute(
                    text(
                        "SELECT f.passage_id, f.source, f.title, f.heading, f.text, v.vector FROM knowledge_fts f"
                        " LEFT JOIN knowledge_vectors v ON v.passage_id = f.passage_id AND v.model = :m"
                        " WHERE f.site_key = :s ORDER BY f.passage_id"
                    ),
                    {"s": site_key, "m": self.embedder.name},
                )
            )
        if not rows:
            return None
        missing = [r for r in rows if r.vector is None]
        made: dict[str, bytes] = {}
        if missing:
            matrix = await asyncio.to_thread(self.embedder.embed, [_embedded_text(r.title, r.heading, r.text) for r in missing])
            made = {r.passage_id: matrix[i].numpy().astype(np.float32).tobytes() for i, r in enumerate(missing)}
            async with self.engine.begin() as conn:
                for pid, blob in made.items():
                    await conn.execute(
                        text(
                            "INSERT INTO knowledge_vectors (passage_id, site_key, model, vector) VALUES (:p, :s, :m, :v)"
                            " ON CONFLICT (passage_id) DO UPDATE SET site_key = excluded.site_key, model = excluded.model, vector = excluded.vector"
                        ),
                        {"p": pid, "s": site_key, "m": self.embedder.name, "v": blob},
                    )
        hits = [Hit(r.passage_id, r.source, r.title, r.heading, r.text, 0.0) for r in rows]
        matrix = torch.from_numpy(np.stack([np.frombuffer(r.vector or made[r.passage_id], dtype=np.float32) for r in rows]))
        vectors = _Vectors(stamp, hits, matrix)
        self._vectors[site_key] = vectors
        return vectors

    async def _delete(self, conn: Any, site_key: str, source: str) -> bool:
        doc = (
            await conn.execute(
                text("SELECT id FROM knowledge_documents WHERE site_key = :s AND source = :src"), {"s": site_key, "src": source}
            )
        ).first()
        if doc is None:
            return False
        await conn.execute(
            text("DELETE FROM knowledge_fts WHERE passage_id IN (SELECT id FROM knowledge_passages WHERE document_id = :d)"), {"d": doc.id}
        )
        await conn.execute(
            text("DELETE FROM knowledge_vectors WHERE passage_id IN (SELECT id FROM knowledge_passages WHERE document_id = :d)"),
            {"d": doc.id},
        )
        await conn.execute(text("DELETE FROM knowledge_passages WHERE document_id = :d"), {"d": doc.id})
        await conn.execute(text("DELETE FROM knowledge_documents WHERE id = :d"), {"d": doc.id})
        return True

    async def _index(self, conn: Any, site_key: str, doc_id: str, items: list[Passage]) -> int:
        for p in items:
            pid = new_id("psg")
            await conn.execute(
                text("INSERT INTO knowledge_passages (id, document_id, site_key, ordinal, heading, text) VALUES (:id, :d, :s, :o, :h, :t)"),
                {"id": pid, "d": doc_id, "s": site_key, "o": p.ordinal, "h": p.heading, "t": p.text},
            )
            await conn.execute(
                text(
                    "INSERT INTO knowledge_fts (title, heading, text, site_key, passage_id, source) VALUES (:title, :h, :t, :s, :id, :src)"
                ),
                {"title": p.title, "h": p.heading, "t": p.text, "s": site_key, "id": pid, "src": p.source},
            )
        return len(items)


def _embedded_text(title: str, heading: str, body: str) -> str:
    """What a passage's vector is made from: where it sits (title, headings) and what it says."""
    return f"{title} {heading}\n{body}"


def _guarded(doc: Document) -> tuple[Document, int]:
    """The document as the guard passes it: secrets redacted in its title, headings and text."""
    redactions = 0

    def clean(value: str) -> str:
        nonlocal redactions
        out = redact_secrets(value)
        redactions += out.count("[REDACTED:") - value.count("[REDACTED:")
        return out

    sections = tuple(Section(tuple(clean(h) for h in s.headings), clean(s.text)) for s in doc.sections)
    return Document(doc.source, clean(doc.title), doc.format, sections), redactions
