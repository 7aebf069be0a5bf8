"""Golden cases pin what is shown for a model's raw stream (tests/golden/suggestion/cases.json):
alignment to a cursor on an indented blank line, FIM output that runs on past the suffix, the first
line as you type against the block on request, and text still being written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lsp.postprocess import Context
from lsp.present import aligned, suggestion
from lsp.prompt import build

CASES = json.loads((Path(__file__).resolve().parents[1] / "golden" / "suggestion" / "cases.json").read_text())


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
async def test_suggestion_golden(case: dict) -> None:
    assert build(case["prefix"], case["suffix"], "python", "file:///golden.py", []).prefix.endswith(case["prefix"][-200:])
    line_before = case["prefix"][case["prefix"].rfind("\n") + 1 :]

    async def stream():  # type: ignore[no-untyped-def]
        for piece in case["pieces"]:
            yield "cmpl-golden", piece

    rest = "".join([p async for _, p in aligned(stream(), line_before if not line_before.strip() else None)])
    ctx = Context(case["prefix"], case["suffix"])
    assert suggestion(rest, ctx, whole_block=case["whole_block"], finished=case["finished"]) == case["expected"]
