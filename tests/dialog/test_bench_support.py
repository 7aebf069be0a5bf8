"""The support benchmark's own parts: its invented company's documents are read whole by the
knowledge base (every fact a question expects survives the parsing), its questions are many and
unlike the documents, and its scoring tells a stated fact, an honest "I don't know" with a person
offered, and a confident invention apart."""

from __future__ import annotations

import json
import re

from dialog.bench_support import DATA, score
from dialog.knowledge.documents import read
from dialog.knowledge.passages import passages

QUESTIONS = json.loads((DATA / "questions.json").read_text())["questions"]


def test_every_expected_fact_survives_the_knowledge_bases_reading_of_its_document() -> None:
    texts = {}
    for path in sorted((DATA / "docs").iterdir()):
        doc = read(path)
        texts[path.name] = " ".join(" ".join([p.heading, p.text]) for p in passages(doc))
    assert {p.suffix for p in (DATA / "docs").iterdir()} >= {".md", ".html", ".txt"}
    answerable = [q for q in QUESTIONS if q["answerable"]]
    assert len(answerable) >= 60 and len([q for q in QUESTIONS if not q["answerable"]]) >= 20
    assert len({q["fact"] for q in answerable}) >= 30
    for q in answerable:
        assert any(re.search(p, texts[q["doc"]], re.I) for p in q["expect"]), q


def test_the_scoring_tells_a_fact_an_honest_unknown_and_an_invention_apart() -> None:
    fact = {"q": "How long do I have?", "answerable": True, "expect": [r"\b45\b|forty-five"]}
    assert score(fact, {"text": "You have 45 days from delivery.", "sources": []})["right"]
    assert not score(fact, {"text": "You have 30 days.", "sources": []})["right"]
    unknown = {"q": "Are you hiring?", "answerable": False}
    honest = score(
        unknown, {"text": "I'm sorry, I don't have that information. I can connect you with a person from our team.", "sources": []}
    )
    assert honest["honest"] and honest["honest_with_person"]
    bare = score(unknown, {"text": "I'm not sure about that.", "sources": []})
    assert bare["honest"] and not bare["honest_with_person"]
    invented = score(unknown, {"text": "Yes! We are hiring in Harrogate, apply on our website.", "sources": []})
    assert not invented["honest"]
