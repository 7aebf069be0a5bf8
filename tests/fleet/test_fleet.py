"""Three real `tandem serve` replicas behind a real HAProxy (round-robin, no stickiness, the
visitor's address forwarded), sharing their chat store and audit log on a real PostgreSQL and
what is live on a real Redis, generating through a scripted upstream (the model is not the point
here): 100 visitors x 3 turns, every socket on whichever replica the balancer picks, lose nothing
and get nothing twice; a visitor who drops mid-answer and comes back through the balancer, to
another replica, gets the rest of the answer once and in order; one answer at a time and the
rate limits hold across replicas; Redis killed and started again mid-run stops nothing; a
replica stopped with SIGTERM mid-answer drains; one killed with SIGKILL mid-answer leaves its
cut answers marked interrupted by the others, and nothing else lost, and the claim it left in
Redis keeps none of its visitors waiting; the fleet's one audit chain verifies."""

from __future__ import annotations

import contextlib
import itertools
import json
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
from redis import Redis as RedisClient

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
VISITOR_MESSAGES, IP_CONNECTIONS = 6, 30  # a minute, for the whole fleet
LEASE = 5.0  # seconds without a heartbeat before a replica counts as dead
_ADDRESSES = itertools.count(1)


def address() -> str:
    """A visitor's own address (all of 127/8 is loopback), so that each has its own per-IP limits."""
    n = next(_ADDRESSES)
    return f"127.0.{1 + n // 250}.{1 + n % 250}"


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
    audit_url: str
    audit_dir: Path  # (its keys: every replica has a copy)
    upstream: Any  # the scripted upstream the replicas generate through, where they do
    redis: Redis
    start: Any  # (i, port) -> Replica: a replica started again in its place

    def restart(self, i: int) -> None:
        """Replica `i`, stopped by a test, started again on its port (the balancer's checks take it back)."""
        port = int(self.replicas[i].url.rsplit(":", 1)[1])
        self.replicas[i] = replica = self.start(i, port)
        wait_healthy(replica.url, replica.proc, replica.log, 120, "a restarted replica")  # type: ignore[arg-type]
        eventually(lambda: self.lb.up() == len(self.replicas), "the balancer sending to every replica again")


def fleet_settings(root: Path, upstream: str, chat_url: str, audit_url: str, redis_url: str) -> Path:
    """What every replica shares, in one settings file, as an operator would deploy it."""
    path = root / "tandem.toml"
    path.write_text(
        f"upstream = [{upstream!r}]\ndatabase-url = {chat_url!r}\naudit-database-url = {audit_url!r}\nredis-url = {redis_url!r}\n"
        f"admin-token = {ADMIN_TOKEN!r}\nno-demo-site = true\ndrain-seconds = 30\nreplica-lease-seconds = {LEASE}\n"
        f"visitor-messages-per-minute = {VISITOR_MESSAGES}\nip-connections-per-minute = {IP_CONNECTIONS}\n"
    )
    return path


def start_replica(i: int, root: Path, settings: Path, port: int | None = None) -> Replica:
    port = port or free_port()
    log = root / f"replica-{i}.log"
    own = {
        "--port": str(port),
        "--dialog-dir": str(root / f"dialog-{i}"),
        "--audit-dir": str(root / f"audit-{i}"),
    }  # (the rest is in the shared file)
    args = ["--config", str(settings), *(part for option in own.items() for part in option)]
    with open(log, "a") as out:
        proc = subprocess.Popen([sys.executable, "-m", "server.cli", "serve", *args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    return Replica(f"http://127.0.0.1:{port}", proc, log)


@contextlib.contextmanager
def running_fleet(postgres: Postgres, root: Path, name: str, upstream_url: str) -> Iterator[Fleet]:
    """Three replicas generating through `upstream_url`, on their own databases and Redis, behind HAProxy."""
    chat_url = postgres.create_database(f"{name}_chat", owner="tandem_app")
    audit_url = postgres.create_database(f"{name}_audit", owner="tandem_app").replace("+asyncpg", "+psycopg")
    # the fleet's shared secrets, copied into each replica's folders as an operator would
    VisitorTokens.load_or_create(root / "dialog-0" / "visitor.key")
    AuditKeys.load_or_create(root / "audit-0")
    for i in (1, 2):
        shutil.copytree(root / "dialog-0", root / f"dialog-{i}")
        shutil.copytree(root / "audit-0", root / f"audit-{i}")
    on(chat_url, lambda store: store.put_site(Site("shop", "Shop", ("http://127.0.0.1:*",), "Be brief.")))
    with Redis() as redis:
        settings = fleet_settings(root, upstream_url, chat_url, audit_url, redis.url)

        def start(i: int, port: int | None = None) -> Replica:
            return start_replica(i, root, settings, port)

        replicas = [start(i) for i in range(3)]
        try:
            for r in replicas:
                wait_healthy(r.url, r.proc, r.log, 120, "a replica")  # type: ignore[arg-type]
            with Haproxy(free_port(), [r.url.removeprefix("http://") for r in replicas]) as lb:
                eventually(lambda: lb.up() == 3, "the balancer's checks passing on every replica")
                yield Fleet(lb, replicas, chat_url, audit_url, root / "audit-0", None, redis, start)
        finally:
            for r in replicas:
                if r.proc.poll() is None:
                    stop_process(r.proc)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def fleet(postgres: Postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    upstream = ScriptedUpstream("fleet")
    upstream.pieces = WORDS
    with ThreadedServer(upstream.app(), free_port()) as up:
        try:
            with running_fleet(postgres, tmp_path_factory.mktemp("fleet"), "fleet", up.url) as running:
                running.upstream = upstream
                yield running
        finally:
            upstream.release()


def conversations(url: str) -> dict[str, list[Any]]:
    async def read(store: Store) -> dict[str, list[Any]]:
        return {c["id"]: await store.messages(c["id"]) for c in await store.list_conversations(limit=10_000)}

    return dict(on(url, read))


def converse(lb: str, source: str, questions: list[str], timeout: float = 60, answered: list[str] | None = None) -> tuple[str, list[Any]]:
    """One visitor: each question on a new socket through the balancer (so on whichever replica
    it picks); its conversation and, for each answer, its text and last frame. Each answer, once
    read, is noted in `answered`."""
    token = conversation = None
    answers = []
    for question in questions:
        with Chat(lb, site="shop", token=token, conversation_id=conversation, source=source) as chat:
            token, conversation = chat.token, chat.conversation_id
            answer, frames = chat.ask(question, timeout=timeout)
            answers.append((answer, frames[-1]))
            if answered is not None:
                answered.append(conversation)
    assert conversation is not None
    return conversation, answers


def visit(lb: str, turns: int, source: str, answered: list[str] | None = None) -> str:
    """A visitor of the scripted fleet: every answer whole."""
    conversation, answers = converse(lb, source, [f"Question {n} from a visitor?" for n in range(turns)], answered=answered)
    for answer, done in answers:
        assert answer == ANSWER and done["finish_reason"] == "stop", done
    return conversation


def relayed(fleet: Fleet) -> float:
    """Answers the replicas relayed from another replica, so far (their /metrics, summed)."""
    total = 0.0
    for r in fleet.replicas:
        for line in httpx.get(f"{r.url}/metrics", timeout=5).text.splitlines():
            if line.startswith("tandem_dialog_relayed_answers_total "):
                total += float(line.split()[1])
    return total


def turn(chat: Chat, text: str, timeout: float = 60) -> tuple[str, dict[str, Any]]:
    """A message and what ended it: the answer's `done`, or an error such as `busy` (no `done` follows one)."""
    chat.say(text)
    frames: list[dict[str, Any]] = []
    while not frames or frames[-1]["type"] not in ("done", "error"):
        frames.append(chat.recv(timeout))
    return "".join(f["text"] for f in frames if f["type"] == "delta"), frames[-1]


def test_a_hundred_visitors_three_turns_each_on_any_replica_lose_nothing_and_get_nothing_twice(fleet: Fleet) -> None:
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda _: visit(fleet.lb.url, 3, address()), range(100)))
    assert len(set(ids)) == 100
    stored = conversations(fleet.chat_url)
    for cid in ids:
        roles = [(m.role, m.status, m.text if m.role == "assistant" else "") for m in stored[cid]]
        assert roles == [("user", "done", ""), ("assistant", "done", ANSWER)] * 3, roles  # every message once, complete
    answered_by = {m.replica for cid in ids for m in stored[cid] if m.role == "assistant"}
    assert len(answered_by) == 3  # round-robin with no stickiness: every replica answered some


def test_a_visitor_who_drops_mid_answer_gets_the_rest_once_through_the_balancer_from_another_replica(fleet: Fleet) -> None:
    fleet.upstream.delay = 0.1  # (about 2.4 s an answer)
    source, before_relays = address(), relayed(fleet)
    try:
        with Chat(fleet.lb.url, site="shop", source=source) as chat:
            chat.say("Tell me everything?")
            before = chat.until("delta", timeout=30)
            token, cid, seen = chat.token, chat.conversation_id, before[-1]["seq"]
        # straight back, as the widget does (what it saw may not be stored yet: it is on Redis);
        # round-robin sends this socket to the next replica, not the one answering
        with Chat(fleet.lb.url, site="shop", token=token, conversation_id=cid, last_seq=seen, source=source) as moved:
            assert moved.welcome["reset"] is False and moved.welcome["seq"] == seen
            after = moved.until("done", timeout=30)
    finally:
        fleet.upstream.delay = 0.0
    frames = before + after
    seqs = [f["seq"] for f in frames]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # each frame once, in order, none missing
    assert "".join(f["text"] for f in frames if f["type"] == "delta") == ANSWER and after[-1]["finish_reason"] == "stop"
    assert relayed(fleet) == before_relays + 1  # the rest came from another replica, through Redis


def test_one_answer_at_a_time_holds_across_replicas(fleet: Fleet) -> None:
    fleet.upstream.delay = 0.1
    source = address()
    try:
        with Chat(fleet.replicas[0].url, site="shop", source=source) as first:
            first.say("A slow one?")
            first.until("delta", timeout=30)
            with Chat(
                fleet.replicas[2].url, site="shop", token=first.token, conversation_id=first.conversation_id, source=source
            ) as second:
                second.say("And meanwhile?")
                refused = second.until("error", timeout=30)[-1]
                assert refused["code"] == "busy"
                seen_there = second.until("done", timeout=30)  # and it sees the first answer as it is made
                assert "".join(f["text"] for f in seen_there if f["type"] == "delta").endswith(WORDS[-1])
            first.until("done", timeout=30)
    finally:
        fleet.upstream.delay = 0.0
    with Chat(fleet.replicas[2].url, site="shop", token=first.token, conversation_id=first.conversation_id, source=source) as again:
        assert again.ask("Now?", timeout=60)[0] == ANSWER  # once it is done, any replica may answer


def first_frame_after(chat: Chat, text: str) -> dict[str, Any]:
    """The frame that answers a message: its ack, or the error that refused it."""
    chat.say(text)
    while True:
        frame = chat.recv(timeout=60)
        if frame["type"] in ("ack", "error"):
            return frame


def test_rate_limits_hold_across_replicas(fleet: Fleet) -> None:
    # a visitor's messages, each on a new socket through the balancer (so round the replicas):
    # the fleet allows VISITOR_MESSAGES a minute in all, not that many per replica
    source, token, cid, answers = address(), None, None, []
    for n in range(VISITOR_MESSAGES + 2):
        with Chat(fleet.lb.url, site="shop", token=token, conversation_id=cid, source=source) as chat:
            token, cid = chat.token, chat.conversation_id
            answers.append(first_frame_after(chat, f"Question {n}?"))
            if answers[-1]["type"] == "ack":
                chat.until("done", timeout=60)
    assert [a["type"] for a in answers] == ["ack"] * VISITOR_MESSAGES + ["error"] * 2
    assert {a["code"] for a in answers[VISITOR_MESSAGES:]} == {"rate_limited"} and all(
        1 <= a["retry_after"] <= 60 for a in answers[VISITOR_MESSAGES:]
    )
    # connections from one address: IP_CONNECTIONS a minute for the whole fleet
    source = address()
    welcomes = []
    for _ in range(IP_CONNECTIONS + 3):
        with Chat(fleet.lb.url, site="shop", source=source) as chat:
            welcomes.append(chat.welcome)
    assert [w["type"] for w in welcomes] == ["welcome"] * IP_CONNECTIONS + ["error"] * 3
    assert welcomes[-1]["code"] == "rate_limited"
    with Chat(fleet.lb.url, site="shop", source=address()) as other:  # another address is not held back
        assert other.welcome["type"] == "welcome"


def test_redis_killed_and_started_again_mid_run_stops_nothing(fleet: Fleet) -> None:
    one, answered = fleet.replicas[0], []  # type: Replica, list[str]
    fleet.upstream.delay = 0.01  # (a quarter of a second an answer: the run outlasts Redis's absence)
    try:
        with ThreadPoolExecutor(6) as pool:
            running = [pool.submit(visit, fleet.lb.url, 3, address(), answered) for _ in range(24)]
            eventually(lambda: len(answered) >= 12, "visitors answered with Redis")
            fleet.redis.stop()
            eventually(lambda: httpx.get(f"{one.url}/healthz", timeout=5).json().get("redis") == "down", "healthz saying Redis is down")
            assert "tandem_redis_up 0.0" in httpx.get(f"{one.url}/metrics", timeout=5).text
            eventually(lambda: len(answered) >= 36, "visitors answered without Redis (each replica its own sockets)")
            fleet.redis.start()
            ids = [visitor.result(timeout=300) for visitor in running]
    finally:
        fleet.upstream.delay = 0.0
    eventually(lambda: httpx.get(f"{one.url}/healthz", timeout=5).json().get("redis") == "up", "healthz saying Redis is back", timeout=30)
    assert len(answered) == 72
    stored = conversations(fleet.chat_url)
    for cid in ids:  # the counts still hold
        assert [(m.role, m.status, m.text if m.role == "assistant" else "") for m in stored[cid]] == [
            ("user", "done", ""),
            ("assistant", "done", ANSWER),
        ] * 3
    test_a_visitor_who_drops_mid_answer_gets_the_rest_once_through_the_balancer_from_another_replica(fleet)  # live across replicas again


def test_a_replica_stopped_mid_answer_drains_and_its_visitor_carries_on_elsewhere(fleet: Fleet) -> None:
    fleet.upstream.delay = 0.1  # (an answer of 24 pieces: about 2.4 s)
    leaving, source = fleet.replicas[2], address()
    with Chat(leaving.url, site="shop", source=source) as chat:
        chat.say("A long question?")
        first = chat.until("delta", timeout=30)
        leaving.proc.send_signal(signal.SIGTERM)
        health = eventually(lambda: httpx.get(f"{leaving.url}/healthz", timeout=5), "healthz answering while it drains")
        assert health.status_code == 503 and health.json()["state"] == "draining"
        with pytest.raises(Exception):  # a new visitor on the draining replica is sent away (1012) to reconnect elsewhere
            Chat(leaving.url, site="shop", source=address()).close()
        rest = chat.until("done", timeout=30)
        frames = first + rest
        assert "".join(f["text"] for f in frames if f["type"] == "delta") == ANSWER and rest[-1]["finish_reason"] == "stop"
        token, cid, last_seq = chat.token, chat.conversation_id, frames[-1]["seq"]
    assert leaving.proc.wait(timeout=60) == 0  # it stopped by itself once the answer was done
    fleet.upstream.delay = 0.0
    with Chat(fleet.lb.url, site="shop", token=token, conversation_id=cid, last_seq=last_seq, source=source) as again:  # another replica
        assert again.welcome["type"] == "welcome"
        answer, _ = again.ask("And another?", timeout=60)
        assert answer == ANSWER
    stored = conversations(fleet.chat_url)[cid]
    assert [(m.role, m.status) for m in stored] == [("user", "done"), ("assistant", "done")] * 2
    assert stored[1].text == ANSWER and stored[1].replica != stored[3].replica
    assert all(httpx.get(f"{r.url}/healthz", timeout=5).json()["state"] == "ready" for r in fleet.replicas[:2])
    assert os.path.exists(leaving.log)
    fleet.restart(2)


def test_a_replica_killed_mid_answer_leaves_its_cut_answers_interrupted_and_nothing_else_lost(fleet: Fleet) -> None:
    fleet.upstream.delay = 0.15  # (about 3.6 s an answer)
    victim = fleet.replicas[1]
    cut: list[Chat] = []
    kept: list[Chat] = []
    try:
        cut += [Chat(victim.url, site="shop", source=address()) for _ in range(3)]
        kept += [Chat(fleet.replicas[i].url, site="shop", source=address()) for i in (0, 2, 0)]
        for chat in cut + kept:
            chat.say("A long question?")
        seen = {id(chat): chat.until("delta", timeout=30)[-1]["seq"] for chat in cut + kept}
        victim.proc.kill()
        victim.proc.wait(timeout=30)
        for chat in kept:  # the other replicas' answers go on
            rest = chat.until("done", timeout=60)
            assert rest[-1]["finish_reason"] == "stop"
        for chat in cut:  # the cut visitors' widgets reconnect through the balancer, to a live replica
            chat.close()
            with Chat(fleet.lb.url, site="shop", token=chat.token, conversation_id=chat.conversation_id, last_seq=seen[id(chat)]) as back:
                if back.welcome["reset"]:  # it saw frames the crash lost, and the cut answer is marked: the history says so
                    assert [m["status"] for m in back.welcome["history"]] == ["done", "interrupted"]
                else:  # the answer ends as soon as another replica notices the dead one (its lease)
                    assert back.until("done", timeout=60)[-1]["finish_reason"] == "interrupted"
                answer, done = turn(back, "Are you there?")  # and the conversation goes on
                assert (answer, done.get("finish_reason")) == (ANSWER, "stop"), done
    finally:
        fleet.upstream.delay = 0.0
        for chat in cut + kept:
            chat.close()
    stored = conversations(fleet.chat_url)
    for chat in cut:
        messages = stored[chat.conversation_id]
        assert [(m.role, m.status) for m in messages] == [
            ("user", "done"),
            ("assistant", "interrupted"),
            ("user", "done"),
            ("assistant", "done"),
        ]
        assert ANSWER.startswith(messages[1].text)  # what was stored of the cut answer, as it was (the last 0.1 s is lost)
    for chat in kept:
        assert [(m.role, m.status, m.text) for m in stored[chat.conversation_id]][1] == ("assistant", "done", ANSWER)
    fleet.restart(1)


def test_a_claim_outliving_its_dead_replica_keeps_no_visitor_waiting(fleet: Fleet) -> None:
    # A SIGKILLed replica's claim in Redis, renewed at each flush, outlives its last heartbeat by up
    # to a beat. Here it outlives it by a minute, and the replica never beat at all.
    claims = RedisClient.from_url(fleet.redis.url)
    gone = "rep_gone"

    def claimed(cid: str) -> None:
        assert claims.set(f"tandem:answering:{cid}", gone, px=60_000)

    try:
        with Chat(fleet.lb.url, site="shop", source=address()) as chat:  # a claim alone (it died holding a message for the people, say)
            claimed(chat.conversation_id)
            answer, done = turn(chat, "Hello?")
            assert (answer, done.get("finish_reason")) == (ANSWER, "stop"), done  # not `busy` for a minute
        source = address()
        with Chat(fleet.lb.url, site="shop", source=source) as chat:  # a claim and the answer it was making
            token, cid = chat.token, chat.conversation_id
            assert turn(chat, "Hello?")[0] == ANSWER

        async def cut(store: Store) -> None:
            last = (await store.conversation(cid) or {})["last_seq"]
            await store.add_message(cid, "user", "And then?", "done", last + 1)
            await store.add_message(cid, "assistant", "Half an ans", "streaming", last + 2, replica=gone)

        on(fleet.chat_url, cut)
        claimed(cid)
        with Chat(fleet.lb.url, site="shop", token=token, conversation_id=cid, source=source) as back:
            if back.welcome["history"][-1]["status"] != "interrupted":  # not marked yet: the replica the visitor is on follows it
                done = back.until("done", timeout=30)[-1]  # marked by a live replica, which lets the claim go (it had 60 s to run)
                assert done["finish_reason"] == "interrupted"
            answer, done = turn(back, "Are you there?")
            assert (answer, done.get("finish_reason")) == (ANSWER, "stop"), done
        assert claims.get(f"tandem:answering:{cid}") is None
        messages = conversations(fleet.chat_url)[cid]
        assert [(m.role, m.status) for m in messages] == [
            ("user", "done"),
            ("assistant", "done"),
            ("user", "done"),
            ("assistant", "interrupted"),
            ("user", "done"),
            ("assistant", "done"),
        ]
    finally:
        claims.close()


def test_the_fleets_one_audit_chain_verifies(fleet: Fleet) -> None:
    def audit(*args: str) -> subprocess.CompletedProcess[str]:
        command = [
            sys.executable,
            "-m",
            "server.cli",
            "audit",
            *args,
            "--audit-database-url",
            fleet.audit_url,
            "--audit-dir",
            str(fleet.audit_dir),
        ]
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)

    verified = audit("verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    records = [json.loads(line) for line in audit("search", "--json", "--limit", "100000").stdout.splitlines()]
    assert len(records) >= 100 * 3  # every answer of the run has its record, in one chain
    interrupted = audit("search", "--outcome", "interrupted", "--json").stdout.splitlines()
    assert len(interrupted) >= 3  # the killed replica's cut calls, recorded by another
