"""`dialog.frames.parse`, fuzzed: whatever a client sends, it returns a valid frame or raises
`FrameError`, never anything else, and both what it returns and the error frame it raises can be
sent back as UTF-8 JSON (a frame that cannot be encoded would silently end the connection)."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from dialog import console, frames

# every code point, lone surrogates included (hypothesis leaves them out of text by default)
ANY_CHAR = st.characters(codec=None, categories=None)
SHAPES = {
    "hello": ["v", "site_key", "token", "conversation_id", "last_seq"],
    "message": ["client_msg_id", "text"],
    "cancel": [],
    "ping": [],
    "handoff": [],
    "rate": ["message_id", "value", "score"],
}
CONSOLE_SHAPES = {  # the staff console's frames (dialog/console.py), through the same decoder
    "auth": ["token"],
    "open": ["conversation_id"],
    "take": ["conversation_id"],
    "hand_back": ["conversation_id"],
    "close": ["conversation_id"],
    "reply": ["conversation_id", "text"],
    "ping": [],
}
KEYS = st.sampled_from(["type", *SHAPES["hello"], *SHAPES["message"]]) | st.text(ANY_CHAR, max_size=8)
TYPES = st.sampled_from([*SHAPES, "pong", "", "HELLO"])
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**20, max_value=10**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(ANY_CHAR, max_size=20)
    | TYPES
    | st.just("demo")
)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3), max_leaves=12)


@st.composite
def shaped(draw: st.DrawFn, shapes: dict[str, list[str]] = SHAPES) -> str:
    """Frames of the right shape with values of any kind: a lone surrogate in a client_msg_id, v 1e999."""
    kind = draw(st.sampled_from(list(shapes)))
    data: dict[str, object] = {"type": kind}
    for key in shapes[kind]:
        if draw(st.integers(0, 3)):
            data[key] = draw(st.text(ANY_CHAR, min_size=1, max_size=70) | st.integers(-1, 3) | SCALARS)
    return json.dumps(data, ensure_ascii=draw(st.booleans()), allow_nan=True)


@st.composite
def objects(draw: st.DrawFn) -> str:
    """Near-frames: a known type with fields of every kind, serialised as JSON (NaN and all)."""
    data = draw(st.dictionaries(KEYS, VALUES, max_size=5))
    if draw(st.booleans()):
        data["type"] = draw(TYPES)
    return json.dumps(data, ensure_ascii=draw(st.booleans()), allow_nan=True)


@st.composite
def nested(draw: st.DrawFn) -> str:
    depth = draw(st.integers(min_value=1, max_value=6000))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}"), ('{"type":"ping","x":[', "]}")]))
    return opener * depth + draw(st.sampled_from(["1", "[]", "{}", '"s"', "NaN", "1e999"])) + closer * depth


SOUP = [*'{}[]":,.-+0123456789eEnulltruefalsNaIfiy\\u ', "\\ud800", "\\udc00", '"type"', '"ping"', '"hello"']
JSONISH = st.lists(st.sampled_from(SOUP), max_size=100).map("".join)


def client_frames() -> st.SearchStrategy[str | bytes]:
    return shaped() | objects() | nested() | JSONISH | st.text(ANY_CHAR, max_size=50) | st.binary(max_size=50)


@settings(max_examples=3000, deadline=None)
@given(client_frames())
def test_parse_gives_a_frame_or_an_error_frame_and_both_can_be_sent(raw: str | bytes) -> None:
    try:
        frame = frames.parse(raw)
    except frames.FrameError as err:
        out = err.frame()
        assert out["code"] in ("bad_frame", "frame_too_large", "unknown_type") and out["message"]
        assert len(json.dumps(out, ensure_ascii=False).encode("utf-8")) < 400  # short, and valid UTF-8
    else:
        assert isinstance(frame, (frames.Hello, frames.Message, frames.Cancel, frames.Ping, frames.Handoff, frames.Rate))
        json.dumps(frame.model_dump(), ensure_ascii=False).encode("utf-8")  # its strings can be echoed (an ack's client_msg_id)


@settings(max_examples=2000, deadline=None)
@given(shaped(CONSOLE_SHAPES) | objects() | nested() | JSONISH | st.binary(max_size=50))
def test_a_console_frame_is_a_frame_or_an_error_frame(raw: str | bytes) -> None:
    try:
        frame = console._parse(raw)
    except frames.FrameError as err:
        out = err.frame()
        assert out["code"] in ("bad_frame", "frame_too_large", "unknown_type") and out["message"]
        assert len(json.dumps(out, ensure_ascii=False).encode("utf-8")) < 400
    else:
        assert frame.type in CONSOLE_SHAPES


def test_nesting_is_refused_before_the_decoder_recurses() -> None:
    for raw in (
        "[" * 100_000,
        "[" * 8000 + "]" * 8000,
        '{"a":' * 3000 + "1" + "}" * 3000,
        '{"type": "ping", "x": ' + "[" * 9 + "]" * 9 + "}",
    ):
        try:
            frames.parse(raw)
        except frames.FrameError as err:
            assert err.code in ("bad_frame", "frame_too_large")
        else:
            raise AssertionError("parsed")
    # brackets inside strings are text, not nesting
    assert frames.parse(json.dumps({"type": "message", "client_msg_id": "x", "text": '[[[[[[[[[[[[{{{{{{{{ \\" [[['})).text.startswith(
        "[[["
    )
