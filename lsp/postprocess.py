"""Post-processing of a raw completion, as small pure filters (after Tabby's postprocess/).

Each filter takes the completion and the context around the cursor and returns the completion
to show ("" for nothing). They run in order; golden files in tests/golden/postprocess pin each.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

CLOSERS = {"(": ")", "[": "]", "{": "}", '"': '"', "'": "'", "`": "`"}


@dataclass(frozen=True)
class Context:
    prefix: str  # the document before the cursor
    suffix: str  # the document after the cursor
    multiline: bool = True

    @property
    def line_before(self) -> str:
        return self.prefix[self.prefix.rfind("\n") + 1 :]

    @property
    def line_after(self) -> str:
        end = self.suffix.find("\n")
        return self.suffix if end < 0 else self.suffix[:end]


Filter = Callable[[str, Context], str]


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def single_line(completion: str, ctx: Context) -> str:
    """With multi-line off, only the rest of the current line."""
    return completion if ctx.multiline else completion.split("\n", 1)[0]


def limit_scope(completion: str, ctx: Context) -> str:
    """Stay in the block the cursor is in: stop at a blank line, at a line indented less than the
    cursor's line, and, when the cursor's line opens a block, at the first line back at its level
    (a closing bracket there is kept: it ends the block)."""
    lines = completion.split("\n")
    if len(lines) == 1:
        return completion
    cursor_line = ctx.line_before + lines[0]
    base = _indent(cursor_line) if cursor_line.strip() else _indent(ctx.line_before)
    opens_block = cursor_line.rstrip().endswith((":", "{", "(", "["))
    kept = [lines[0]]
    for line in lines[1:]:
        if not line.strip():
            break
        indent = _indent(line)
        if indent < base:
            break
        if opens_block and indent == base:
            if line.strip()[0] in ")]}":
                kept.append(line)
            break
        kept.append(line)
    return "\n".join(kept)


def drop_repeated_lines(completion: str, ctx: Context) -> str:
    """Cut a completion where it starts looping: a line equal to the one before it, or to the last
    line above the cursor (short lines such as `}` or `pass` may legitimately repeat)."""
    complete_lines = ctx.prefix[: ctx.prefix.rfind("\n") + 1].split("\n")
    above = next((line.strip() for line in reversed(complete_lines) if line.strip()), "")
    out: list[str] = []
    for line in completion.split("\n"):
        stripped = line.strip()
        if len(stripped) > 4 and ((out and out[-1].strip() == stripped) or stripped == above):
            break
        out.append(line)
    return "\n".join(out)


def trim_against_suffix(completion: str, ctx: Context) -> str:
    """Never duplicate what follows the cursor: cut the completion where it starts retyping the
    rest of the cursor's line, or the next non-blank line below it."""
    rest = ctx.line_after.strip()
    if rest:
        stripped = completion.rstrip()
        return stripped[: -len(rest)] if stripped.endswith(rest) else completion
    below = next((line.strip() for line in ctx.suffix.split("\n")[1:] if line.strip()), "")
    if not below:
        return completion
    lines = completion.split("\n")
    first = 0 if not ctx.line_before.strip() else 1  # on a blank line, even the first line may be a retype
    for i in range(first, len(lines)):
        if lines[i].strip() == below:
            return "\n".join(lines[:i])
    return completion


def replace_auto_closed(completion: str, ctx: Context) -> str:
    """The editor auto-closed a bracket or quote right after the cursor; if the completion's line
    closes it too, drop the completion's closer so the line does not end up with two."""
    after = ctx.line_after
    if not after or after.strip() != after or any(c not in ")]}\"'`" for c in after):
        return completion
    first, sep, rest = completion.partition("\n")
    if not sep and first.endswith(after):
        return first[: -len(after)]
    return completion


def drop_empty(completion: str, ctx: Context) -> str:
    return completion if completion.strip() else ""


FILTERS: tuple[Filter, ...] = (single_line, drop_repeated_lines, limit_scope, trim_against_suffix, replace_auto_closed, drop_empty)


def postprocess(completion: str, ctx: Context, filters: tuple[Filter, ...] = FILTERS) -> str:
    for f in filters:
        completion = f(completion, ctx)
        if not completion:
            return ""
    return completion.rstrip(" \t") if "\n" in completion else completion
