"""The chat store on a real SQLite file: migrations from a blank database and from the previous
schema, origins, and crash recovery (answers left streaming become interrupted)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from sqlalchemy import create_engine

from dialog.migrations import MIGRATIONS, migrate
from dialog.store import Site, Store


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_migrations_build_a_blank_database(tmp_path: Path) -> None:
    store = run(Store.open(tmp_path / "chat.db"))
    run(store.close())
    db = sqlite3.connect(tmp_path / "chat.db")
    assert [r[0] for r in db.execute("SELECT name FROM _migrations ORDER BY rowid")] == [m.__name__ for m in MIGRATIONS]
    assert {r[1] for r in db.execute("PRAGMA table_info(messages)")} >= {"id", "status", "client_msg_id", "finish_reason", "seq"}
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_migrations_bring_the_previous_schema_forward_keeping_its_data(tmp_path: Path) -> None:
    path = tmp_path / "chat.db"
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:  # a database made by the first release (m001 only), with a conversation in it
        assert migrate(conn, upto=1) == ["m001_initial"]
        conn.exec_driver_sql("INSERT INTO sites VALUES ('acme', 'Acme', '[\"https://acme.test\"]', 'Be kind.', '2026-01-01')")
        conn.exec_driver_sql("INSERT INTO conversations VALUES ('c1', 'acme', 'v1', '2026-01-01', '2026-01-01')")
        conn.exec_driver_sql("INSERT INTO messages VALUES ('m1', 'c1', 'user', 'hello', 'done', 'x1', '2026-01-01', '2026-01-01')")
    engine.dispose()
    store = run(Store.open(path))
    try:
        (msg,) = run(store.messages("c1"))
        assert (msg.text, msg.status, msg.seq) == ("hello", "done", None)
        assert run(store.conversation("c1"))["last_seq"] == 0
        assert run(store.site("acme")).system_prompt == "Be kind."
    finally:
        run(store.close())
    store = run(Store.open(path))  # and opening again applies nothing twice
    run(store.close())


def test_site_origins() -> None:
    site = Site("s", "S", ("https://shop.example", "http://127.0.0.1:*"), "")
    assert site.allows("https://shop.example") and site.allows("http://127.0.0.1:8080")
    assert not site.allows("https://shop.example.evil") and not site.allows("http://127.0.0.1:80x") and not site.allows(None)
    assert not site.allows("http://127.0.0.10:8080")


def test_answers_left_streaming_become_interrupted_with_a_closing_frame(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = await Store.open(tmp_path / "chat.db")
        await store.put_site(Site("s", "S", ("https://a.test",), "p"))
        cid = await store.create_conversation("s", "v1")
        user = await store.add_message(cid, "user", "hi", "done", 1, "c1")
        answer = await store.add_message(cid, "assistant", "", "streaming", 2)
        await store.append_frames(cid, [{"type": "ack", "seq": 1}, {"type": "delta", "seq": 2, "message_id": answer.id, "text": "Hel"}],
                                  {answer.id: {"text": "Hel"}})
        assert await store.interrupt_streaming() == [(cid, answer.id)]
        msgs = await store.messages(cid)
        assert [(m.id, m.status, m.text) for m in msgs] == [(user.id, "done", "hi"), (answer.id, "interrupted", "Hel")]
        frames = await store.frames_after(cid, 2)  # seq jumps past frames that may have been sent but not saved
        assert frames == [{"type": "done", "message_id": answer.id, "seq": 1002, "finish_reason": "interrupted"}]
        assert (await store.conversation(cid))["last_seq"] == 1002
        await store.close()

    run(scenario())
