"""Dense and hybrid retrieval on a real chat store with the real embedding model: the model is
unpacked once and refused if its weights are not upstream's; hybrid search finds a paraphrase that
shares no word with the passage, where BM25 finds nothing; passages added before the model was
installed get their vectors at the first search; removing and reindexing keep vectors in step;
and the grounding's decisions: the honest reply where nothing is close, the excerpt only where the
answer lacks the passage's figures, a follow-up read with the question before it."""

from __future__ import annotations

import logging
import shutil
import zipfile
from pathlib import Path

import pytest
from sqlalchemy import text

from dialog import grounding
from dialog.knowledge import embeddings
from dialog.knowledge.embeddings import default_embedder, unpacked
from dialog.knowledge.index import KnowledgeBase
from tests.dialog.test_knowledge import kb_for, run, write

RETURNS = "# Returns\n\nUnworn items can be returned within 45 days of delivery for a full refund.\n"
SHIPPING = "# Delivery\n\nParcels to Norway arrive in three working days. Shipping there costs 12 EUR.\n"
CARE = "# Caring for waterproof jackets\n\nWash jackets at 30 degrees and reproof them every season.\n"


@pytest.fixture(scope="module")
def embedder():  # type: ignore[no-untyped-def]
    found = default_embedder()
    assert found is not None, "the embedding model is installed by the README's set-up (scripts/embedding-model.txt)"
    return found


def shop(tmp_path: Path, embedder, key: str = "shop"):  # type: ignore[no-untyped-def]
    store, _ = kb_for(tmp_path, key)
    kb = KnowledgeBase(store.engine, embedder)
    for name, body in (("returns.md", RETURNS), ("shipping.md", SHIPPING), ("care.md", CARE)):
        run(kb.add(key, write(tmp_path, name, body)))
    return store, kb


def test_the_weights_must_be_upstreams(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    real = embeddings._package_zip()
    assert real is not None
    tampered = tmp_path / "model.zip"
    with zipfile.ZipFile(real) as src, zipfile.ZipFile(tampered, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            dst.writestr(item, data[:-1] + b"\0" if item.filename.endswith("model.safetensors") else data)
    monkeypatch.setattr(embeddings, "_package_zip", lambda: tampered)
    with pytest.raises(RuntimeError, match="not the release's"):
        unpacked(tmp_path / "home", progress=False)
    assert not (tmp_path / "home" / "models" / "embed" / embeddings.NAME).exists()  # nothing half-made is left
    assert not [p for p in (tmp_path / "home" / "models" / "embed").iterdir()]
    monkeypatch.setattr(embeddings, "_shared", None)
    monkeypatch.setattr(embeddings, "tandem_home", lambda: tmp_path / "home")
    with caplog.at_level(logging.WARNING, "tandem.knowledge"):
        assert default_embedder() is None  # BM25 alone, said in the log
    assert "dense retrieval off" in caplog.text
    monkeypatch.setattr(embeddings, "_package_zip", lambda: None)
    assert unpacked(tmp_path / "other", progress=False) is None  # not installed: nothing to unpack


def test_hybrid_finds_a_paraphrase_bm25_cannot(tmp_path: Path, embedder) -> None:  # type: ignore[no-untyped-def]
    store, kb = shop(tmp_path, embedder)
    question = "how long have I got to send something back?"
    assert run(kb.search("shop", question, 3, dense=False)) == []  # not one word in common
    hits = run(kb.search("shop", question, 3))
    assert hits[0].source == "returns.md" and hits[0].similarity is not None and hits[0].similarity > 0.4
    lexical = run(kb.search("shop", "Norway parcels", 3))  # a rare exact word still leads
    assert lexical[0].source == "shipping.md" and lexical[0].score > 0
    run(store.close())


def test_vectors_are_made_where_missing_and_follow_the_passages(tmp_path: Path, embedder) -> None:  # type: ignore[no-untyped-def]
    store, bare = kb_for(tmp_path, "shop")  # added before the model was installed: no vectors
    for name, body in (("returns.md", RETURNS), ("shipping.md", SHIPPING)):
        run(bare.add("shop", write(tmp_path, name, body)))

    async def vectors() -> int:
        async with store.engine.connect() as conn:
            return int((await conn.execute(text("SELECT count(*) FROM knowledge_vectors"))).scalar_one())

    assert run(vectors()) == 0
    kb = KnowledgeBase(store.engine, embedder)
    assert run(kb.search("shop", "send something back", 1))[0].source == "returns.md"
    assert run(vectors()) == 2  # made at the first search, and kept
    assert run(kb.remove("shop", "shipping.md"))
    assert run(vectors()) == 1
    assert run(kb.search("shop", "parcels to Norway", 3))[0].source == "returns.md"  # the removed one is gone from memory too
    assert run(kb.reindex("shop")) == 1
    run(kb.prepare("shop"))
    assert run(vectors()) == 1
    run(store.close())


def test_what_the_grounding_decides(tmp_path: Path, embedder) -> None:  # type: ignore[no-untyped-def]
    store, kb = shop(tmp_path, embedder)

    def ground(question: str, previous: str | None = None, dense: bool = True) -> grounding.Grounding:
        found = run(grounding.ground(kb, "shop", "You help.", question, previous, 2000, dense=dense))
        assert found is not None
        return found

    answered = ground("How many days do I have to return unworn things?")
    assert not answered.unknown and answered.excerpt is not None and "45 days" in answered.excerpt
    assert answered.excerpt.startswith("*Returns*: “") and answered.figures == ("45",)
    assert answered.appendix("You have 45 days.", "From") == ""  # the model stated the figure: nothing added
    assert answered.appendix("You have 30 days.", "From").startswith("\n\nFrom *Returns*: “")  # it did not: the passage's words
    assert ground("Do you sell gift vouchers for birthdays?").unknown  # nothing close: the honest reply
    assert not ground("hello!").unknown and ground("hello!").hits == ()  # small talk: the model, no passages
    follow = ground("and to Norway?", previous="How long does delivery take?")
    assert not follow.unknown and follow.hits[0].source == "shipping.md"
    assert ground("Do you sell gift vouchers?", dense=False).unknown  # BM25 alone decides by shared words
    assert not ground("How much does shipping to Norway cost?", dense=False).unknown
    run(store.close())


def test_sites_choose_their_retrieval(tmp_path: Path) -> None:
    from tests.dialog.test_dialog_cli import tandem

    d = ["--dialog-dir", str(tmp_path)]
    assert tandem("sites", "add", "acme", "--origin", "https://a.test", *d).returncode == 0
    assert "retrieval:" in tandem("sites", "show", "acme", *d).stdout and "hybrid" in tandem("sites", "show", "acme", *d).stdout
    assert tandem("sites", "edit", "acme", "--retrieval", "bm25", *d).returncode == 0
    assert "bm25" in tandem("sites", "show", "acme", *d).stdout
    assert tandem("sites", "edit", "acme", "--retrieval", "magic", *d).returncode == 2
    shutil.rmtree(tmp_path)
