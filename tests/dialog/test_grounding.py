"""Answers grounded in a site's knowledge base, over the real socket of a real server (scripted
engine, the tiny model's tokenizer and template; the real embedding model): the passages that
answer the question are laid out in the prompt the engine gets, within the window, and the answer
ends with the passage's own words; the answer's `done` names their documents, and so do the stored
message and the audit record; a follow-up leans on the question before it; a site without
documents is answered as before; a question the documents do not answer gets the honest reply in
the visitor's language, offering a person, without the model; BM25 alone works the same way."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from dialog.knowledge.embeddings import default_embedder
from dialog.knowledge.index import KnowledgeBase
from dialog.locales import strings
from dialog.store import Site, Store
from server.audit import AuditReader, Filters
from tests.dialog_client import Chat
from tests.waiting import eventually

RETURNS = "# Returns\n\nUnused items can be returned within 30 days of delivery.\n"
SHIPPING = "# Shipping\n\nParcels to Norway arrive in three days.\n"


def site_with_documents(s, tmp_path: Path, key: str, docs: dict[str, str], **site: str) -> None:  # type: ignore[no-untyped-def]
    async def go() -> None:
        store = await Store.open(s.dialog_dir / "chat.db")
        await store.put_site(Site(key, key, (s.url,), "You help a shop's customers.", **site))  # type: ignore[arg-type]
        kb = KnowledgeBase(store.engine, default_embedder())
        for name, text in docs.items():
            path = tmp_path / name
            path.write_text(text)
            await kb.add(key, path)
        await store.close()

    asyncio.run(go())


def prompt_text(s, tokenizer, n: int = -1) -> str:  # type: ignore[no-untyped-def]
    prompt = s.engine.requests[n].prompt
    return str(tokenizer.decode(prompt) if isinstance(prompt, list) else prompt)


def test_the_passage_that_answers_is_in_the_prompt_and_the_answer_names_it(tiny_server, tokenizer, tmp_path: Path) -> None:
    assert default_embedder() is not None, "the embedding model is installed by the README's set-up"
    with tiny_server(dialog={"max_answer_tokens": 8}) as s:
        site_with_documents(s, tmp_path, "shop", {"returns.md": RETURNS, "shipping.md": SHIPPING})
        with Chat(s.url, site="shop") as chat:
            text, frames = chat.ask("How long can I take to return unused things?")
            sent = prompt_text(s, tokenizer)
            assert "Unused items can be returned within 30 days" in sent and "Norway" not in sent
            assert frames[-1]["sources"] == [{"title": "Returns", "heading": "Returns", "source": "returns.md"}]
            # the scripted model never says "30": the passage's own words follow its answer
            assert text.endswith("\n\nFrom *Returns*: “Unused items can be returned within 30 days of delivery.”")
            _, frames = chat.ask("And to Norway?")  # the follow-up names its own subject
            assert "Parcels to Norway arrive in three days" in prompt_text(s, tokenizer)
            assert frames[-1]["sources"][0]["source"] == "shipping.md"
            _, frames = chat.ask("And how much does that cost?")  # finds nothing alone: leans on the question before
            assert "Norway" in prompt_text(s, tokenizer)
        with Chat(s.url, site="shop", token=chat.token, conversation_id=chat.conversation_id) as again:
            answers = [m for m in again.welcome["history"] if m["role"] == "assistant"]
        assert answers[0]["sources"][0]["source"] == "returns.md"  # kept with the message: shown again after a reload
        reader = AuditReader(s.audit_dir)
        records = eventually(lambda: reader.search(Filters(conversation=chat.conversation_id), limit=10), "the audit records")
        first = min(records, key=lambda r: r["seq"])["record"]
        assert first["prompt"]["sources"] and first["prompt"]["sources"][0].startswith("returns.md#psg_")


@pytest.mark.parametrize("retrieval", ["hybrid", "bm25"])
def test_a_question_the_documents_do_not_answer_gets_the_honest_reply_and_a_site_without_documents_as_before(
    tiny_server, tokenizer, tmp_path: Path, retrieval: str
) -> None:
    with tiny_server(dialog={"max_answer_tokens": 8}) as s:
        site_with_documents(s, tmp_path, "shop", {"returns.md": RETURNS}, retrieval=retrieval)
        with Chat(s.url, site="shop", languages=["de-DE"]) as chat:
            asked = len(s.engine.requests)
            text, frames = chat.ask("Do you sell gift vouchers?")
            assert text == strings("de")["no_answer"] and "sources" not in frames[-1]  # in the visitor's language
            assert len(s.engine.requests) == asked  # the model was not asked to invent one
            text, frames = chat.ask("When can unused items be returned?")  # the next question is answered again
            assert "30 days" in text and frames[-1]["sources"][0]["source"] == "returns.md"
        reader = AuditReader(s.audit_dir)
        records = eventually(lambda: reader.search(Filters(conversation=chat.conversation_id), limit=10), "the audit records")
        first = min(records, key=lambda r: r["seq"])["record"]
        assert first["output"]["finish_reason"] == "fixed_reply" and first["output"]["chars"] == len(strings("de")["no_answer"])
        with Chat(s.url) as chat:  # the demo site has no documents
            chat.ask("Do you sell gift vouchers?")
        sent = prompt_text(s, tokenizer)
        assert "Passages" not in sent and "documents" not in sent


def test_passages_are_cut_to_what_the_window_leaves(tiny_server, tokenizer, tmp_path: Path) -> None:
    """The tiny model's window is 256 tokens: long passages must not push the visitor's message out."""
    long = "# Warranty\n\n" + " ".join(["Every kettle carries a two-year warranty against defects in materials."] * 12) + "\n"
    with tiny_server(dialog={"max_answer_tokens": 8}) as s:
        site_with_documents(s, tmp_path, "shop", {"warranty.md": long, "warranty-2.md": long.replace("kettle", "toaster")})
        with Chat(s.url, site="shop") as chat:
            _, frames = chat.ask("What warranty does the kettle have?")
        assert frames[-1]["type"] == "done" and frames[-1]["finish_reason"] in ("stop", "length")
        assert "What warranty does the kettle have?" in prompt_text(s, tokenizer)
