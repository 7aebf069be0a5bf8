"""The completion benchmarks' pure parts: the positions they score and type are reproducible and
where they claim to be, and the similarity is the metric the table names. No server, no timing."""

from __future__ import annotations

import ast

from lsp.bench_quality import edit_similarity, first_line, score
from lsp.bench_typing import body_lines, keystrokes, load_sources, position_at, select_positions, typing_span

CODE = '''
def f(x):
    """A docstring
    over lines."""
    # a comment
    y = x + 1

    s = """text
    inside a string"""
    return y


class C:
    def m(self):
        return 2
'''


def test_body_lines_skip_docstrings_comments_blanks_and_string_interiors() -> None:
    lines = CODE.split("\n")
    assert [lines[i].strip() for i in body_lines(CODE)] == ["y = x + 1", 's = """text', "return y", "return 2"]


def test_a_position_removes_the_line_and_keeps_its_indentation() -> None:
    (src,) = load_sources(1)
    line = body_lines(src.text)[3]
    pos = position_at(src, line)
    original = src.text.split("\n")[line]
    assert pos.removed == original.strip() and original.startswith(pos.indent)
    assert pos.prefix + original[len(pos.indent) :] + pos.suffix == src.text
    assert pos.document.split("\n")[line] == pos.indent and pos.suffix.startswith("\n")


def test_positions_are_deterministic_and_inside_function_bodies() -> None:
    sources = load_sources()
    first, again = select_positions(sources, 40, seed=7), select_positions(sources, 40, seed=7)
    assert [(p.source.name, p.line) for p in first] == [(p.source.name, p.line) for p in again]
    assert [(p.source.name, p.line) for p in first] != [(p.source.name, p.line) for p in select_positions(sources, 40, seed=8)]
    assert len(first) == 40 and {p.source.name for p in first} == {s.name for s in sources}
    for p in first:
        assert p.removed and not p.removed.startswith("#") and p.indent
        tree = ast.parse(p.source.text)
        inside = [
            n
            for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.lineno < p.line + 1 <= (n.end_lineno or 0)
        ]
        assert inside, (p.source.name, p.line)


def test_typing_span_starts_at_code_and_ends_at_a_line_end() -> None:
    for src in load_sources():
        start, end = typing_span(src.text, 120)
        assert end - start >= 120 and src.text[end] == "\n" and src.text[start - 1] in " \t" and src.text[start] not in " \t\n"
        keys = keystrokes(src.text, start, end)
        assert "".join(src.text[o : o + n] for o, n, _ in keys) == src.text[start:end]
        assert all(src.text[o] == "\n" for o, _, line_end in keys if line_end)


def test_edit_similarity() -> None:
    assert edit_similarity("return y", "return y") == 1.0
    assert edit_similarity("", "") == 1.0 and edit_similarity("abc", "") == 0.0
    assert edit_similarity("kitten", "sitting") == 1 - 3 / 7
    assert first_line("  x = 1\n  y = 2") == "x = 1"
    (src,) = load_sources(1)
    pos = position_at(src, body_lines(src.text)[0])
    assert score(pos, pos.removed + "\nmore")["exact"] and not score(pos, "")["exact"] and score(pos, " ")["empty"]
