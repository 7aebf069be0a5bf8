"""Incremental detokenisation and stop strings, on the default model's real tokenizer."""

from __future__ import annotations

import pytest

from server.engine.detokenize import IncrementalDetokenizer, StopMatcher

TEXTS = ["🎉你好🎉 ünïcödé 𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "def f():\n    return 'naïve café' # 日本語のコメント", "plain ascii"]


@pytest.mark.parametrize("text", TEXTS)
def test_chunks_are_whole_characters_and_add_up(tokenizer, text: str) -> None:
    ids = tokenizer.encode(text, add_special_tokens=False)
    detok = IncrementalDetokenizer(tokenizer, ())
    chunks = [detok.push(i)[0] for i in ids]
    chunks.append(detok.finish())
    assert all("\ufffd" not in c for c in chunks)
    assert "".join(chunks) == text
    assert any(c == "" for c in chunks) or text == "plain ascii"  # some tokens held back a partial character


def test_incomplete_bytes_at_the_end_are_shown_not_dropped(tokenizer) -> None:
    ids = tokenizer.encode("🎉", add_special_tokens=False)
    assert len(ids) > 1
    detok = IncrementalDetokenizer(tokenizer, ())
    assert [detok.push(i)[0] for i in ids[:-1]] == [""] * (len(ids) - 1)
    assert detok.finish() == tokenizer.decode(ids[:-1])


def test_stop_string_split_over_chunks() -> None:
    m = StopMatcher(("</answer>",))
    assert m.feed("The result is 4</an") == ("The result is 4", False)
    assert m.feed("swer> and more") == ("", True)


def test_held_back_prefix_is_released_when_it_does_not_complete() -> None:
    m = StopMatcher(("STOP",))
    assert m.feed("go ST") == ("go ", False)
    assert m.feed("ART") == ("START", False)
    assert m.feed("S") == ("", False)
    assert m.flush() == "S"


def test_earliest_of_several_stops_wins() -> None:
    m = StopMatcher(("\n\n", "```"))
    assert m.feed("code```\n\nmore") == ("code", True)


def test_stop_spanning_tokens_in_detokenizer(tokenizer) -> None:
    text = "alpha beta gamma delta"
    detok = IncrementalDetokenizer(tokenizer, ("ta gam",))
    out, stopped = "", False
    for i in tokenizer.encode(text, add_special_tokens=False):
        piece, stopped = detok.push(i)
        out += piece
        if stopped:
            break
    assert stopped and out == "alpha be"
