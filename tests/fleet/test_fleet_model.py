"""The fleet on the real default model: three replicas behind HAProxy generating through one
`tandem serve` on the default model (gateway replicas in front of an engine box, `--upstream`).
What each visitor reads, made by the real model, is what the store keeps, once; a visitor dropped
mid-answer and back through the balancer gets the rest once, and the whole is the stored answer."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from scripts.services import Postgres
from tests.conftest import DefaultServer
from tests.dialog_client import Chat
from tests.fleet.test_fleet import address, conversations, converse, running_fleet


def ask_two(lb: str, source: str) -> tuple[str, list[str]]:
    """A visitor's two questions to the real model: its conversation and the answers it read."""
    cid, answers = converse(lb, source, ["What are your opening hours?", "And do you ship abroad?"], timeout=180)
    for _, done in answers:
        assert done["finish_reason"] in ("stop", "length"), done
    return cid, [text for text, _ in answers]


def test_real_answers_through_the_fleet_arrive_once_and_are_kept_once(
    postgres: Postgres, default_server: DefaultServer, tmp_path: Path
) -> None:
    with running_fleet(postgres, tmp_path, "model_fleet", default_server.url) as fleet:
        with ThreadPoolExecutor(4) as pool:
            visits = list(pool.map(lambda _: ask_two(fleet.lb.url, address()), range(6)))

        source = address()
        with Chat(fleet.lb.url, site="shop", source=source) as chat:
            chat.say("Tell me everything about your returns policy, step by step.")
            before = chat.until("delta", timeout=180)
            token, cid, seen = chat.token, chat.conversation_id, before[-1]["seq"]
        with Chat(fleet.lb.url, site="shop", token=token, conversation_id=cid, last_seq=seen, source=source) as moved:
            assert moved.welcome["reset"] is False
            after = moved.until("done", timeout=180)
        stored = conversations(fleet.chat_url)

    for conversation, answers in visits:
        messages = stored[conversation]
        assert [(m.role, m.status) for m in messages] == [("user", "done"), ("assistant", "done")] * 2
        assert [m.text for m in messages if m.role == "assistant"] == answers and all(answers)
    frames = before + after
    seqs = [f["seq"] for f in frames]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # each frame once, in order
    read = "".join(f["text"] for f in frames if f["type"] == "delta")
    assert read and [m.text for m in stored[cid] if m.role == "assistant"] == [read]
