"""Three real `tandem serve` replicas behind a real HAProxy (round-robin, no stickiness), sharing
their chat store and audit log on a real PostgreSQL and what is live on a real Redis, generating
through a scripted upstream (the model is not the point here): visitors whose every socket may
land on another replica lose nothing and get nothing twice; an answer started on one replica
reaches its visitor, moved to another, exactly once and in order; one answer at a time holds
across replicas; Redis killed and started again mid-run stops nothing; a replica stopped with
SIGTERM mid-answer says `draining`, lets the answer finish, stops by itself, and its visitor
carries on through the balancer on another replica."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from dialog.store import Site, Store
from dialog.tokens import VisitorTokens
from scripts.services import Haproxy, Postgres, Redis
from server.audit.keys import AuditKeys
from tests.conftest import ADMIN_TOKEN, ROOT, ThreadedServer, free_port, stop_process, wait_healthy
from tests.dialog.test_replicas import on
from tests.dialog_client import Chat
from tests.upstream.scripted_upstream import ScriptedUpstream
from tests.waiting import eventually

WORDS = [f" word{i}" for i in range(24)]
ANSWER = "".join(WORDS)


@dataclass
class Replica:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path


@dataclass
class Fleet:
    lb: Haproxy
    replicas: list[Replica]
    chat_url: str
    upstream: ScriptedUpstream
    redis: Redis


def start_replica(i: int, root: Path, upstream: str, chat_url: str, audit_url: str, redis_url: str) -> Replica:
    port = free_port()
    log = root / f"replica-{i}.log"
    args = [
        *("--port", str(port), "--upstream", upstream, "--database-url", chat_url, "--audit-database-url", audit_url),
        *("--dialog-dir", str(root / f"dialog-{i}"), "--audit-dir", str(root / f"audit-{i}"), "--admin-token", ADMIN_TOKEN),
        *("--no-demo-site", "--drain-seconds", "30", "--redis-url", redis_url),
    ]
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "server.cli", "serve", *args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    return Replica(f"http://127.0.0.1:{port}", proc, log)


@pytest.fixture(scope="module")
def fleet(postgres: Postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("fleet")
    chat_url = postgres.create_database("fleet_chat", owner="tandem_app")
    audit_url = postgres.create_database("fleet_audit", owner="tandem_app").replace("+asyncpg", "+psycopg")
    # the fleet's shared secrets, copied into each replica's folders as an operator would
    VisitorTokens.load_or_create(root / "dialog-0" / "visitor.key")
    AuditKeys.load_or_create(root / "audit-0")
    for i in (1, 2):
        shutil.copytree(root / "dialog-0", root / f"dialog-{i}")
        shutil.copytree(root / "audit-0", root / f"audit-{i}")

    on(chat_url, lambda store: store.put_site(Site("shop", "Shop", ("http://127.0.0.1:*",), "Be brief.")))
    upstream = ScriptedUpstream("fleet")
    upstream.pieces = WORDS
    with ThreadedServer(upstream.app(), free_port()) as up, Redis() as redis:
        replicas = [start_replica(i, root, up.url, chat_url, audit_url, redis.url) for i in range(3)]
        try:
            for r in replicas:
                wait_healthy(r.url, r.proc, r.log, 120, "a replica")  # type: ignore[arg-type]
            with Haproxy(free_port(), [r.url.removeprefix("http://") for r in replicas]) as lb:
                eventually(lambda: httpx.get(f"{lb.url}/healthz", timeout=5).status_code == 200, "the balancer's replicas checked")
                yield Fleet(lb, replicas, chat_url, upstream, redis)
        finally:
            upstream.release()
            for r in replicas:
                if r.proc.poll() is None:
                    stop_process(r.proc)  # type: ignore[arg-type]


def conversations(url: str) -> dict[str, list[Any]]:
    async def read(store: Store) -> dict[str, list[Any]]:
        return {c["id"]: await store.messages(c["id"]) for c in await store.list_conversations(limit=1000)}

    return dict(on(url, read))


def visit(lb: str, turns: int) -> str:
    """One visitor: each turn on a new socket through the balancer (so on whichever replica it picks)."""
    token = conversation = None
    for n in range(turns):
        with Chat(lb, site="shop", token=token, conversation_id=conversation) as chat:
            token, conversation = chat.token, chat.conversation_id
            answer, frames = chat.ask(f"Question {n} from a visitor?", timeout=60)
            assert answer == ANSWER and frames[-1]["finish_reason"] == "stop", frames[-3:]
    assert conversation is not None
    return conversation


def test_visitors_whose_sockets_land_on_any_replica_lose_nothing_and_get_nothing_twice(fleet: Fleet) -> None:
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda _: visit(fleet.lb.url, 2), range(24)))
    stored = conversations(fleet.chat_url)
    for cid in ids:
        roles = [(m.role, m.status, m.text if m.role == "assistant" else "") for m in stored[cid]]
        assert roles == [("user", "done", ""), ("assistant", "done", ANSWER)] * 2, roles  # every message once, complete
    answered_by = {m.replica for cid in ids for m in stored[cid] if m.role == "assistant"}
    assert len(answered_by) == 3  # round-robin with no stickiness: every replica answered some


def last_stored_seq(url: str, cid: str) -> int:
    async def read(store: Store) -> int:
        conv = await store.conversation(cid)
        return int(conv["last_seq"]) if conv else 0

    return int(on(url, read))


def test_an_answer_started_on_one_replica_reaches_its_visitor_moved_to_another_once_in_order(fleet: Fleet) -> None:
    fleet.upstream.delay = 0.1  # (about 2.4 s an answer)
    try:
        with Chat(fleet.replicas[0].url, site="shop") as chat:
            chat.say("Tell me everything?")
            before = chat.until("delta", timeout=30)
            token, cid, seen = chat.token, chat.conversation_id, before[-1]["seq"]
        # the socket dropped mid-answer; by the time the widget reconnects (half a second), what it saw is stored
        eventually(lambda: last_stored_seq(fleet.chat_url, cid) >= seen, "the frames seen stored")
        with Chat(fleet.replicas[1].url, site="shop", token=token, conversation_id=cid, last_seq=seen) as moved:
            assert moved.welcome["reset"] is False
            after = moved.until("done", timeout=30)
    finally:
        fleet.upstream.delay = 0.0
    frames = before + after
    seqs = [f["seq"] for f in frames]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # each frame once, in order, none missing
    assert "".join(f["text"] for f in frames if f["type"] == "delta") == ANSWER and after[-1]["finish_reason"] == "stop"


def test_one_answer_at_a_time_holds_across_replicas(fleet: Fleet) -> None:
    fleet.upstream.delay = 0.1
    try:
        with Chat(fleet.replicas[0].url, site="shop") as first:
            first.say("A slow one?")
            first.until("delta", timeout=30)
            with Chat(fleet.replicas[2].url, site="shop", token=first.token, conversation_id=first.conversation_id) as second:
                second.say("And meanwhile?")
                refused = second.until("error", timeout=30)[-1]
                assert refused["code"] == "busy"
                relayed = second.until("done", timeout=30)  # and it sees the first answer as it is made
                assert "".join(f["text"] for f in relayed if f["type"] == "delta").endswith(WORDS[-1])
            first.until("done", timeout=30)
    finally:
        fleet.upstream.delay = 0.0
    with Chat(fleet.replicas[2].url, site="shop", token=first.token, conversation_id=first.conversation_id) as again:
        assert again.ask("Now?", timeout=60)[0] == ANSWER  # once it is done, any replica may answer


def test_redis_killed_and_started_again_stops_nothing(fleet: Fleet) -> None:
    one = fleet.replicas[0]
    fleet.redis.stop()
    assert visit(fleet.lb.url, 1)  # serving goes on: each replica its own sockets
    assert eventually(lambda: httpx.get(f"{one.url}/healthz", timeout=5).json().get("redis") == "down", "healthz saying Redis is down")
    assert "tandem_redis_up 0.0" in httpx.get(f"{one.url}/metrics", timeout=5).text
    fleet.redis.start()
    eventually(lambda: httpx.get(f"{one.url}/healthz", timeout=5).json().get("redis") == "up", "healthz saying Redis is back", timeout=30)
    test_an_answer_started_on_one_replica_reaches_its_visitor_moved_to_another_once_in_order(fleet)  # live across replicas again


def test_a_replica_stopped_mid_answer_drains_and_its_visitor_carries_on_elsewhere(fleet: Fleet) -> None:
    fleet.upstream.delay = 0.1  # (an answer of 24 pieces: about 2.4 s)
    leaving = fleet.replicas[2]
    with Chat(leaving.url, site="shop") as chat:
        chat.say("A long question?")
        first = chat.until("delta", timeout=30)
        leaving.proc.send_signal(signal.SIGTERM)
        health = eventually(lambda: httpx.get(f"{leaving.url}/healthz", timeout=5), "healthz answering while it drains")
        assert health.status_code == 503 and health.json()["state"] == "draining"
        with pytest.raises(Exception):  # a new visitor on the draining replica is sent away (1012) to reconnect elsewhere
            Chat(leaving.url, site="shop").close()
        rest = chat.until("done", timeout=30)
        frames = first + rest
        assert "".join(f["text"] for f in frames if f["type"] == "delta") == ANSWER and rest[-1]["finish_reason"] == "stop"
        token, cid, last_seq = chat.token, chat.conversation_id, frames[-1]["seq"]
    assert leaving.proc.wait(timeout=60) == 0  # it stopped by itself once the answer was done
    fleet.upstream.delay = 0.0
    with Chat(fleet.lb.url, site="shop", token=token, conversation_id=cid, last_seq=last_seq) as again:  # another replica
        assert again.welcome["type"] == "welcome"
        answer, _ = again.ask("And another?", timeout=60)
        assert answer == ANSWER
    stored = conversations(fleet.chat_url)[cid]
    assert [(m.role, m.status) for m in stored] == [("user", "done"), ("assistant", "done")] * 2
    assert stored[1].text == ANSWER and stored[1].replica != stored[3].replica
    assert all(httpx.get(f"{r.url}/healthz", timeout=5).json()["state"] == "ready" for r in fleet.replicas[:2])
    assert os.path.exists(leaving.log)
