"""From a generation's raw output to the suggestion shown at the cursor.

An as-you-type request shows the first line as soon as it is complete; an explicit request waits
for the block. What is still being written is shown only as whole lines (or, with none yet, cut at
the last word boundary), never a half-written identifier.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

from . import postprocess

_WORD_TAIL = re.compile(r"[\w.]+$")


async def aligned(pieces: AsyncIterator[tuple[str, str]], blank_indent: str | None) -> AsyncIterator[tuple[str, str]]:
    """The stream relative to the cursor. `blank_indent`: the indentation before the cursor when
    that is all its line holds (else None). There, a model that starts with a newline (leaving the
    line blank) and indents the next one would have an accepted suggestion insert a blank line
    and indent twice: its leading newlines are dropped, and as much of the indentation after them
    as the cursor already has. Whitespace it writes on the cursor's own line is dropped too: the
    prompt ends inside a run of spaces the tokenizer would have split differently, so the model
    often adds the space it expects before a word (" return"), never a deeper indentation."""
    pending = blank_indent is not None
    skip = 1 << 30  # on the cursor's line: all of it
    async for request_id, piece in pieces:
        if pending:
            if not piece.strip("\n"):
                skip = len(blank_indent or "")
                continue  # leading newlines (possibly alone in their piece)
            if piece.startswith("\n"):
                skip = len(blank_indent or "")
                piece = piece.lstrip("\n")
            spaces = len(piece) - len(piece.lstrip(" \t"))
            if spaces < len(piece) or spaces >= skip:  # the indentation is complete in this piece
                pending = False
                piece = piece[min(spaces, skip) :]
            else:
                skip -= spaces
                continue
        if piece:
            yield request_id, piece


def first_line(raw: str) -> str:
    """The output up to the end of its first line with code on it (leading blank lines included:
    at the end of a line of code, the suggestion is the next line)."""
    lines = raw.split("\n")
    for i, line in enumerate(lines):
        if line.strip():
            return "\n".join(lines[: i + 1])
    return raw


def has_first_line(raw: str) -> bool:
    """A first line with code on it has been completed."""
    stripped = raw.lstrip("\n \t")
    return "\n" in stripped and bool(stripped[: stripped.index("\n")].strip())


def settled(raw: str, finished: bool) -> str:
    """What of the output is final: all of it once the generation ended by itself; while it runs
    (or after a cut), its whole lines, or with none yet, the text up to the last word boundary."""
    if finished:
        return raw
    if "\n" in raw and raw[: raw.rfind("\n")].strip():
        return raw[: raw.rfind("\n")]
    partial = raw[raw.rfind("\n") + 1 :]
    head = raw[: raw.rfind("\n") + 1]
    return head + _WORD_TAIL.sub("", partial) if _WORD_TAIL.search(partial) else raw


def block_complete(raw: str, ctx: postprocess.Context) -> bool:
    """The block has ended: a finished line after which the scope filter would cut anyway."""
    if "\n" not in raw:
        return False
    if not ctx.multiline:
        return has_first_line(raw)
    complete = raw[: raw.rfind("\n")]
    return "\n" in complete and postprocess.limit_scope(complete, ctx) != complete


def suggestion(rest: str, ctx: postprocess.Context, *, whole_block: bool, finished: bool) -> str:
    """The suggestion to show for the output `rest` (from the cursor on); nothing when it opens a
    Markdown code fence (a chat-tuned model stepping out of the file, not code to insert)."""
    if rest.lstrip().startswith("```"):
        return ""
    raw = settled(rest, finished)
    if not whole_block or not ctx.multiline:
        raw = first_line(raw)
    return postprocess.postprocess(raw, ctx)
