"""The webhooks of a real server's conversations, to a real receiver: a conversation's life (opened,
messages, a person asked for, taken over, an agent's reply, handed back, rated, closed) arrives as
signed events, in order, each once; and a helpdesk's agent replies into the conversation through
the signed inbound endpoint (the visitor's widget shows it), while a badly signed, replayed or
malformed one is refused and changes nothing."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
from hypothesis import given, settings
from hypothesis import strategies as st

from dialog.inbound import parse_reply
from dialog.store import Store
from dialog.webhooks import Webhooks, sign, verify
from tests.dialog.test_webhooks import Receiver
from tests.dialog_client import Chat, Console, staff_token
from tests.waiting import eventually


def add_webhook(dialog_dir: Path, url: str) -> str:
    async def go() -> str:
        store = await Store.open(dialog_dir / "chat.db")
        try:
            return (await Webhooks(store.engine).add("demo", url))[1]
        finally:
            await store.close()

    return asyncio.run(go())


def frames_until(chat: Chat, kind: str) -> dict[str, Any]:
    while True:
        frame = chat.recv(60)
        if frame["type"] == kind:
            return frame


def test_a_conversations_life_arrives_signed_in_order_once(tiny_server) -> None:
    receiver = Receiver()
    try:
        with tiny_server(dialog={"max_answer_tokens": 4}) as s:
            secret = add_webhook(s.dialog_dir, receiver.url)
            token = staff_token(s.dialog_dir, "Dana", ["demo"])
            with Chat(s.url) as visitor, Console(s.url, token) as console:
                cid = visitor.conversation_id
                visitor.ask("Where is my parcel?")
                visitor.send({"type": "handoff"})
                frames_until(visitor, "status")
                console.send({"type": "reply", "conversation_id": cid, "text": "Dana here."})
                frames_until(visitor, "agent_message")
                console.send({"type": "hand_back", "conversation_id": cid})
                frames_until(visitor, "status")
                visitor.send({"type": "rate", "score": 4})
                frames_until(visitor, "rated")
                console.send({"type": "close", "conversation_id": cid})
                frames_until(visitor, "status")
            expected = [
                "conversation.created",
                "message.created",  # the visitor's
                "message.created",  # the bot's answer
                "handoff.requested",
                "conversation.taken_over",  # replying takes it over
                "message.created",  # the agent's
                "conversation.handed_back",
                "conversation.rated",
                "conversation.closed",
            ]
            got = eventually(lambda: receiver.accepted() if len(receiver.accepted()) >= len(expected) else None, "every event")
        bodies = [json.loads(body) for _, body in got]
        assert [b["type"] for b in bodies] == expected
        assert len({b["id"] for b in bodies}) == len(bodies)  # each once
        for headers, body in got:
            verify(secret, headers["Tandem-Signature"], body)  # signed with the webhook's secret
            assert headers["Tandem-Event-Id"] == json.loads(body)["id"]
        assert all(b["data"]["conversation_id"] == cid and b["site_key"] == "demo" for b in bodies)
        messages = [b["data"]["message"] for b in bodies if b["type"] == "message.created"]
        assert [m["role"] for m in messages] == ["user", "assistant", "agent"]
        assert messages[0]["text"] == "Where is my parcel?" and messages[2]["author"] == "Dana"
        assert bodies[expected.index("conversation.rated")]["data"]["score"] == 4
    finally:
        receiver.close()


def test_a_helpdesk_agent_replies_through_the_signed_endpoint(tiny_server) -> None:
    with tiny_server(dialog={"max_answer_tokens": 4}) as s:
        secret = add_webhook(s.dialog_dir, "http://127.0.0.1:9/unused")
        with Chat(s.url) as visitor:
            visitor.ask("hello")
            url = f"{s.url}/v1/dialog/conversations/{visitor.conversation_id}/messages"
            body = json.dumps({"author": "Sam (Helpdesk)", "text": "Hi, Sam from the helpdesk."}).encode()

            def post(payload: bytes, signature: str | None) -> httpx.Response:
                headers = {"Content-Type": "application/json", **({"Tandem-Signature": signature} if signature else {})}
                return httpx.post(url, content=payload, headers=headers)

            now = int(time.time())
            refused = [
                post(body, None),
                post(body, sign("whsec_wrong", body, now)),
                post(body, sign(secret, body, now - 3600)),  # a replay an hour late
                post(body.replace(b"Sam from", b"Eve from"), sign(secret, body, now)),  # tampered
            ]
            assert [r.status_code for r in refused] == [401] * 4 and all(r.json()["error"] == "bad_signature" for r in refused)
            malformed = b'{"author": "", "text": 5}'
            assert post(malformed, sign(secret, malformed, now)).status_code == 400
            elsewhere = httpx.post(
                url.replace(visitor.conversation_id, "conv_nope"), content=body, headers={"Tandem-Signature": sign(secret, body, now)}
            )
            assert elsewhere.status_code == 401  # an unknown conversation looks like a bad signature: ids cannot be probed
            visitor.send({"type": "ping"})
            assert frames_until(visitor, "pong")  # nothing reached the visitor
            accepted = post(body, sign(secret, body, int(time.time())))
            assert accepted.status_code == 201
            status = frames_until(visitor, "status")
            assert status["status"] == "agent" and status["agent"] == "Sam (Helpdesk)"
            reply = frames_until(visitor, "agent_message")
            assert reply["author"] == "Sam (Helpdesk)" and reply["text"] == "Hi, Sam from the helpdesk."


@settings(max_examples=1500, deadline=None)
@given(
    st.binary(max_size=200)
    | st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=80),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["author", "text", "x"]) | st.text(max_size=5), inner),
        max_leaves=8,
    ).map(lambda v: json.dumps(v, allow_nan=True).encode())
    | st.integers(1, 5000).map(lambda n: b"[" * n + b"]" * n)
)
def test_an_inbound_body_is_a_reply_or_refused_never_an_error(body: bytes) -> None:
    reply = parse_reply(body)
    assert reply is None or (0 < len(reply.author) <= 60 and 0 < len(reply.text) <= 16_000)
