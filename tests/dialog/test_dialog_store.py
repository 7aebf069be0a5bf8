"""The chat store on a real SQLite file: migrations from a blank database and from the previous
schema, origins, crash recovery (answers left streaming become interrupted), the client's ids kept
only as keyed hashes, and the files' modes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import sqlite3
import stat
from pathlib import Path

from sqlalchemy import create_engine, text

from dialog.migrations import MIGRATIONS, migrate
from dialog.store import Site, Store, postgres_engine, sqlite_engine
from dialog.tokens import VisitorTokens
from tests.waiting import eventually_async


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


async def reopen(path: Path | str) -> None:
    await (await Store.open(path)).close()


def test_migrations_build_a_blank_database(tmp_path: Path) -> None:
    store = run(Store.open(tmp_path / "chat.db"))
    run(store.close())
    db = sqlite3.connect(tmp_path / "chat.db")
    assert [r[0] for r in db.execute("SELECT name FROM _migrations ORDER BY rowid")] == [m.__name__ for m in MIGRATIONS]
    assert {r[1] for r in db.execute("PRAGMA table_info(messages)")} >= {"id", "status", "client_ref", "finish_reason", "seq"}
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


def test_migrations_build_a_blank_store_and_bring_one_at_m006_forward_on_both_engines(chat_db: Path | str) -> None:
    """The same numbered steps on SQLite and PostgreSQL: a store left by the previous release (m006,
    with a conversation and a webhook-less site in it) gets m007 and keeps its data; a blank one gets every step."""

    async def scenario() -> None:
        engine = postgres_engine(chat_db) if isinstance(chat_db, str) else sqlite_engine(chat_db)
        async with engine.begin() as conn:
            assert await conn.run_sync(lambda c: migrate(c, upto=6)) == [m.__name__ for m in MIGRATIONS[:6]]
            day = {"d": "2026-01-01T00:00:00.000Z"}
            await conn.execute(
                text(
                    "INSERT INTO sites (site_key, name, allowed_origins, system_prompt, created_at) VALUES ('acme', 'Acme', '[]', 'Be kind.', :d)"
                ),
                day,
            )
            await conn.execute(
                text(
                    "INSERT INTO conversations (id, site_key, visitor_id, created_at, updated_at, last_seq) VALUES ('c1', 'acme', 'v1', :d, :d, 2)"
                ),
                day,
            )
            for mid, role, body in (("m1", "user", "hello"), ("m2", "assistant", "Hi!")):
                await conn.execute(
                    text(
                        "INSERT INTO messages (id, conversation_id, role, text, status, created_at, updated_at) VALUES (:m, 'c1', :r, :t, 'done', :d, :d)"
                    ),
                    {"m": mid, "r": role, "t": body, **day},
                )
        await engine.dispose()
        store = await Store.open(chat_db)
        try:
            assert [(m.role, m.text) for m in await store.messages("c1")] == [("user", "hello"), ("assistant", "Hi!")]
            (row,) = await store.list_conversations()
            assert (row["status"], row["messages"], row["last"]) == ("bot", 2, "Hi!")
            assert (await store.site("acme")).retrieval == "hybrid"
            async with store.engine.connect() as conn:
                names = [r[0] for r in await conn.execute(text("SELECT name FROM _migrations ORDER BY name"))]
            assert names == [m.__name__ for m in MIGRATIONS]
        finally:
            await store.close()
        await reopen(chat_db)  # and opening again applies nothing twice

    run(scenario())


def test_site_origins() -> None:
    site = Site("s", "S", ("https://shop.example", "http://127.0.0.1:*"), "")
    assert site.allows("https://shop.example") and site.allows("http://127.0.0.1:8080")
    assert not site.allows("https://shop.example.evil") and not site.allows("http://127.0.0.1:80x") and not site.allows(None)
    assert not site.allows("http://127.0.0.10:8080")


def test_answers_left_streaming_become_interrupted_with_a_closing_frame(chat_db: Path | str) -> None:
    async def scenario() -> None:
        store = await Store.open(chat_db)
        await store.put_site(Site("s", "S", ("https://a.test",), "p"))
        cid = await store.create_conversation("s", "v1")
        user = await store.add_message(cid, "user", "hi", "done", 1, "c1")
        answer = await store.add_message(cid, "assistant", "", "streaming", 2)
        await store.append_frames(
            cid,
            [{"type": "ack", "seq": 1}, {"type": "delta", "seq": 2, "message_id": answer.id, "text": "Hel"}],
            {answer.id: {"text": "Hel"}},
        )
        assert await store.interrupt_streaming() == [(cid, answer.id)]
        msgs = await store.messages(cid)
        assert [(m.id, m.status, m.text) for m in msgs] == [(user.id, "done", "hi"), (answer.id, "interrupted", "Hel")]
        frames = await store.frames_after(cid, 2)  # seq jumps past frames that may have been sent but not saved
        assert frames == [{"type": "done", "message_id": answer.id, "seq": 1002, "finish_reason": "interrupted"}]
        assert (await store.conversation(cid))["last_seq"] == 1002
        await store.close()

    run(scenario())


def test_raw_client_ids_from_before_m003_are_replaced_by_their_keyed_hash(tmp_path: Path) -> None:
    """A store made by the previous release kept the client's id raw, in the message and in its ack
    frame: opened with the service's key, both hold the hash, and the raw bytes are gone from the files."""
    path, secret = tmp_path / "chat.db", "sk_live_0123456789abcdef0123"
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        assert migrate(conn, upto=2) == ["m001_initial", "m002_events_and_seq"]
        conn.exec_driver_sql("INSERT INTO sites VALUES ('acme', 'Acme', '[\"https://acme.test\"]', 'Be kind.', '2026-01-01')")
        conn.exec_driver_sql("INSERT INTO conversations VALUES ('c1', 'acme', 'v1', '2026-01-01', '2026-01-01', 2)")
        day = "'2026-01-01', '2026-01-01'"
        conn.exec_driver_sql(f"INSERT INTO messages VALUES ('msg_1', 'c1', 'user', 'hello', 'done', '{secret}', {day}, NULL, 1)")
        conn.exec_driver_sql(f"INSERT INTO messages VALUES ('msg_2', 'c1', 'assistant', 'Hi!', 'done', NULL, {day}, 'stop', 2)")
        ack = json.dumps({"type": "ack", "client_msg_id": secret, "message_id": "msg_1", "seq": 1})
        conn.exec_driver_sql("INSERT INTO events VALUES ('c1', 1, ?)", (ack,))
        done = json.dumps({"type": "done", "message_id": "msg_2", "seq": 2, "finish_reason": "stop"})
        conn.exec_driver_sql("INSERT INTO events VALUES ('c1', 2, ?)", (done,))
    engine.dispose()
    tokens = VisitorTokens(b"k" * 32)
    ref = tokens.client_ref("c1", secret)
    assert ref.startswith("ref_") and ref != tokens.client_ref("c2", secret) and secret not in ref

    async def scenario() -> None:
        store = await Store.open(path)  # the CLI opens without the key: nothing it can hash yet
        await store.close()
        store = await Store.open(path, client_ref=tokens.client_ref)
        try:
            found = await store.by_client_ref("c1", ref)
            assert found is not None and found.id == "msg_1"
            ack, done = await store.frames_after("c1", 0)
            assert ack == {"type": "ack", "client_msg_id": ref, "message_id": "msg_1", "seq": 1} and done["type"] == "done"
        finally:
            await store.close()

    run(scenario())
    for name in ("chat.db", "chat.db-wal", "chat.db-shm"):
        if (tmp_path / name).exists():
            assert secret.encode() not in (tmp_path / name).read_bytes(), name


def test_the_store_and_its_folder_are_private_whatever_the_umask(tmp_path: Path) -> None:
    """Created under umask 000: the folder 0700, chat.db and the -wal/-shm files SQLite makes 0600,
    and the key 0600. Files an earlier release left readable are tightened on open."""
    folder = tmp_path / "home" / "dialog"
    old = os.umask(0)
    try:

        async def scenario() -> None:
            store = await Store.open(folder / "chat.db")
            try:
                await store.put_site(Site("s", "S", ("https://a.test",), "p"))
                for name in ("chat.db", "chat.db-wal", "chat.db-shm"):  # while it is open, the side files exist
                    assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600, name
            finally:
                await store.close()

        run(scenario())
        VisitorTokens.load_or_create(folder / "visitor.key")
    finally:
        os.umask(old)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "visitor.key").stat().st_mode) == 0o600
    for name in ("chat.db", "visitor.key"):
        os.chmod(folder / name, 0o644)
    VisitorTokens.load_or_create(folder / "visitor.key")
    run(reopen(folder / "chat.db"))
    for name in ("chat.db", "visitor.key"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600, name


def test_a_writer_cancelled_mid_write_leaves_the_database_free_for_others(tmp_path: Path) -> None:
    """A visitor's stop cancels the answer's task while it may be writing its frames: the write
    still ends, so the write lock is free for the next writer (the operator's CLI) at once, every
    time, and what was flushed is kept in order (before: the lock stayed held until the garbage
    collector ran, and `tandem sites add` failed with "database is locked")."""
    path = tmp_path / "chat.db"

    def lock_is_free() -> bool:
        db = sqlite3.connect(path, timeout=0)
        try:
            db.execute("BEGIN IMMEDIATE")
            db.rollback()
            return True
        except sqlite3.OperationalError:
            return False
        finally:
            db.close()

    async def cancel_writers_at_random() -> None:
        store = await Store.open(path)
        await store.put_site(Site("shop", "Shop", ("https://shop.example",), "Be brief."))
        cid = await store.create_conversation("shop", "v1")
        answer = await store.add_message(cid, "assistant", "", "streaming", 1)
        seq, batches = 1, 0

        async def stream() -> None:
            nonlocal seq, batches
            while True:
                batch = []
                for _ in range(20):
                    seq += 1
                    batch.append({"type": "delta", "seq": seq, "message_id": answer.id, "text": "word " * 10})
                await store.append_frames(cid, batch, {answer.id: {"text": f"{seq}"}})
                batches += 1

        rng = random.Random(7)
        for _ in range(60):
            task = asyncio.create_task(stream())
            # cancelled once it has written a few batches: wherever in its next write the poll finds it
            target = batches + rng.randint(1, 3)
            await eventually_async(lambda: batches >= target, "the writer writing")
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await eventually_async(lock_is_free, "the write lock released after the cancelled write", timeout=5)
        seqs = [f["seq"] for f in await store.frames_after(cid, 0)]
        assert seqs == sorted(seqs) and len(seqs) == len(set(seqs)) and seqs
        await store.close()

    run(cancel_writers_at_random())


def test_a_dead_replicas_answers_are_marked_interrupted_by_another_once_its_heartbeat_stops(chat_db: Path | str) -> None:
    """On a store replicas share: a replica that is alive keeps its answers streaming whoever
    sweeps; once its heartbeat is older than the lease, another marks its cut answers (and never
    its own, nor a live one's)."""

    async def scenario() -> None:
        store = await Store.open(chat_db)
        try:
            await store.put_site(Site("s", "S", ("https://a.test",), "p"))
            cid = await store.create_conversation("s", "v1")
            await store.heartbeat("rep_a")
            await store.heartbeat("rep_b")
            on_a = await store.add_message(cid, "assistant", "", "streaming", 1, replica="rep_a")
            on_b = await store.add_message(cid, "assistant", "", "streaming", 2, replica="rep_b")
            legacy = await store.add_message(cid, "assistant", "", "streaming", 3)  # from before m008: nobody's
            assert await store.interrupt_streaming("rep_b", lease_seconds=60) == [(cid, legacy.id)]  # A is alive
            assert await store.interrupt_streaming("rep_b", lease_seconds=0) == [(cid, on_a.id)]  # A's beats stopped
            assert await store.alive("rep_a", 60) and not await store.alive("rep_a", 0)  # the same judgement, for A's claims
            await store.forget_replica("rep_b")  # stopped cleanly
            assert not await store.alive("rep_b", 60) and not await store.alive("rep_never", 60)
            statuses = {m.id: m.status for m in await store.messages(cid)}
            assert statuses == {on_a.id: "interrupted", on_b.id: "streaming", legacy.id: "interrupted"}
            ends = [f for f in await store.frames_after(cid, 0) if f["type"] == "done"]
            assert [(f["message_id"], f["finish_reason"]) for f in ends] == [(legacy.id, "interrupted"), (on_a.id, "interrupted")]
            assert ends[0]["seq"] < ends[1]["seq"]
        finally:
            await store.close()

    run(scenario())


def test_two_replicas_sweeping_at_once_mark_each_cut_answer_once(postgres) -> None:  # type: ignore[no-untyped-def]
    """Every live replica sweeps for a dead one's answers (and one taking over a dead replica's
    conversation sweeps at once): two sweeps at the same moment end each cut answer once, with one
    `done`, and neither fails."""
    url = postgres.create_database("sweeps_at_once")

    async def scenario() -> None:
        x, y = await Store.open(url), await Store.open(url)
        try:
            await x.put_site(Site("s", "S", ("https://a.test",), "p"))
            for _ in range(5):
                cut = {}
                for _ in range(8):
                    cid = await x.create_conversation("s", "v1")
                    cut[(await x.add_message(cid, "assistant", "", "streaming", 1, replica="rep_dead")).id] = cid
                swept = await asyncio.gather(x.interrupt_streaming("rep_x", 0), y.interrupt_streaming("rep_y", 0))
                assert sorted(swept[0] + swept[1]) == sorted((cid, mid) for mid, cid in cut.items())  # each once, by either
                for mid, cid in cut.items():
                    ends = [f for f in await y.frames_after(cid, 0) if f["type"] == "done"]
                    assert [(f["message_id"], f["finish_reason"]) for f in ends] == [(mid, "interrupted")]
        finally:
            await x.close()
            await y.close()

    run(scenario())
