"""What the model sees: a prefix and a suffix window around the cursor, cut to a token budget, then
short snippets of other open documents of the same language (most recently edited first) while
budget remains. Tokens are estimated from characters (code averages about 3.5 characters a token
for this tokenizer family); the server's guard enforces the exact limit."""

from __future__ import annotations

from dataclasses import dataclass

CHARS_PER_TOKEN = 3.5
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
    return cut[nl + 1:] if 0 <= nl < len(cut) - 1 else cut


def _head_lines(text: str, chars: int) -> str:
    if len(text) <= chars:
        return text
    cut = text[:chars]
    nl = cut.rfind("\n")
    return cut[:nl] if nl > 0 else cut


def build(prefix: str, suffix: str, language: str, uri: str, others: list[OpenDocument], budget_tokens: int = 1536,
          snippet_lines: int = 30) -> Prompt:
    budget = int(budget_tokens * CHARS_PER_TOKEN)
    window_prefix = _tail_lines(prefix, int(budget * 0.6))
    window_suffix = _head_lines(suffix, int(budget * 0.2))
    left = budget - len(window_prefix) - len(window_suffix)
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
