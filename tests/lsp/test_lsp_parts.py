"""The language server's pure parts: UTF-16 positions, the completion cache, the prompt window
and snippets, settings from `workspace/configuration`, and the hardened wire: framing, lone surrogates, strict types."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from cattrs import ClassValidationError
from lsprotocol import types

from lsp.generations import Generation, Generations
from lsp.positions import PositionError, clean, offset_of, scrub
from lsp.postprocess import Context
from lsp.present import aligned, first_line, has_first_line, settled, suggestion
from lsp.prompt import WINDOW_LINES, OpenDocument, build
from lsp.protocol import strict_converter
from lsp.settings import CLIENT_SETTINGS, DEFAULT_SERVER_URL, EXTENSION_ONLY, Settings
from lsp.transport import MAX_BODY, Framer, FramingError, parse_header
from tests.conftest import ROOT


@pytest.mark.parametrize(
    "text, line, character, expected",
    [
        ("abc", 0, 3, 3),
        ("héllo wörld", 0, 5, 5),  # accents are one UTF-16 unit
        ("s = '日本語'\nx", 0, 8, 8),  # CJK: one unit each
        ("e = '😀'\nx", 0, 7, 6),  # the emoji is two UTF-16 units, one code point
        ("a\r\nbc", 1, 2, 5),
        ("one\ntwo\n", 2, 0, 8),
    ],
)
def test_utf16_positions(text: str, line: int, character: int, expected: int) -> None:
    assert offset_of(text, line, character) == expected


@pytest.mark.parametrize(
    "text, line, character, problem",
    [
        ("e = '😀'", 0, 6, "surrogate pair"),
        ("abc", 0, 4, "past the end of line"),
        ("abc", 1, 0, "past the end of the document"),
        ("abc", -1, 0, "negative"),
        ("a\r\nb", 0, 2, "past the end of line"),  # the \r is not part of the line
    ],
)
def test_bad_positions_are_refused_not_guessed(text: str, line: int, character: int, problem: str) -> None:
    with pytest.raises(PositionError, match=problem):
        offset_of(text, line, character)


def test_a_generation_serves_repeats_and_typing_through_it() -> None:
    gen = Generation("u", "def f(x):\n    ", "\n", text="return x * 2\n", done=True)
    store = Generations()
    store.add(gen)
    assert store.find("u", "def f(x):\n    ", "\n") == (gen, "return x * 2\n")
    assert store.find("u", "def f(x):\n    ret", "\n") == (gen, "urn x * 2\n")  # typed 'ret' of it
    assert store.find("u", "def f(x):\n    return x * 2\n", "\n") == (gen, "")  # accepted it all
    assert store.find("u", "def f(x):\n    rex", "\n") is None  # typed something else
    assert store.find("u", "def f(x):\n    ", "\nmore") is None  # the suffix changed
    assert store.find("other", "def f(x):\n    ret", "\n") is None  # per document
    running = Generation("u", "x = ", "", text="1")
    assert running.rest_after("x = 1 +", "") == ""  # typed ahead of a running generation: it may still write it
    assert running.rest_after("x = 2", "") is None


async def test_waiting_on_a_generation_ends_when_ready_or_done_and_times_out_otherwise() -> None:
    async def pieces(parts: list[str], hold: asyncio.Event):  # type: ignore[no-untyped-def]
        for part in parts:
            yield "cmpl-1", part
        await hold.wait()

    hold = asyncio.Event()
    gen = Generation("u", "", "")
    gen.task = asyncio.ensure_future(gen.run(pieces(["return x", "\n", "y"], hold), lambda text: False))
    assert await gen.wait(lambda: "\n" in gen.text, timeout=10) and gen.text.startswith("return x\n")
    assert not await gen.wait(lambda: "never" in gen.text, timeout=0.05)  # still running: a timeout, not an answer
    hold.set()
    assert await gen.wait(lambda: False, timeout=10) and gen.done and not gen.cut and gen.request_id == "cmpl-1"
    cut = Generation("u", "", "")
    cut.task = asyncio.ensure_future(cut.run(pieces(["a"], asyncio.Event()), lambda text: False))
    await cut.wait(lambda: bool(cut.text), timeout=10)
    cut.cancel()
    assert await cut.wait(lambda: False, timeout=10) and cut.done and cut.cut


async def _joined(pieces: list[str], indent: str | None) -> str:
    async def source():  # type: ignore[no-untyped-def]
        for p in pieces:
            yield "id", p

    return "".join([p async for _, p in aligned(source(), indent)])


@pytest.mark.parametrize(
    "pieces, indent, expected",
    [
        (["return x"], "    ", "return x"),  # the prompt ends with the indentation: the model goes on after it
        (["\n", "    ", "return x"], "    ", "return x"),  # a blank line and an indent the document already has
        (["\n  ", "  ret", "urn x\n    y"], "    ", "return x\n    y"),  # the indentation split over pieces
        (["\n        deeper()"], "    ", "    deeper()"),  # deeper than the cursor: the difference stays
        ([" ", "return x"], "        ", "return x"),  # the space the tokenizer puts before a word, on the cursor's line: not inserted
        (["\n    return x"], None, "\n    return x"),  # at the end of a line of code: the next line
    ],
)
async def test_output_is_aligned_to_a_cursor_on_an_indented_blank_line(pieces: list[str], indent: str | None, expected: str) -> None:
    assert await _joined(pieces, indent) == expected


def test_what_is_shown_of_a_running_generation_is_whole_lines_or_whole_words() -> None:
    assert settled("a = 1\nreturn sel", finished=False) == "a = 1"
    assert settled("return sel", finished=False) == "return "
    assert settled("return sel", finished=True) == "return sel"
    assert first_line("\n    return x\n    y") == "\n    return x" and has_first_line("\n    x\n") and not has_first_line("\n    x")
    ctx = Context("def f(x):\n    ", "\n", True)
    assert suggestion("return x * 2\n    y = 1\n", ctx, whole_block=False, finished=False) == "return x * 2"
    assert suggestion("return x * 2\n    y = 1\n", ctx, whole_block=True, finished=False) == "return x * 2\n    y = 1"
    assert suggestion("```python\nx = 1\n```\n", ctx, whole_block=True, finished=True) == ""  # a chat model's code fence


def test_the_prompt_window_starts_on_a_stable_line_while_the_user_types() -> None:
    text = "".join(f"value_{i} = {i}\n" for i in range(3000))
    first = build(text, "", "python", "u", [], budget_tokens=512)
    starts = {
        build(text + typed, "", "python", "u", [], budget_tokens=512).prefix.split("\n", 1)[0]
        for typed in ("x", "x = ", "x = compute(\n    ")
    }
    assert starts == {first.prefix.split("\n", 1)[0]}
    number = int(first.prefix.split("_", 1)[1].split(" ", 1)[0])
    assert number % WINDOW_LINES == 0
    blank = build("def f():\n    ", "\n", "python", "u", [])
    assert blank.prefix == blank.cursor_prefix == "def f():\n    "  # the indentation stays: the model writes the body


def test_prompt_window_and_snippets_by_recency_and_language() -> None:
    prefix = "".join(f"line_{i} = {i}\n" for i in range(2000))
    others = [
        OpenDocument("file:///a/old.py", "python", "OLD = 1\n", 1.0),
        OpenDocument("file:///a/new.py", "python", "NEW = 2\n", 5.0),
        OpenDocument("file:///a/x.ts", "typescript", "const TS = 3;\n", 9.0),
    ]
    p = build(prefix, "tail()\n", "python", "file:///a/main.py", others, budget_tokens=512)
    assert len(p.prefix) <= 512 * 3.5 and p.cursor_prefix.startswith("line_") and prefix.endswith(p.cursor_prefix)
    assert p.prefix.index("# Path: new.py") < p.prefix.index("# Path: old.py") and "TS" not in p.prefix
    assert p.snippets == 2 and p.suffix == "tail()\n"


def test_settings_from_the_client_are_validated() -> None:
    s = Settings().updated(
        {
            "serverUrl": "http://127.0.0.1:9000",
            "maxTokens": 32,
            "multiline": False,
            "enabledLanguages": ["python"],
            "timeBudgetMs": 5,
            "unknown": 1,
        }
    )
    assert (s.server_url, s.max_tokens, s.multiline, s.enabled_languages) == ("http://127.0.0.1:9000", 32, False, ("python",))
    assert s.time_budget_ms == Settings().time_budget_ms  # out of range: ignored
    assert Settings().updated({"serverUrl": "file:///etc/passwd", "maxTokens": "many"}) == Settings()
    assert Settings().updated(None) == Settings() and s.enabled_for("python") and not s.enabled_for("go")
    toggled = Settings().updated({"firstLine": False, "warmUp": False, "cache": False, "enabled": False})
    assert (toggled.first_line, toggled.warm_up, toggled.cache, toggled.enabled) == (False, False, False, False)
    assert not toggled.enabled_for("python")
    assert Settings().updated({"firstLine": "no", "warmUp": 1}) == Settings()


def test_the_extension_declares_the_settings_the_server_accepts_with_the_same_defaults_and_bounds() -> None:
    declared = json.loads((ROOT / "vscode-extension" / "package.json").read_text())["contributes"]["configuration"]["properties"]
    assert set(declared) == {f"tandem.{key}" for key in (*CLIENT_SETTINGS, *EXTENSION_ONLY)}
    kinds = {bool: "boolean", int: "integer", str: "string", list: "array"}
    for key, setting in CLIENT_SETTINGS.items():
        spec = declared[f"tandem.{key}"]
        assert (spec["type"], spec["default"], spec.get("minimum"), spec.get("maximum")) == (
            kinds[setting.kind],
            setting.default,
            setting.minimum,
            setting.maximum,
        ), key
        if setting.minimum is not None:  # and the server holds the same line at each bound
            assert Settings().updated({key: setting.minimum}) != Settings() or setting.default == setting.minimum, key
            assert setting.maximum is not None
            assert Settings().updated({key: setting.minimum - 1}) == Settings(), key
            assert Settings().updated({key: setting.maximum + 1}) == Settings(), key
    assert Settings().server_url == DEFAULT_SERVER_URL == declared["tandem.serverUrl"]["default"]


# --- hardening: the wire and the decoding (the fuzzing is in test_lsp_fuzz.py) -----------------


def test_lone_surrogates_are_replaced_and_utf16_positions_keep_their_meaning() -> None:
    text = clean("x = '\udc80' + '😀' + '\ud800'")
    assert text == "x = '\ufffd' + '😀' + '\ufffd'" and text.encode("utf-8")
    assert offset_of(text, 0, 7) == 7  # one UTF-16 unit before, one after
    assert scrub({"k\udfff": ["\ud83d", 1, None, {"t": "ok"}]}) == {"k\ufffd": ["\ufffd", 1, None, {"t": "ok"}]}


@pytest.mark.parametrize(
    "header, expected",
    [
        (b"Content-Length: 12", 12),
        (b"content-length:7\r\nContent-Type: application/vscode-jsonrpc; charset=utf-8", 7),
        (b"Content-Length: 007", 7),
        (b"Content-Length: 99999999999999999999", MAX_BODY + 1),  # refused by the framer, never int()-ed into a read
        (b"Content-Length: -5", "non-negative decimal"),
        (b"Content-Length: 1e3", "non-negative decimal"),
        (b"Content-Length:", "non-negative decimal"),
        (b"Content-Type: text/plain", "no Content-Length"),
        (b"Content-Length: 2\r\nContent-Length: 3", "two different"),
        (b"garbage", "without a colon"),
    ],
)
def test_headers_are_parsed_strictly(header: bytes, expected: int | str) -> None:
    parsed = parse_header(header)
    assert parsed == expected if isinstance(expected, int) else expected in str(parsed)


def test_framer_skips_bad_and_oversized_messages_and_resynchronises() -> None:
    framer = Framer(max_body=10, max_header=64)
    stream = (
        b'Content-Length: 99999999999999999999\r\n\r\n{"skipped": 1}'
        + b"Content-Length: 2\r\n\r\n{}"
        + b"Content-Length: 11\r\n\r\n0123456789A"
        + b"Content-Length: 3\r\n\r\n[1]"
        + b"x" * 100
        + b"Content-Length: 1\r\n\r\n7"
    )
    out = [framer.feed(stream[i : i + 5]) for i in range(0, len(stream), 5)]
    items = [x for chunk in out for x in chunk]
    assert [x for x in items if isinstance(x, bytes)] == [b"{}", b"[1]", b"7"]
    errors = [x for x in items if isinstance(x, FramingError)]
    assert [e.refused for e in errors] == [True, True, False]  # two too large (answered), one header block too long
    assert len(framer.buf) < 64  # nothing of the skipped bodies is kept


def test_the_converter_refuses_wrong_json_types_instead_of_casting() -> None:
    converter = strict_converter()
    good: dict[str, Any] = {"textDocument": {"uri": "file:///a.py"}, "position": {"line": 1, "character": 2}, "context": {"triggerKind": 1}}
    params = converter.structure(good, types.InlineCompletionParams)
    assert params.context.trigger_kind is types.InlineCompletionTriggerKind.Invoked and params.position == types.Position(1, 2)
    for field, value in [("line", "1"), ("line", True), ("line", 1.0), ("line", -1), ("character", None)]:
        with pytest.raises(ClassValidationError):
            converter.structure({**good, "position": {**good["position"], field: value}}, types.InlineCompletionParams)
    with pytest.raises(ClassValidationError):
        converter.structure({**good, "textDocument": {"uri": 5}}, types.InlineCompletionParams)
    with pytest.raises(ClassValidationError):
        converter.structure({**good, "context": {"triggerKind": 99}}, types.InlineCompletionParams)
