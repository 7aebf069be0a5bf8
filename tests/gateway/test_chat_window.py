"""Fitting a conversation into the window (`server/chat_window.py`) on the default model's real
tokenizer: the pinned messages stay, the kept turns are the newest, and the estimate the choice
is made on is the exact length for a ChatML template (however short or template-like the texts); and through the gateway, a template the
estimate cannot read (it rewrites every message) still never sends the engine an overflow."""

from __future__ import annotations

import asyncio
import copy

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dialog.store import Site, Store
from server import chat_window
from server.audit import AuditReader, Filters
from tests.dialog_client import Chat
from tests.waiting import eventually

WORDS = st.sampled_from(
    [
        "shipping",
        "returns",
        "refund",
        "order",
        "parcel",
        "hello",
        "thanks",
        "ünïcode",
        "🙂",
        "{{ }}",
        "<tag>",
        "a",
        "  ",
        "\n",
        "day,",
        "week.",
        "<|im_start|>",
        "user",
        "assistant",
        "im_end",
        "|>",
        "\x00",
        "\x000\x00",
    ]
)
TEXT = st.lists(WORDS, min_size=1, max_size=40).map(" ".join)
CONVERSATION = st.tuples(TEXT, st.lists(TEXT, max_size=12), TEXT).map(
    lambda t: (("system", t[0]), *((("user", "assistant")[i % 2], m) for i, m in enumerate(t[1])), ("user", t[2]))
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(messages=CONVERSATION, budget=st.integers(1, 700))
def test_the_choice_keeps_the_pins_and_the_newest_turns_and_knows_its_length(tokenizer, messages, budget) -> None:  # type: ignore[no-untyped-def]
    choice = chat_window.choose(tokenizer, messages, budget)
    history = messages[1:-1]
    assert choice.messages[0] == messages[0] and choice.messages[-1] == messages[-1]
    assert choice.kept + choice.dropped == len(history)
    assert choice.messages[1:-1] == history[len(history) - choice.kept :]  # a suffix: the newest turns
    exact = chat_window.render(tokenizer, choice.messages)
    assert choice.tokens == len(exact)  # ChatML wraps every message alike: the estimate is exact
    if choice.kept:  # it kept only what fits, and one turn more would not have
        assert len(exact) <= budget
    if choice.dropped:
        one_more = (messages[0], *history[len(history) - choice.kept - 1 :], messages[-1])
        assert len(chat_window.render(tokenizer, one_more)) > budget


def test_a_conversation_without_a_system_message_pins_only_the_newest(tokenizer) -> None:  # type: ignore[no-untyped-def]
    messages = (("user", "first " * 40), ("assistant", "second " * 40), ("user", "third"))
    choice = chat_window.choose(tokenizer, messages, len(chat_window.render(tokenizer, messages[1:])))
    assert choice.messages == messages[1:] and (choice.kept, choice.dropped) == (1, 1)


def test_a_template_that_rewrites_messages_still_never_overflows_the_window(tiny_server, tokenizer) -> None:  # type: ignore[no-untyped-def]
    """An upper-casing template hides each content from the choosing render, so the choice is an
    estimate (and upper case costs more tokens than it guesses): the gateway's exact render drops
    what is still over, and every turn is answered within its budget."""
    shouting = copy.deepcopy(tokenizer)
    shouting.chat_template = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] | upper + '<|im_end|>\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    with tiny_server(dialog={"max_answer_tokens": 16}, tok=shouting) as s:
        store = asyncio.run(Store.open(s.dialog_dir / "chat.db"))
        asyncio.run(store.put_site(Site("acme", "Acme", (s.url,), "You are Acme's assistant.")))
        asyncio.run(store.close())
        with Chat(s.url, site="acme") as chat:
            for i in range(8):
                _, frames = chat.ask(f"question {i}: where is my parcel, how do refunds work, and when do you open")
                assert frames[-1]["finish_reason"] in ("stop", "length"), frames[-1]
        reader = AuditReader(s.audit_dir)
        rows = eventually(
            lambda: (
                [r["record"] for r in reader.search(Filters(conversation=chat.conversation_id), limit=100)]
                if len(reader.search(Filters(conversation=chat.conversation_id), limit=100)) == 8
                else []
            ),
            "eight records",
        )
        contexts = [r["prompt"]["context"] for r in reversed(rows)]
        assert all(c["tokens"] <= c["budget"] == 256 - 16 for c in contexts) and contexts[-1]["turns_dropped"] > 0
        assert all(r["outcome"]["status"] == "ok" for r in rows)
