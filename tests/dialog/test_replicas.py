"""Replicas sharing one chat store on PostgreSQL: a server notices a dead replica (its heartbeat
stopped) and marks that replica's cut answers interrupted, at start-up and while it runs, and
leaves a live replica's answers streaming."""

from __future__ import annotations

import asyncio
from typing import Any

from dialog.store import Site, Store
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
