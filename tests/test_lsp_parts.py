"""The language server's pure parts: UTF-16 positions, the completion cache, the prompt window
and snippets, and settings from `workspace/configuration`."""

from __future__ import annotations

import pytest

from lsp.cache import CompletionCache
from lsp.positions import PositionError, offset_of
from lsp.prompt import OpenDocument, build
from lsp.settings import Settings


@pytest.mark.parametrize("text, line, character, expected", [
    ("abc", 0, 3, 3),
    ("héllo wörld", 0, 5, 5),  # accents are one UTF-16 unit
    ("s = '日本語'\nx", 0, 8, 8),  # CJK: one unit each
    ("e = '😀'\nx", 0, 7, 6),  # the emoji is two UTF-16 units, one code point
    ("a\r\nbc", 1, 2, 5),
    ("one\ntwo\n", 2, 0, 8),
])
def test_utf16_positions(text: str, line: int, character: int, expected: int) -> None:
    assert offset_of(text, line, character) == expected


@pytest.mark.parametrize("text, line, character, problem", [
    ("e = '😀'", 0, 6, "surrogate pair"),
    ("abc", 0, 4, "past the end of line"),
    ("abc", 1, 0, "past the end of the document"),
    ("abc", -1, 0, "negative"),
    ("a\r\nb", 0, 2, "past the end of line"),  # the \r is not part of the line
])
def test_bad_positions_are_refused_not_guessed(text: str, line: int, character: int, problem: str) -> None:
    with pytest.raises(PositionError, match=problem):
        offset_of(text, line, character)


def test_cache_answers_repeats_and_typing_through_the_suggestion() -> None:
    cache = CompletionCache()
    cache.put("u", "def f(x):\n    ", "\n", "return x * 2", "cmpl-1")
    assert cache.get("u", "def f(x):\n    ", "\n").completion == "return x * 2"
    assert cache.get("u", "def f(x):\n    ret", "\n").completion == "urn x * 2"  # typed 'ret' of it
    assert cache.get("u", "def f(x):\n    rex", "\n") is None  # typed something else
    assert cache.get("u", "def f(x):\n    ", "\nmore") is None  # the suffix changed
    assert cache.get("other", "def f(x):\n    ret", "\n") is None  # typing-through is per document
    assert (cache.hits, cache.misses) == (2, 3)


def test_prompt_window_and_snippets_by_recency_and_language() -> None:
    prefix = "".join(f"line_{i} = {i}\n" for i in range(2000))
    others = [OpenDocument("file:///a/old.py", "python", "OLD = 1\n", 1.0), OpenDocument("file:///a/new.py", "python", "NEW = 2\n", 5.0),
              OpenDocument("file:///a/x.ts", "typescript", "const TS = 3;\n", 9.0)]
    p = build(prefix, "tail()\n", "python", "file:///a/main.py", others, budget_tokens=512)
    assert len(p.prefix) <= 512 * 3.5 and p.cursor_prefix.startswith("line_") and prefix.endswith(p.cursor_prefix)
    assert p.prefix.index("# Path: new.py") < p.prefix.index("# Path: old.py") and "TS" not in p.prefix
    assert p.snippets == 2 and p.suffix == "tail()\n"


def test_settings_from_the_client_are_validated() -> None:
    s = Settings().updated({"serverUrl": "http://127.0.0.1:9000", "maxTokens": 32, "multiline": False, "enabledLanguages": ["python"],
                            "timeBudgetMs": 5, "unknown": 1})
    assert (s.server_url, s.max_tokens, s.multiline, s.enabled_languages) == ("http://127.0.0.1:9000", 32, False, ("python",))
    assert s.time_budget_ms == Settings().time_budget_ms  # out of range: ignored
    assert Settings().updated({"serverUrl": "file:///etc/passwd", "maxTokens": "many"}) == Settings()
    assert Settings().updated(None) == Settings() and s.enabled_for("python") and not s.enabled_for("go")
