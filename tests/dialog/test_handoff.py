"""People in the loop over the real sockets of a real server (scripted engine): a visitor asks for
a person (the button, or the words), a staff console sees it, takes it over, replies as an agent
(the visitor's widget gets the agent's name and words), hands it back (the bot answers again) and
closes it; the visitor rates; every move is in the audit log, /metrics and the transcript. And
who may do what: a staff member sees only their sites; a visitor's token, the API key or the admin
token open no console; a removed staff member's open console stops."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from dialog.handoff import asks_for_person
from dialog.store import Site, Store
from server.audit import AuditReader, Filters
from tests.conftest import ADMIN_TOKEN, metric
from tests.dialog_client import Chat, Console, staff_token
from tests.waiting import eventually


def add_site(dialog_dir: Path, key: str, origin: str) -> None:
    async def go() -> None:
        store = await Store.open(dialog_dir / "chat.db")
        await store.put_site(Site(key, key, (origin,), "You help."))
        await store.close()

    asyncio.run(go())


def frames_until(chat: Chat, kind: str, **match: object) -> dict[str, Any]:
    while True:
        frame = chat.recv(60)
        if frame["type"] == kind and all(frame.get(k) == v for k, v in match.items()):
            return frame


def conversation_update(console: Console, cid: str, **match: object) -> dict[str, object]:
    return console.until(lambda f: f["type"] == "conversation" and f["id"] == cid and all(f.get(k) == v for k, v in match.items()))


def test_a_person_is_asked_for_takes_over_replies_hands_back_and_closes(tiny_server) -> None:
    with tiny_server(dialog={"max_answer_tokens": 4}) as s:
        token = staff_token(s.dialog_dir, "Dana", ["demo"])
        with Console(s.url, token) as console, Chat(s.url) as visitor:
            assert console.ready["type"] == "ready" and console.ready["staff"] == {"name": "Dana"} and "demo" in console.ready["sites"]
            assert visitor.welcome["answering"] == {"status": "bot", "agent": None}
            cid = visitor.conversation_id
            visitor.ask("Where is my parcel?")  # the bot answers first
            visitor.send({"type": "handoff"})
            assert frames_until(visitor, "status")["status"] == "waiting"
            conversation_update(console, cid, status="waiting")
            asked = len(s.engine.requests)
            visitor.say("Hello? Anyone there?")
            frames_until(visitor, "ack")
            conversation_update(console, cid, last="Hello? Anyone there?")  # the console is told of the held message
            console.send({"type": "open", "conversation_id": cid})
            opened = console.until(lambda f: f["type"] == "opened")
            texts = [m["text"] for m in opened["transcript"]["messages"]]
            assert texts[0] == "Where is my parcel?" and texts[-1] == "Hello? Anyone there?"
            assert len(s.engine.requests) == asked  # kept for the person: the bot did not answer it

            console.send({"type": "take", "conversation_id": cid})
            taken = frames_until(visitor, "status")
            assert taken["status"] == "agent" and taken["agent"] == "Dana"
            console.send({"type": "reply", "conversation_id": cid, "text": "Hi, Dana here. Your parcel left today."})
            reply = frames_until(visitor, "agent_message")
            assert reply["author"] == "Dana" and reply["text"] == "Hi, Dana here. Your parcel left today."
            live = console.until(lambda f: f["type"] == "frame" and f["frame"]["type"] == "agent_message")  # the console reads it live too
            assert live["conversation_id"] == cid

            console.send({"type": "hand_back", "conversation_id": cid})
            assert frames_until(visitor, "status")["status"] == "bot"
            answer, got = visitor.ask("Thanks! And your returns policy?")
            assert got[-1]["type"] == "done" and answer  # the bot answers again
            visitor.send({"type": "rate", "message_id": got[-1]["message_id"], "value": "up"})
            assert frames_until(visitor, "rated")["value"] == "up"

            console.send({"type": "close", "conversation_id": cid})
            assert frames_until(visitor, "status")["status"] == "closed"
            visitor.send({"type": "rate", "score": 5})
            assert frames_until(visitor, "rated")["score"] == 5
            assert conversation_update(console, cid, rating=5)["status"] == "closed"

        # a reloaded widget knows who answers, and whose words were whose
        with Chat(s.url, token=visitor.token, conversation_id=cid) as again:
            assert again.welcome["answering"]["status"] == "closed"
            agent = [m for m in again.welcome["history"] if m["role"] == "agent"]
            assert agent and agent[0]["author"] == "Dana"
        assert metric(s.url, "tandem_dialog_ratings_total", 'kind="conversation",value="5"') == 1
        assert metric(s.url, "tandem_dialog_ratings_total", 'kind="answer",value="up"') == 1
        assert metric(s.url, "tandem_dialog_handoffs_total", 'reason="button"') == 1
        reader = AuditReader(s.audit_dir)

        def support_events() -> list[dict[str, dict[str, object]]] | None:
            found = [r for r in reader.search(Filters(conversation=cid), limit=50) if r["record"]["type"] == "support.event"]
            return found if len(found) >= 6 else None

        events = eventually(support_events, "the six support events in the audit log")
        moves = sorted(r["record"]["outcome"]["status"] for r in events)
        assert moves == sorted(["handoff_requested", "taken_over", "handed_back", "rated", "closed", "rated"])
        kinds = {r["record"]["outcome"]["status"]: r["record"]["actor"]["kind"] for r in events}
        assert kinds["taken_over"] == kinds["closed"] == "staff" and kinds["handoff_requested"] == "widget_visitor"


def test_the_words_ask_for_a_person_and_the_transcript_has_everything(tiny_server) -> None:
    with tiny_server(dialog={"max_answer_tokens": 4}) as s:
        token = staff_token(s.dialog_dir, "Ana", ["demo"])
        with Chat(s.url, languages=["de"]) as visitor:
            asked = len(s.engine.requests)
            visitor.say("Ich möchte mit einem Menschen sprechen, bitte")
            assert frames_until(visitor, "status")["status"] == "waiting"
            assert len(s.engine.requests) == asked
            with Console(s.url, token) as console:
                listed = {c["id"]: c for c in console.ready["conversations"]}
                assert listed[visitor.conversation_id]["status"] == "waiting"
                console.send({"type": "reply", "conversation_id": visitor.conversation_id, "text": "Hallo, hier ist Ana."})
                assert frames_until(visitor, "status")["agent"] == "Ana"  # replying takes it over
                frames_until(visitor, "agent_message")
        url = f"{s.url}/v1/console/conversations/{visitor.conversation_id}/transcript"
        text = httpx.get(url, params={"format": "text"}, headers={"Authorization": f"Bearer {token}"})
        assert text.status_code == 200 and "Agent Ana" in text.text and "mit einem Menschen sprechen" in text.text
        data = httpx.get(url, headers={"Authorization": f"Bearer {token}"}).json()
        assert data["status"] == "agent" and data["agent"] == "Ana" and data["messages"][-1]["author"] == "Ana"


@pytest.mark.parametrize(
    ("text", "asks"),
    [
        ("talk to a person", True),
        ("Can I speak with a human please?", True),
        ("human", True),
        ("je voudrais parler à un conseiller", True),
        ("¿Puedo hablar con una persona?", True),
        ("转人工", True),
        ("Is your staff friendly?", False),
        ("What does a human-powered bike cost?", False),
        ("How do I talk to my bank about a refund?", False),
    ],
)
def test_which_words_ask_for_a_person(text: str, asks: bool) -> None:
    assert asks_for_person(text) is asks


def test_staff_see_only_their_sites_and_no_other_credential_opens_the_console(tiny_server) -> None:
    with tiny_server(api_key="key-1") as s:
        add_site(s.dialog_dir, "acme", s.url)
        add_site(s.dialog_dir, "globex", s.url)
        acme_staff = staff_token(s.dialog_dir, "Ann", ["acme"])
        with Chat(s.url, site="globex") as globex_visitor, Chat(s.url, site="acme") as acme_visitor:
            globex_visitor.ask("hello")
            acme_visitor.ask("hello")
            with Console(s.url, acme_staff) as console:
                assert console.ready["sites"] == ["acme"]
                assert {c["site_key"] for c in console.ready["conversations"]} == {"acme"}
                for action in ({"type": "open"}, {"type": "take"}, {"type": "reply", "text": "hi"}, {"type": "close"}):
                    console.send({**action, "conversation_id": globex_visitor.conversation_id})
                    assert console.until(lambda f: f["type"] == "error")["code"] == "unknown_conversation"
                globex_visitor.ask("anyone?")  # another site's conversation changes: this console is not told
                acme_visitor.ask("anyone?")
                update = console.until(lambda f: f["type"] == "conversation")
                assert update["site_key"] == "acme"
            transcript = f"{s.url}/v1/console/conversations/{globex_visitor.conversation_id}/transcript"
            assert httpx.get(transcript, headers={"Authorization": f"Bearer {acme_staff}"}).status_code == 404
            # a visitor's token, the API key and the admin token are not staff tokens
            for wrong in (globex_visitor.token, "key-1", ADMIN_TOKEN, "tst_not-a-real-token"):
                with Console(s.url, wrong) as refused:
                    assert refused.ready["type"] == "error" and refused.ready["code"] == "unauthorized"
                    with pytest.raises(ConnectionClosed):
                        refused.recv(10)
            # and a staff token opens nothing else: not the audit log, not the API
            audit = httpx.get(f"{s.url}/audit/api/records", headers={"Authorization": f"Bearer {acme_staff}"})
            assert audit.status_code == 401
            page = httpx.get(f"{s.url}/audit", headers={"Authorization": f"Bearer {acme_staff}"})
            assert page.status_code == 401 and 'action="/audit/login"' in page.text  # the sign-in form, not the log
            login = httpx.post(f"{s.url}/audit/login", data={"token": acme_staff}, follow_redirects=False)
            assert login.status_code == 401 and "tandem_audit" not in login.cookies
            assert httpx.get(f"{s.url}/v1/models", headers={"Authorization": f"Bearer {acme_staff}"}).status_code == 401


def test_a_removed_staff_members_open_console_stops(tiny_server) -> None:
    with tiny_server(dialog={"max_answer_tokens": 4}) as s:
        token = staff_token(s.dialog_dir, "Bo", ["demo"])
        with Chat(s.url) as visitor, Console(s.url, token) as console:
            visitor.ask("hi")

            async def remove() -> None:
                from dialog.staff import StaffDirectory

                store = await Store.open(s.dialog_dir / "chat.db")
                assert await StaffDirectory(store.engine).remove("Bo")
                await store.close()

            asyncio.run(remove())
            console.send({"type": "take", "conversation_id": visitor.conversation_id})
            assert console.until(lambda f: f["type"] == "error")["code"] == "unauthorized"
            with pytest.raises(ConnectionClosed):
                console.recv(10)
            visitor.send({"type": "ping"})
            assert frames_until(visitor, "pong")  # no status change reached the visitor
            conv = asyncio.run(_conversation(s.dialog_dir, visitor.conversation_id))
            assert conv["status"] == "bot"


async def _conversation(dialog_dir: Path, cid: str) -> dict[str, object]:
    store = await Store.open(dialog_dir / "chat.db")
    try:
        conv = await store.conversation(cid)
        assert conv is not None
        return conv
    finally:
        await store.close()


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "auth", "token": "x"},
        {"type": "open"},
        {"type": "reply", "conversation_id": "c", "text": 5},
        {"type": "take", "conversation_id": "x" * 65},
        {"type": "dance", "conversation_id": "c"},
        "not json",
        json.dumps([1] * 100),
    ],
)
def test_a_bad_console_frame_is_refused_and_the_console_keeps_working(tiny_server, frame: object) -> None:
    with tiny_server(dialog={"max_answer_tokens": 4}) as s:
        token = staff_token(s.dialog_dir, "Cy", ["demo"])
        with Console(s.url, token) as console:
            console.ws.send(frame if isinstance(frame, str) else json.dumps(frame))
            error = console.until(lambda f: f["type"] == "error")
            assert error["code"] in ("bad_frame", "unknown_type", "already_signed_in") and len(error["message"]) < 200
            console.send({"type": "ping"})
            assert console.until(lambda f: f["type"] == "pong")


def test_an_agents_reply_is_guarded_like_any_output(tiny_server) -> None:
    card = "4111 1111 1111 1111"
    with tiny_server(dialog={"max_answer_tokens": 4}) as s:
        token = staff_token(s.dialog_dir, "Di", ["demo"])
        with Chat(s.url) as visitor, Console(s.url, token) as console:
            visitor.ask("hi")
            console.send({"type": "reply", "conversation_id": visitor.conversation_id, "text": f"Your card {card} is on file."})
            reply = frames_until(visitor, "agent_message")
            assert card not in reply["text"] and "on file" in reply["text"]


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ({"type": "rate", "score": 0}, "bad_frame"),
        ({"type": "rate", "score": 6}, "bad_frame"),
        ({"type": "rate", "score": "5"}, "bad_frame"),
        ({"type": "rate", "value": "up"}, "bad_frame"),  # thumbs on nothing
        ({"type": "rate", "message_id": "msg_nope", "value": "up"}, "unknown_message"),
        ({"type": "rate", "message_id": "msg_nope", "value": "meh"}, "bad_frame"),
        ({"type": "rate", "message_id": "m", "value": "up", "score": 3}, "bad_frame"),  # one or the other
        ({"type": "handoff", "now": True}, "bad_frame"),
    ],
)
def test_a_bad_rating_or_handoff_frame_gets_a_clear_error_and_changes_nothing(tiny_server, frame: dict[str, object], code: str) -> None:
    with tiny_server(dialog={"max_answer_tokens": 4}) as s, Chat(s.url) as visitor:
        visitor.ask("hi")
        visitor.send(frame)
        error = frames_until(visitor, "error")
        assert error["code"] == code and len(error["message"]) < 200
        visitor.send({"type": "ping"})
        assert frames_until(visitor, "pong")
        conv = asyncio.run(_conversation(s.dialog_dir, visitor.conversation_id))
        assert conv["status"] == "bot" and conv["rating"] is None
        assert metric(s.url, "tandem_dialog_ratings_total") == 0


@pytest.mark.parametrize(("version", "welcomed"), [(1, True), (2, True), (3, False), (0, False)])
def test_protocol_versions_one_and_two_are_spoken(tiny_server, version: int, welcomed: bool) -> None:
    with tiny_server() as s, Chat(s.url, hello=False) as chat:
        chat.send({"type": "hello", "v": version, "site_key": "demo"})
        first = chat.recv()
        assert (first["type"] == "welcome") is welcomed
        if not welcomed:
            assert first["code"] == "unsupported_version" and "v1 to v2" in first["message"]


def test_a_rating_given_again_counts_once(tiny_server) -> None:
    with tiny_server(dialog={"max_answer_tokens": 4}) as s, Chat(s.url) as visitor:
        _, got = visitor.ask("hi")
        answer = got[-1]["message_id"]
        for value in ("up", "up", "down"):
            visitor.send({"type": "rate", "message_id": answer, "value": value})
            assert frames_until(visitor, "rated")["value"] == value
        for score in (4, 4):
            visitor.send({"type": "rate", "score": score})
            frames_until(visitor, "rated")
        assert metric(s.url, "tandem_dialog_ratings_total", 'kind="answer",value="up"') == 1
        assert metric(s.url, "tandem_dialog_ratings_total", 'kind="answer",value="down"') == 1
        assert metric(s.url, "tandem_dialog_ratings_total", 'kind="conversation"') == 1
        with Chat(s.url, token=visitor.token, conversation_id=visitor.conversation_id) as again:
            assert [m.get("rating") for m in again.welcome["history"] if m["role"] == "assistant"] == ["down"]
