"""A site's knowledge base on a real chat store: Markdown, HTML, text and a PDF printed by headless
Chromium read into passages under their headings; files nobody here wrote (Playwright's own
Markdown references) read whole; a secret made at test time redacted before anything is kept; an
unchanged file not read again, a changed one replaced; BM25 search that finds by stem and heading,
keeps sites apart and takes any text a visitor types; and `tandem knowledge` as an operator uses it."""

from __future__ import annotations

import asyncio
import secrets
import string
import threading
from collections.abc import Iterator
from pathlib import Path

import playwright
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dialog.knowledge.documents import DocumentError, read
from dialog.knowledge.index import KnowledgeBase, match_expression
from dialog.knowledge.passages import MAX_WORDS, passages
from dialog.store import Site, Store
from tests.dialog.test_dialog_cli import tandem

REFERENCES = Path(playwright.__file__).parent / "driver" / "package" / "lib" / "tools" / "skills" / "playwright-cli" / "references"

RETURNS = """# Returns

You can return unused items within **30 days** of delivery, with the receipt.

## Refunds

Refunds reach your original payment method within 5 business days.

```
# a comment in a code block, not a heading
```
"""

SHIPPING = """<!doctype html><html><head><title>Shipping</title><script>var hidden = "script text";</script></head>
<body><nav>Home | Shop | Cart</nav><main><h1>Shipping</h1><p>We deliver to Norway in <b>three</b> days.</p>
<h2>Costs</h2><ul><li>Free above 50 EUR</li><li>Otherwise 4.90 EUR</li></ul></main><footer>© Shop</footer></body></html>"""


_LOOP = asyncio.new_event_loop()
threading.Thread(target=_LOOP.run_forever, name="knowledge-tests", daemon=True).start()


def run(coroutine):  # type: ignore[no-untyped-def]
    """On one event loop of its own thread for every call: Playwright's sync API (the PDF test's
    browser) holds this thread's loop, and a PostgreSQL connection belongs to the loop that opened it."""
    return asyncio.run_coroutine_threadsafe(coroutine, _LOOP).result()


def token() -> str:
    return "ghp_" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(36))


def write(folder: Path, name: str, content: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content, encoding="utf-8")
    return path


def kb_for(where: Path | str, *sites: str) -> tuple[Store, KnowledgeBase]:
    """A knowledge base in a fresh store: in `where`'s chat.db (a folder), or at a PostgreSQL URL."""

    async def go() -> Store:
        store = await Store.open(where if isinstance(where, str) else where / "chat.db")
        for key in sites:
            await store.put_site(Site(key, key, ("https://x.test",), "You help."))
        return store

    store = run(go())
    return store, KnowledgeBase(store.engine)


def test_each_format_is_read_into_sections_under_their_headings(tmp_path: Path) -> None:
    md = read(write(tmp_path, "returns.md", RETURNS))
    assert md.title == "Returns" and md.format == "markdown"
    assert [(s.headings, s.text.splitlines()[0]) for s in md.sections] == [
        (("Returns",), "You can return unused items within 30 days of delivery, with the receipt."),
        (("Returns", "Refunds"), "Refunds reach your original payment method within 5 business days."),
    ]
    html = read(write(tmp_path, "shipping.html", SHIPPING))
    assert html.title == "Shipping" and [s.headings for s in html.sections] == [("Shipping",), ("Shipping", "Costs")]
    text = "\n".join(s.text for s in html.sections)
    assert "three days" in text and "4.90 EUR" in text and "script text" not in text and "Cart" not in text and "©" not in text
    plain = read(write(tmp_path, "opening-hours.txt", "We are open Monday to Friday.\n\nClosed on public holidays.\n"))
    assert plain.title == "Opening hours" and plain.sections[0].text == "We are open Monday to Friday.\n\nClosed on public holidays."
    for bad, why in (("notes.docx", "not a format"), ("empty.md", "no text")):
        with pytest.raises(DocumentError, match=why):
            read(write(tmp_path, bad, ""))


def test_a_pdf_printed_by_chromium_is_read_page_by_page(tmp_path: Path, browser) -> None:  # type: ignore[no-untyped-def]
    page = browser.new_page()
    try:
        page.set_content("<h1>Warranty</h1><p>Every kettle carries a two-year warranty against defects.</p>")
        (tmp_path / "warranty.pdf").write_bytes(page.pdf())
    finally:
        page.close()
    doc = read(tmp_path / "warranty.pdf")
    assert doc.format == "pdf" and doc.sections[0].headings == ("Page 1",)
    assert "two-year warranty against defects" in " ".join(doc.sections[0].text.split())
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.7\nnot really")
    with pytest.raises(DocumentError, match="PDF"):
        read(tmp_path / "broken.pdf")


def test_markdown_nobody_here_wrote_is_read_whole_into_passages_that_fit(tmp_path: Path) -> None:
    files = sorted(REFERENCES.glob("*.md"))
    assert len(files) >= 5, REFERENCES
    for path in files:
        doc = read(path)
        items = passages(doc)
        assert items and all(p.words <= MAX_WORDS for p in items), path.name
        words = lambda s: " ".join(s.split())  # noqa: E731
        kept = words(" ".join(p.text for p in items))
        for section in doc.sections:  # nothing read is lost in the cutting
            assert words(section.text)[:200] in kept, (path.name, section.headings)
    store, kb = kb_for(tmp_path, "docs")
    try:
        for path in files:
            run(kb.add("docs", path))
        hits = run(kb.search("docs", "how do I record a video of the session?"))
        assert hits and hits[0].source == "video-recording.md", [(h.source, h.heading) for h in hits]
    finally:
        run(store.close())


def test_a_secret_in_a_document_is_redacted_before_anything_is_kept(tmp_path: Path) -> None:
    key, title_key = token(), token()
    doc = write(tmp_path / "docs", "internal.md", f"# Ops {title_key}\n\nThe deploy token is {key}, keep it safe.\n")
    store, kb = kb_for(tmp_path, "shop")
    try:
        added = run(kb.add("shop", doc))
        assert added.redactions == 3 and added.passages == 1  # the title's secret also heads the section
        hit = run(kb.search("shop", "deploy token"))[0]
        assert "[REDACTED:github_token]" in hit.text and key not in hit.text and title_key not in hit.heading
    finally:
        run(store.close())
    for f in tmp_path.glob("chat.db*"):
        assert key.encode() not in f.read_bytes() and title_key.encode() not in f.read_bytes(), f.name


def test_an_unchanged_file_is_kept_a_changed_one_replaced_and_sites_stay_apart(tmp_path: Path, chat_db: Path | str) -> None:
    """On SQLite's FTS5 and on PostgreSQL's full-text search alike."""
    store, kb = kb_for(chat_db if isinstance(chat_db, str) else tmp_path, "shop", "other")
    try:
        path = write(tmp_path, "returns.md", RETURNS)
        first = run(kb.add("shop", path))
        assert not first.unchanged and first.passages == 2
        assert run(kb.add("shop", path)).unchanged
        assert run(kb.search("shop", "refund payment"))[0].heading == "Returns › Refunds"
        assert run(kb.search("other", "refund payment")) == []  # another site's knowledge is not this one's
        write(tmp_path, "returns.md", "# Returns\n\nReturns are accepted within 14 days.\n")
        again = run(kb.add("shop", path))
        assert not again.unchanged and again.passages == 1
        assert run(kb.search("shop", "refund payment")) == []  # the old passages went with the old file
        assert "14 days" in run(kb.search("shop", "returned items"))[0].text  # stemmed: returned ~ returns
        assert run(kb.reindex("shop")) == 1
        assert run(kb.remove("shop", "returns.md")) and not run(kb.remove("shop", "returns.md"))
        assert run(kb.documents("shop")) == []
    finally:
        run(store.close())


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=200))
def test_any_text_a_visitor_types_is_a_safe_query(tmp_path_factory, query: str) -> None:  # type: ignore[no-untyped-def]
    expression = match_expression(query)
    if expression is not None:
        assert all(part.startswith('"') and part.endswith('"') and part.count('"') == 2 for part in expression.split(" OR "))
    folder = tmp_path_factory.mktemp("kb")
    store, kb = kb_for(folder, "shop")
    try:
        run(kb.add("shop", write(folder, "returns.md", RETURNS)))
        run(kb.search("shop", query + ' NEAR("a" "b") OR * AND ^x:y -z'))  # never an FTS syntax error
    finally:
        run(store.close())


@pytest.fixture(scope="module")
def pg_knowledge(postgres, tmp_path_factory) -> Iterator[KnowledgeBase]:  # type: ignore[no-untyped-def]
    store, kb = kb_for(postgres.create_database("knowledge_fuzz"), "shop")
    run(kb.add("shop", write(tmp_path_factory.mktemp("kb"), "returns.md", RETURNS)))
    yield kb
    run(store.close())


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=200))
def test_any_text_a_visitor_types_is_a_safe_query_on_postgresql_too(pg_knowledge: KnowledgeBase, query: str) -> None:
    run(pg_knowledge.search("shop", query + " ' & | ! <-> :* ( ) \\", dense=False))  # never a tsquery syntax error


def test_tandem_knowledge_as_an_operator_uses_it(tmp_path: Path) -> None:
    d = ["--dialog-dir", str(tmp_path / "dialog")]
    assert tandem("sites", "add", "shop", "--origin", "https://shop.test", *d).returncode == 0
    docs = tmp_path / "docs"
    write(docs, "returns.md", RETURNS)
    write(docs, "shipping/index.html", SHIPPING)
    write(docs, "hours.txt", f"Open Monday to Friday, 9 to 5.\n\nSupport token {token()}.\n")
    write(docs, "logo.png", "not a document")
    added = tandem("knowledge", "add", "shop", str(docs), *d)
    assert added.returncode == 0, added.stderr
    assert "3 documents, 5 passages" in added.stdout and "docs/hours.txt: 1 passage, 1 secrets redacted" in added.stdout
    assert "docs/returns.md: unchanged" in tandem("knowledge", "add", "shop", str(docs), *d).stdout
    listed = tandem("knowledge", "list", "shop", *d).stdout
    assert "docs/returns.md" in listed and "docs/shipping/index.html" in listed and "html" in listed
    found = tandem("knowledge", "search", "shop", "Do you deliver to Norway?", *d).stdout
    assert found.splitlines()[0].endswith("docs/shipping/index.html — Shipping")
    assert tandem("knowledge", "reindex", "shop", *d).stdout.strip() == "5 passages indexed"
    removed = tandem("knowledge", "remove", "shop", "docs/hours.txt", "docs/nope.md", *d)
    assert removed.returncode == 1 and "removed docs/hours.txt" in removed.stdout and "nope.md" in removed.stderr
    assert tandem("knowledge", "add", "ghost", str(docs), *d).returncode == 1  # no such site
    assert tandem("knowledge", "add", "shop", str(docs / "missing.md"), *d).returncode == 2
    skipped = tandem("knowledge", "add", "shop", str(docs / "logo.png"), *d)
    assert skipped.returncode == 1 and "not a format" in skipped.stderr
