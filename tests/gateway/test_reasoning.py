"""A reasoning model's `<think>` section: told apart from the answer however the text is cut into
deltas, returned as `reasoning_content` by the chat API (whole and streamed), never shown to a
support visitor, scanned by the output guard and recorded apart in the audit log; on a scripted
engine for exact text, and on the real engine with a tiny random-weight Qwen2 model whose chat
template opens the section, held by a grammar to close it."""

from __future__ import annotations

import copy
import json
import secrets
import sqlite3
import string

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.reasoning import ReasoningSplit
from tests.conftest import tiny_qwen2
from tests.dialog_client import Chat
from tests.gateway.test_gateway import records

R1_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n<think>\\n' }}{% endif %}"
)
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def r1_tokenizer(tokenizer):  # type: ignore[no-untyped-def]
    """The tiny model's tokenizer with a DeepSeek-R1-distill-style template (the section opened in the prompt)."""
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = R1_TEMPLATE
    return tok


def split_all(pieces: list[str], opened: bool) -> tuple[str, str]:
    split = ReasoningSplit(opened)
    outs = [split.feed(p) for p in pieces] + [split.finish()]
    return "".join(r for r, _ in outs), "".join(a for _, a in outs)


def cuts(text: str, points: list[int]) -> list[str]:
    edges = sorted({0, len(text), *(p % (len(text) + 1) for p in points)})
    return [text[a:b] for a, b in zip(edges, edges[1:])]


thought_text = st.text(alphabet=string.ascii_letters + " .,<>/\n", max_size=40).filter(lambda t: "</think>" not in t and "<think>" not in t)
answer_text = st.text(alphabet=string.ascii_letters + " .,<>/", min_size=1, max_size=40).filter(lambda t: not t.startswith("\n"))


@given(thought_text, answer_text, st.lists(st.integers(0, 200), max_size=8), st.booleans())
def test_the_split_is_the_same_however_the_text_is_cut(thought: str, answer: str, points: list[int], opened: bool) -> None:
    raw = ("" if opened else "<think>") + thought + "</think>\n\n" + answer
    assert split_all(cuts(raw, points), opened) == (thought, answer)


@given(st.text(max_size=60), st.lists(st.integers(0, 100), max_size=6))
def test_text_that_never_closes_the_section_is_all_reasoning_and_without_one_all_answer(text: str, points: list[int]) -> None:
    if "</think>" not in text:
        assert split_all(cuts(text, points), True) == (text, "")
    if not text.lstrip().startswith("<think>") and not "<think>".startswith(text.lstrip()):
        assert split_all(cuts(text, points), False) == ("", text.lstrip("\n"))  # (no section: the answer, less leading newlines)


def test_the_chat_api_returns_the_thinking_apart_and_the_audit_keeps_it_apart(tiny_server, r1_tokenizer) -> None:
    key = "ghp_" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(36))  # fresh each run
    with tiny_server(tok=r1_tokenizer) as s:
        s.engine.script = ["The user wants ", "a capital. My key ", key, " is private.</th", "ink>\n\n", "Paris", " is the capital."]
        whole = httpx.post(f"{s.url}/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 50}).json()
        message = whole["choices"][0]["message"]
        assert message["content"] == "Paris is the capital."
        assert message["reasoning_content"] == message["reasoning"]
        assert message["reasoning_content"].startswith("The user wants a capital. My key [REDACTED:") and key not in json.dumps(whole)
        with httpx.stream("POST", f"{s.url}/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 50, "stream": True}) as r:
            deltas = [
                json.loads(line[6:])["choices"][0]["delta"]
                for line in r.iter_lines()
                if line.startswith("data: {") and '"choices": [{' in line
            ]
        assert "".join(d.get("content", "") for d in deltas) == message["content"]
        assert "".join(d.get("reasoning_content", "") for d in deltas) == message["reasoning_content"]
        row = records(s.audit_dir, 2)[0]  # (the whole answer's)
        out = row["output"]
        assert out["reasoning_chars"] == len(message["reasoning_content"]) and out["chars"] > out["reasoning_chars"]
        assert row["_content"]["output"] == f"[reasoning]\n{message['reasoning_content']}\n[answer]\n{message['content']}"
        assert {o["scanner"]: o["verdict"] for o in row["guard"]["output"]}["secrets"] == "redact"


def test_a_support_visitor_never_sees_the_thinking(tiny_server, r1_tokenizer) -> None:
    with tiny_server(tok=r1_tokenizer, dialog={"max_answer_tokens": 64}) as s:  # (room in the tiny model's 256-token window)
        s.engine.script = ["Hmm, opening hours", " are nine to five.</think>", "\n\nWe are open", " from 9:00 to 17:00."]
        with Chat(s.url) as visitor:
            text, frames = visitor.ask("When are you open?")
        assert text == "We are open from 9:00 to 17:00."
        assert "Hmm" not in json.dumps(frames) and "think>" not in json.dumps(frames)
        kinds = [f["type"] for f in frames]
        assert "thinking" in kinds and kinds.index("thinking") < kinds.index("delta")  # the widget says "thinking…", only that
        # the store keeps the thinking apart from the answer the visitor reads
        with sqlite3.connect(s.dialog_dir / "chat.db") as db:
            (stored,) = db.execute("SELECT text, reasoning FROM messages WHERE role = 'assistant'").fetchall()
        assert stored == ("We are open from 9:00 to 17:00.", "Hmm, opening hours are nine to five.")


def test_a_tiny_qwen2_whose_template_opens_the_section_is_split_on_the_real_engine(tiny_server, r1_tokenizer) -> None:
    model = tiny_qwen2(len(r1_tokenizer))
    with tiny_server(engine="tiny", model=model, tok=r1_tokenizer) as s:
        # the random weights would never close the section: a grammar makes them (thinking, then the answer)
        body = {
            "messages": MESSAGES,
            "max_tokens": 60,
            "temperature": 1.0,
            "seed": 4,
            "guided_regex": r"[a-z]{2,8}</think>\n\n[A-Z][a-z]{2,8}",
        }
        message = httpx.post(f"{s.url}/v1/chat/completions", json=body).json()["choices"][0]["message"]
        assert message["reasoning_content"].isalpha() and message["content"][0].isupper() and "think" not in message["content"]
        free = httpx.post(f"{s.url}/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 8}).json()["choices"][0]
        assert free["message"]["content"] == "" and free["message"]["reasoning_content"]  # never closed: all of it thinking
