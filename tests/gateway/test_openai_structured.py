"""Structured output over a real socket: OpenAI's response_format (json_schema through the SDK's
own `parse()`, json_object), vLLM's structured_outputs and guided_* fields; every answer follows
its schema on the tiny random-weight model, whose free answers are noise; what cannot be honoured
is refused by name. (The default model's run is in tests/e2e/test_default_model_e2e.py.)"""

from __future__ import annotations

import json
import re
from typing import Literal

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from pydantic import BaseModel, Field

from tests.gateway.test_gateway import records


class Pet(BaseModel):
    kind: Literal["cat", "dog", "fish"]
    name: str = Field(max_length=10)


class Person(BaseModel):
    name: str = Field(max_length=12)
    age: int = Field(ge=0, le=150)
    pets: list[Pet] = Field(max_length=2)


def closed(schema: dict) -> dict:
    """`schema` with no properties beyond its own, anywhere (as OpenAI's strict mode has it): an
    open object lets a model write keys of its own until max_tokens, which the tiny one does."""
    for part in [schema, *schema.get("$defs", {}).values()]:
        if part.get("type") == "object":
            part["additionalProperties"] = False
    return schema


MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Describe a person."}]


def test_parse_returns_a_validated_object_every_time(tiny_server) -> None:
    with tiny_server(engine="tiny") as s, openai.OpenAI(base_url=f"{s.url}/v1", api_key="unused", max_retries=0) as client:
        for seed in range(10):
            out = client.chat.completions.parse(
                model="tiny-llama",
                messages=MESSAGES,
                response_format=Person,
                temperature=1.0,
                seed=seed,
                max_tokens=150,  # type: ignore[arg-type]
            )
            person = out.choices[0].message.parsed
            assert isinstance(person, Person) and out.choices[0].finish_reason == "stop", out.choices[0].message.content
        # streamed, the same grammar: the text joined is one valid object
        with client.chat.completions.stream(
            model="tiny-llama",
            messages=MESSAGES,
            response_format=Person,
            temperature=1.0,
            seed=99,
            max_tokens=150,  # type: ignore[arg-type]
        ) as stream:
            final = stream.get_final_completion()
        assert isinstance(final.choices[0].message.parsed, Person)


def test_vllms_fields_hold_a_regex_a_choice_and_a_schema(tiny_server) -> None:
    with tiny_server(engine="tiny") as s:
        date = r"20[0-9]{2}-(0[1-9]|1[0-2])-[0-2][0-9]"
        r = httpx.post(
            f"{s.url}/v1/completions",
            json={"prompt": "Today:", "max_tokens": 20, "temperature": 1.0, "seed": 1, "n": 3, "structured_outputs": {"regex": date}},
        ).json()
        assert all(re.fullmatch(date, c["text"]) for c in r["choices"]), r
        choice = httpx.post(
            f"{s.url}/v1/chat/completions", json={"messages": MESSAGES, "temperature": 1.0, "guided_choice": ["yes", "no", "maybe"]}
        ).json()
        assert choice["choices"][0]["message"]["content"] in ("yes", "no", "maybe")
        schema = closed(Person.model_json_schema())
        for field in ({"guided_json": schema}, {"structured_outputs": {"json": schema}}):
            text = httpx.post(f"{s.url}/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 150, **field}, timeout=120).json()
            Person.model_validate_json(text["choices"][0]["message"]["content"])
        lark = 'start: "a" ("b" | "c")+ "d"'
        text = httpx.post(
            f"{s.url}/v1/completions", json={"prompt": "x", "max_tokens": 12, "temperature": 1.0, "structured_outputs": {"grammar": lark}}
        ).json()["choices"][0]
        assert re.fullmatch("a[bc]+d", text["text"]) or (text["finish_reason"] == "length" and re.fullmatch("a[bc]*", text["text"]))


def test_the_grammar_is_named_in_the_audit_record(tiny_server) -> None:
    with tiny_server(engine="tiny") as s:
        httpx.post(f"{s.url}/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 5, "guided_regex": "[a-z]+"})

        rows = records(s.audit_dir, 1)
        assert rows[0]["model"]["params"]["grammar"] == "regex"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format.json_schema.schema"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strang"}}}}, "response_format"),
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        ({"guided_regex": "(unclosed"}, "guided_regex"),
        ({"guided_json": "{not json"}, "guided_json"),
        ({"structured_outputs": {"grammar": "start: nowhere"}}, "structured_outputs.grammar"),
        ({"guided_regex": "a+", "response_format": {"type": "json_object"}}, "guided_regex"),
        ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs.choice"),
    ],
)
def test_a_constraint_that_cannot_be_honoured_is_refused_by_name(tiny_server, body: dict, param: str) -> None:
    with tiny_server(engine="tiny") as s:
        r = httpx.post(f"{s.url}/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 5, **body})
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
        assert httpx.post(f"{s.url}/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 2}).status_code == 200


def test_json_object_gives_an_object_or_says_it_ran_out(tiny_server) -> None:
    with tiny_server(engine="tiny") as s:
        for seed in range(4):
            choice = httpx.post(
                f"{s.url}/v1/chat/completions",
                json={"messages": MESSAGES, "max_tokens": 60, "temperature": 1.0, "seed": seed, "response_format": {"type": "json_object"}},
            ).json()["choices"][0]
            text = choice["message"]["content"]
            if choice["finish_reason"] == "stop":
                assert isinstance(json.loads(text), dict)
            else:
                assert choice["finish_reason"] == "length" and text.startswith("{")
