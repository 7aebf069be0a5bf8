"""Constrained decoding on the tiny random-weight model: whatever the weights say, the output
follows the grammar (a JSON schema, a regular expression, a choice), sampled or greedy, batched
beside free rows, for each of n answers; a grammar that does not compile is refused by name."""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from server.engine import Delta, Engine, GenerationRequest, InvalidRequest
from server.engine.types import Grammar

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "pets": {"type": "array", "items": {"enum": ["cat", "dog", "fish"]}, "maxItems": 3},
    },
    "required": ["name", "age", "pets"],
    "additionalProperties": False,
}


async def answer(engine: Engine, req: GenerationRequest) -> tuple[str, str | None]:
    deltas: list[Delta] = [d async for d in engine.stream(req)]
    return "".join(d.text for d in deltas), deltas[-1].finish_reason


def valid_person(text: str) -> bool:
    value = json.loads(text)
    return (
        set(value) == {"name", "age", "pets"}
        and isinstance(value["name"], str)
        and len(value["name"]) <= 12
        and isinstance(value["age"], int)
        and 0 <= value["age"] <= 150
        and all(p in ("cat", "dog", "fish") for p in value["pets"])
        and len(value["pets"]) <= 3
    )


async def test_every_answer_follows_the_schema_sampled_or_greedy_beside_free_rows(engine_factory) -> None:
    engine = engine_factory(prefix_cache_tokens=0)
    schema = Grammar("json_schema", json.dumps(PERSON))
    constrained = [GenerationRequest(prompt="Person:", max_tokens=120, grammar=schema, temperature=1.0, seed=s) for s in range(6)]
    constrained.append(GenerationRequest(prompt="Person:", max_tokens=120, grammar=schema))  # greedy
    free = [GenerationRequest(prompt="Person:", max_tokens=20, temperature=1.0, seed=1)]
    results = await asyncio.gather(*(answer(engine, r) for r in constrained + free))
    for text, finish in results[:-1]:
        assert finish == "stop" and valid_person(text), text
    free_text = results[-1][0]
    with pytest.raises(ValueError):
        json.loads(free_text)  # the free row beside them is the tiny model's noise, not JSON


async def test_a_regex_and_a_choice_hold_and_n_answers_each_follow_them(engine_factory) -> None:
    engine = engine_factory()
    out = [
        d
        async for d in engine.stream(
            GenerationRequest(
                prompt="Date:",
                max_tokens=30,
                grammar=Grammar("regex", r"20[0-9]{2}-(0[1-9]|1[0-2])-[0-2][0-9]"),
                temperature=1.0,
                seed=3,
                n=3,
            )
        )
    ]
    dates = ["".join(d.text for d in out if d.index == i) for i in range(3)]
    assert all(re.fullmatch(r"20\d\d-(0[1-9]|1[0-2])-[0-2]\d", d) for d in dates), dates
    choice = Grammar("choice", json.dumps(["red", "green", "blue"]))
    text, finish = await answer(engine, GenerationRequest(prompt="Colour:", max_tokens=10, grammar=choice, temperature=1.0, seed=9))
    assert text in ("red", "green", "blue") and finish == "stop"


async def test_running_out_of_tokens_mid_grammar_ends_with_length(engine_factory) -> None:
    engine = engine_factory()
    text, finish = await answer(
        engine, GenerationRequest(prompt="Person:", max_tokens=3, grammar=Grammar("json_schema", json.dumps(PERSON)))
    )
    assert finish == "length" and text.startswith("{")


@pytest.mark.parametrize(
    ("grammar", "says"),
    [
        (Grammar("json_schema", '{"type": "strang"}'), "strang"),
        (Grammar("json_schema", "{not json"), "json"),
        (Grammar("regex", "(unclosed"), "regex"),
        (Grammar("choice", "[1, 2]"), "choice"),
        (Grammar("lark", "start: undefined_rule", "structured_outputs"), "undefined_rule"),
    ],
)
async def test_a_grammar_that_does_not_compile_is_refused_by_name(engine_factory, grammar: Grammar, says: str) -> None:
    engine = engine_factory()
    with pytest.raises(InvalidRequest) as refused:
        await answer(engine, GenerationRequest(prompt="x", grammar=grammar))
    assert refused.value.param == grammar.field and says.lower() in str(refused.value).lower()
    assert (await answer(engine, GenerationRequest(prompt="x", max_tokens=2)))[1] == "length"  # still serving
