"""Replicas sharing one chat store on PostgreSQL: a server notices a dead replica (its heartbeat
stopped) and marks that replica's cut answers interrupted, at start-up and while it runs, and
leaves a live replica's answers streaming; a visitor writing while a dead replica's claim is still
in Redis is answered, after that replica's cut answer is ended."""

from __future__ import annotations

import asyncio
from typing import Any

from redis import Redis as RedisClient

from dialog.store import Site, Store
from tests.dialog_client import Chat
from tests.waiting import eventually


def on(url: str, work: Any) -> Any:
    async def go() -> Any:
        store = await Store.open(url)
        try:
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(go())


def test_a_server_marks_a_dead_replicas_cut_answers_and_not_a_live_ones(tiny_server, postgres) -> None:  # type: ignore[no-untyped-def]
    url = postgres.create_database("replicas_cut")

    async def seed(store: Store) -> tuple[str, str]:
        await store.put_site(Site("shop", "Shop", ("https://shop.test",), "Be brief."))
        cid = await store.create_conversation("shop", "v1")
        await store.heartbeat("rep_live")
        dead = await store.add_message(cid, "assistant", "Half an ans", "streaming", 1, replica="rep_dead")  # never beat: SIGKILLed
        live = await store.add_message(cid, "assistant", "Still", "streaming", 2, replica="rep_live")
        return dead.id, live.id

    dead, live = on(url, seed)

    def status(mid: str) -> str:
        async def read(store: Store) -> str:
            cid = (await store.list_conversations())[0]["id"]
            return next(m.status for m in await store.messages(cid) if m.id == mid)

        return str(on(url, read))

    with tiny_server(dialog={"database_url": url, "lease_seconds": 1.5}):
        eventually(lambda: status(dead) == "interrupted", "the dead replica's answer marked at start-up", timeout=30)
        for _ in range(3):  # the live replica beats for a while: its answer stays streaming
            on(url, lambda store: store.heartbeat("rep_live"))
            assert status(live) == "streaming"
        eventually(lambda: status(live) == "interrupted", "the replica whose beats stopped, found by the server's watch", timeout=30)


def test_a_message_before_a_dead_replicas_cut_answer_is_marked_ends_that_answer_first(tiny_server, postgres, redis) -> None:  # type: ignore[no-untyped-def]
    """A SIGKILLed replica's claim in Redis, renewed at each flush, can outlive its heartbeat; here
    it has ten minutes to run, and the server sweeps for dead replicas only at start-up and every
    200 s, so the visitor's message comes first. It is not refused `busy`: the server ends the cut
    answer (its `done` to the visitor first), then answers, every frame after that end."""
    url = postgres.create_database("replicas_take_over")
    claims = RedisClient.from_url(redis.url)
    try:
        with (
            tiny_server(dialog={"database_url": url, "redis_url": redis.url, "lease_seconds": 600, "max_answer_tokens": 16}) as s,
            Chat(s.url) as chat,
        ):
            cid = chat.conversation_id
            cut = on(url, lambda store: store.add_message(cid, "assistant", "Half an ans", "streaming", 1, replica="rep_gone"))
            assert claims.set(f"tandem:answering:{cid}", "rep_gone", px=600_000)
            chat.say("Hello?")
            got = [chat.recv(30)]
            while got[-1]["type"] != "error" and not (got[-1]["type"] == "done" and got[-1]["message_id"] != cut.id):
                got.append(chat.recv(30))
            ended, ack, *_, done = got
            assert (ended["type"], ended.get("message_id"), ended.get("finish_reason")) == ("done", cut.id, "interrupted"), got
            assert ack["type"] == "ack" and ack["seq"] > ended["seq"] and done["finish_reason"] in ("stop", "length"), got
            assert claims.get(f"tandem:answering:{cid}") is None  # let go with the answer, as any
        stored = on(url, lambda store: store.messages(cid))
        assert [(m.role, m.status) for m in stored] == [("assistant", "interrupted"), ("user", "done"), ("assistant", "done")]
    finally:
        claims.close()
