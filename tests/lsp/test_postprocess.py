"""Golden files pin every post-processing filter (tests/golden/postprocess/<filter>.json), and
`postprocess.json` the whole pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lsp import postprocess as pp

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "postprocess"
CASES = [(path.stem, case) for path in sorted(GOLDEN.glob("*.json")) for case in json.loads(path.read_text())]


def test_every_filter_has_golden_cases() -> None:
    assert {f.__name__ for f in pp.FILTERS} | {"postprocess"} == {name for name, _ in CASES}


@pytest.mark.parametrize("name, case", CASES, ids=[f"{n}: {c['name']}" for n, c in CASES])
def test_golden(name: str, case: dict) -> None:
    ctx = pp.Context(case["prefix"], case["suffix"], case.get("multiline", True))
    apply = pp.postprocess if name == "postprocess" else getattr(pp, name)
    assert apply(case["completion"], ctx) == case["expected"]
