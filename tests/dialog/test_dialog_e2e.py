"""The support chat on the real default model in a real `tandem serve`: multi-turn context,
resume in the middle of an answer, and a server killed with SIGKILL mid-answer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ADMIN_TOKEN, ROOT, free_port, wait_healthy
from tests.dialog_client import Chat

pytestmark = pytest.mark.default_model
RECALL = "What was the code word I asked you to remember?"


def test_the_second_answer_needs_the_first_turn(default_server) -> None:
    with Chat(default_server.url) as chat:
        chat.ask("Remember this code word: pineapple.")
        answer, _ = chat.ask(RECALL)
    assert "pineapple" in answer.lower()
    with Chat(default_server.url) as fresh:  # the same question without the first turn
        alone, _ = fresh.ask(RECALL)
    assert "pineapple" not in alone.lower()


def test_a_reconnect_mid_answer_delivers_the_whole_answer_exactly_once(default_server) -> None:
    first = Chat(default_server.url)
    first.say("Write a long story about a lighthouse keeper.")
    got = [first.recv()]
    while len([f for f in got if f["type"] == "delta"]) < 5:
        got.append(first.recv())
    first.close()  # the connection drops in the middle of the answer
    with Chat(default_server.url, token=first.token, conversation_id=first.conversation_id, last_seq=got[-1]["seq"]) as second:
        got += second.until("done")
    assert [f["seq"] for f in got] == list(range(1, len(got) + 1))
    streamed = "".join(f["text"] for f in got if f["type"] == "delta")
    assert len(streamed) > 100
    with Chat(default_server.url, token=first.token, conversation_id=first.conversation_id) as reload:
        assert reload.welcome["history"][-1]["text"] == streamed


def _serve(port: int, home: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "server.cli",
                "serve",
                "--port",
                str(port),
                "--audit-dir",
                str(home / "audit"),
                "--dialog-dir",
                str(home / "dialog"),
                "--admin-token",
                ADMIN_TOKEN,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    wait_healthy(f"http://127.0.0.1:{port}", proc, log, 180, "tandem serve")
    return proc


def test_a_server_killed_mid_answer_comes_back_with_the_conversation_intact(default_model_dir, tmp_path) -> None:
    port, log = free_port(), tmp_path / "serve.log"
    url = f"http://127.0.0.1:{port}"
    proc = _serve(port, tmp_path, log)
    try:
        chat = Chat(url)
        chat.ask("Hello, I need help with my order.")
        chat.say("Write a long story about a lighthouse keeper.")
        seen: list[dict[str, Any]] = []
        while len([f for f in seen if f["type"] == "delta"]) < 30:
            seen.append(chat.recv())
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        chat.close()
        received = "".join(f["text"] for f in seen if f["type"] == "delta")
        proc = _serve(port, tmp_path, log)

        with Chat(url, token=chat.token, conversation_id=chat.conversation_id) as back:
            history = back.welcome["history"]
            assert [(m["role"], m["status"]) for m in history] == [
                ("user", "done"),
                ("assistant", "done"),
                ("user", "done"),
                ("assistant", "interrupted"),
            ]
            kept = history[-1]["text"]
            assert kept and received.startswith(kept)  # what was saved is what was sent, in order
            assert len(received) - len(kept) < 200  # at most a fraction of a second of tokens lost
            answer, _ = back.ask("Thank you. What is your name?")  # and the conversation goes on
            assert answer
        answer_id = next(f["message_id"] for f in seen if f["type"] == "delta")
        ack_seq = next(f["seq"] for f in seen if f["type"] == "ack")  # saved before the answer began
        with Chat(url, token=chat.token, conversation_id=chat.conversation_id, last_seq=ack_seq) as resumed:
            assert resumed.welcome["reset"] is False
            frames = resumed.until("done")
            while frames[-1]["message_id"] != answer_id:
                frames += resumed.until("done")
            assert frames[-1]["finish_reason"] == "interrupted"
            assert "".join(f["text"] for f in frames if f["type"] == "delta" and f["message_id"] == answer_id) == kept
        with Chat(url, token=chat.token, conversation_id=chat.conversation_id, last_seq=seen[-1]["seq"]) as late:
            if late.welcome["reset"]:  # its last frame was lost in the crash: it gets the whole history instead
                assert late.welcome["history"][3]["status"] == "interrupted"
            else:
                assert any(f["type"] == "done" and f["finish_reason"] == "interrupted" for f in late.until("done"))
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_protocol_guards_on_the_real_server(default_server) -> None:
    """On the default model: a repeated client_msg_id, another visitor's token, bad frames and a
    wrong origin each get their answer, and the conversation goes on."""
    url = default_server.url
    with Chat(url) as alice, Chat(url) as bob:
        alice.say("Hello!", client_msg_id="hello-1")
        first = alice.until("done")
        alice.say("Hello!", client_msg_id="hello-1")
        assert alice.recv() == first[0]  # acknowledged again, not answered again
        with Chat(url, token=bob.token, conversation_id=alice.conversation_id) as mallory:
            assert mallory.welcome["code"] == "forbidden"
        for raw, code in (
            ("{nope", "bad_frame"),
            (json.dumps({"type": "message", "client_msg_id": "x", "text": "a" * 20_000}), "frame_too_large"),
            (json.dumps({"type": "launch"}), "unknown_type"),
        ):
            alice.ws.send(raw)
            assert alice.recv()["code"] == code
        answer, frames = alice.ask("What is the capital of France?")
        assert "Paris" in answer and frames[0]["seq"] == first[-1]["seq"] + 1
    with Chat(url, origin="https://evil.example", hello=False) as evil:
        assert evil.recv()["code"] == "origin_not_allowed"
