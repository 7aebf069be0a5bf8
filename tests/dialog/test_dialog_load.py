"""200 visitors at once, four turns each, on the real engine (tiny model): every message is
answered exactly once, none is lost, and a visitor told `overloaded` comes back after the
`retry_after` it was given, as the widget does, and is then answered."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter

from websockets.asyncio.client import connect

VISITORS, TURNS = 200, 4
DIALOG = {
    "max_answer_tokens": 8,
    "ip_messages_per_minute": 100_000,
    "ip_connections_per_minute": 100_000,
    "visitor_messages_per_minute": 100,
}


async def visitor(url: str, n: int, waits: list[float]) -> tuple[str, str, list[str]]:
    """One visitor's conversation: returns (conversation id, visitor token, the answers' message ids)."""
    ws_url = url.replace("http://", "ws://") + "/v1/dialog?site_key=demo"
    answers: list[str] = []
    async with connect(ws_url, additional_headers={"Origin": url}, open_timeout=60, max_size=2**22) as ws:
        await ws.send(json.dumps({"type": "hello", "v": 1, "site_key": "demo"}))
        welcome = json.loads(await asyncio.wait_for(ws.recv(), 60))
        assert welcome["type"] == "welcome", welcome
        for turn in range(TURNS):
            cmid = uuid.uuid4().hex
            for attempt in range(10):
                await ws.send(
                    json.dumps({"type": "message", "client_msg_id": cmid, "text": f"visitor {n} question {turn}: where is my order?"})
                )
                answer_id, overloaded = None, None
                while True:
                    frame = json.loads(await asyncio.wait_for(ws.recv(), 120))
                    if frame["type"] == "ack":
                        assert frame["client_msg_id"] == cmid
                    elif frame["type"] == "delta":
                        answer_id = frame["message_id"]
                    elif frame["type"] == "done":
                        answer_id = frame["message_id"]
                        if frame["finish_reason"] != "error":
                            break
                    elif frame["type"] == "error" and frame["code"] == "overloaded":
                        overloaded = frame
                        break
                    elif frame["type"] == "error":
                        raise AssertionError(f"visitor {n} turn {turn}: {frame}")
                if overloaded is None:
                    answers.append(str(answer_id))
                    break
                waits.append(float(overloaded["retry_after"]))
                await asyncio.sleep(overloaded["retry_after"])  # what the widget does
            else:
                raise AssertionError(f"visitor {n} turn {turn} was never answered")
    return welcome["conversation_id"], welcome["token"], answers


async def history(url: str, cid: str, token: str) -> list[dict]:
    ws_url = url.replace("http://", "ws://") + "/v1/dialog?site_key=demo"
    async with connect(ws_url, additional_headers={"Origin": url}, open_timeout=60) as ws:
        await ws.send(json.dumps({"type": "hello", "v": 1, "site_key": "demo", "token": token, "conversation_id": cid}))
        return list(json.loads(await asyncio.wait_for(ws.recv(), 60))["history"])


def test_200_visitors_four_turns_each_lose_nothing_and_duplicate_nothing(tiny_server) -> None:
    with tiny_server(dialog=DIALOG) as s:
        waits: list[float] = []

        async def run() -> list[tuple[str, str, list[str]]]:
            return await asyncio.gather(*(visitor(s.url, n, waits) for n in range(VISITORS)))

        started = time.monotonic()
        results = asyncio.run(run())
        elapsed = time.monotonic() - started
        answer_ids = [a for _, _, answers in results for a in answers]
        assert len(answer_ids) == VISITORS * TURNS and len(set(answer_ids)) == len(answer_ids)  # every turn answered, once

        async def histories() -> list[list[dict]]:
            return await asyncio.gather(*(history(s.url, cid, token) for cid, token, _ in results))

        for (cid, _, answers), messages in zip(results, asyncio.run(histories())):
            assert Counter(m["role"] for m in messages) == {"user": TURNS, "assistant": TURNS}, cid  # a retried answer reuses its row
            assert [m["message_id"] for m in messages if m["role"] == "assistant"] == answers, cid
            assert all(m["status"] == "done" for m in messages), [m["status"] for m in messages]
            assert all(m["text"] for m in messages if m["role"] == "user")  # what the guard passed is kept for every message
        print(
            f"{VISITORS} visitors x {TURNS} turns in {elapsed:.1f} s; {len(waits)} overloaded refusals, "
            f"retry_after max {max(waits, default=0):.0f} s"
        )
        assert all(w <= 30 for w in waits)  # honest estimates, not the 60 s cap
