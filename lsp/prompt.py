"""What the model sees: a prefix and a suffix window around the cursor, cut to a token budget, then
short snippets of other open documents of the same language (most recently edited first) within
their own share of the budget. Tokens are estimated from characters (code averages about 3.5
characters a token for this tokenizer family); the server's guard enforces the exact limit.

The prompt is laid out so that the engine's prefix cache stays valid while the user types: the
prefix window starts on a line number that is a multiple of `WINDOW_LINES` (so it stays put until
the cursor has moved that many lines on), and the snippets' share does not depend on the window's
length. On a line holding only indentation the prompt ends with that indentation: leaving it out
(so that the prompt ends at a line start, as the model's tokenizer would split the line) was
measured worse (`tandem bench-completion`'s raw-no-indent row): the model, placed at column 0,
writes code fences, comments and new top-level definitions instead of the function's next line."""

from __future__ import annotations

from dataclasses import dataclass

CHARS_PER_TOKEN = 3.5
WINDOW_LINES = 32
# The suffix share is small: a FIM prompt (prefix, suffix, middle) has the suffix after the
# prefix, so every keystroke re-prefills all of it; the lines right below the cursor are what
# fill-in-the-middle needs most.
PREFIX_SHARE, SUFFIX_SHARE, SNIPPET_SHARE = 0.7, 0.1, 0.2
COMMENT = {"python": "#", "ruby": "#", "shellscript": "#", "yaml": "#", "toml": "#", "r": "#", "perl": "#"}


@dataclass(frozen=True)
class OpenDocument:
    uri: str
    language: str
    text: str
    edited_at: float


@dataclass(frozen=True)
class Prompt:
    prefix: str  # what is sent as the prompt (snippets, then the prefix window)
    suffix: str  # the suffix window
    cursor_prefix: str  # the prefix window alone, for post-processing
    snippets: int


def _tail_lines(text: str, chars: int) -> str:
    if len(text) <= chars:
        return text
    cut = text[-chars:]
    nl = cut.find("\n")
    return cut[nl + 1 :] if 0 <= nl < len(cut) - 1 else cut


def _stable_tail(text: str, chars: int) -> str:
    """The end of `text` from the latest line whose number is a multiple of WINDOW_LINES and that
    leaves at most `chars` characters (the plain line-cut tail when no such line fits)."""
    if len(text) <= chars:
        return text
    earliest = len(text) - chars
    line = text.count("\n", 0, earliest) + (0 if earliest == 0 or text[earliest - 1] == "\n" else 1)
    aligned = -(-line // WINDOW_LINES) * WINDOW_LINES
    offset = earliest if text[earliest - 1] == "\n" else text.find("\n", earliest) + 1
    for _ in range(aligned - line):  # walk on to the aligned line
        nl = text.find("\n", offset)
        if nl < 0:
            return _tail_lines(text, chars)
        offset = nl + 1
    return text[offset:] if 0 < offset < len(text) else _tail_lines(text, chars)


def _head_lines(text: str, chars: int) -> str:
    if len(text) <= chars:
        return text
    cut = text[:chars]
    nl = cut.rfind("\n")
    return cut[:nl] if nl > 0 else cut


def build(
    prefix: str, suffix: str, language: str, uri: str, others: list[OpenDocument], budget_tokens: int = 512, snippet_lines: int = 30
) -> Prompt:
    budget = int(budget_tokens * CHARS_PER_TOKEN)
    window_prefix = _stable_tail(prefix, int(budget * PREFIX_SHARE))
    window_suffix = _head_lines(suffix, int(budget * SUFFIX_SHARE))
    left = int(budget * SNIPPET_SHARE)
    comment = COMMENT.get(language, "//")
    parts = []
    for doc in sorted((d for d in others if d.language == language and d.uri != uri), key=lambda d: -d.edited_at):
        body = "\n".join(doc.text.splitlines()[:snippet_lines])
        snippet = f"{comment} Path: {doc.uri.rsplit('/', 1)[-1]}\n" + "\n".join(f"{comment} {line}" for line in body.splitlines()) + "\n"
        if len(snippet) > left:
            break
        parts.append(snippet)
        left -= len(snippet)
    return Prompt("".join(parts) + window_prefix, window_suffix, window_prefix, len(parts))
