"""The README's compatibility matrix, walked against the running server on the default model: each
row's field sent with a value that asks for it, and the answer checked against the row (honoured:
served; refused: a 400 naming the field; with a tool model: `tools_not_supported` here, as the
default model's template has no tools). The table must hold every request field the `openai`
SDK types for the three endpoints and every field the server's own bodies take, so it cannot go
stale. (What each honoured field does is tested where it is built: tests/gateway, tests/engine.)"""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from openai.types import completion_create_params
from openai.types.chat import completion_create_params as chat_create_params
from openai.types.responses import response_create_params
from pydantic import BaseModel

from server.schemas import ChatBody, ChatMessage, CompletionBody, ResponsesBody
from tests.conftest import ROOT

pytestmark = pytest.mark.default_model

ROUTES = {"chat": "/v1/chat/completions", "completions": "/v1/completions", "responses": "/v1/responses"}
BASE: dict[str, dict[str, Any]] = {
    "chat": {"messages": [{"role": "user", "content": "Say yes."}], "max_tokens": 2},
    "completions": {"prompt": "The sky is", "max_tokens": 2},
    "responses": {"input": "Say yes.", "max_output_tokens": 2},
}
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}
CALLS = [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]
TOOL_TURNS = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": CALLS},
    {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees"},
]

# a value that asks for each field (a body replaced whole where the field lives in its messages)
ASKS: dict[tuple[str, str], Any] = {
    ("chat", "model"): "default",
    ("chat", "messages"): [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hi."}]}],
    ("chat", "messages[].name"): {"messages": [{"role": "user", "content": "Hi.", "name": "ann"}]},
    ("chat", "messages[].tool_calls"): {"messages": TOOL_TURNS},
    ("chat", "messages[].tool_call_id"): {"messages": TOOL_TURNS},
    ("chat", "messages[].audio"): {
        "messages": [{"role": "assistant", "content": "x", "audio": {"id": "a1"}}, {"role": "user", "content": "Hi."}]
    },
    ("chat", "messages[].function_call"): {
        "messages": [
            {"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": "{}"}},
            {"role": "user", "content": "Hi."},
        ]
    },
    ("chat", "messages[].refusal"): {
        "messages": [{"role": "assistant", "content": "", "refusal": "no"}, {"role": "user", "content": "Hi."}]
    },
    ("chat", "max_tokens"): 3,
    ("chat", "max_completion_tokens"): 3,
    ("chat", "temperature"): 0.7,
    ("chat", "top_p"): 0.9,
    ("chat", "seed"): 7,
    ("chat", "stop"): ["\n"],
    ("chat", "stream"): True,
    ("chat", "stream_options"): {"include_usage": True},
    ("chat", "n"): 2,
    ("chat", "user"): "user-1",
    ("chat", "safety_identifier"): "user-1",
    ("chat", "prompt_cache_key"): "doc-1",
    ("chat", "presence_penalty"): 0.5,
    ("chat", "frequency_penalty"): 0.5,
    ("chat", "logit_bias"): {"42": -100},
    ("chat", "logprobs"): True,
    ("chat", "top_logprobs"): 2,
    ("chat", "response_format"): {"type": "json_object"},
    ("chat", "tools"): [WEATHER],
    ("chat", "tool_choice"): "required",
    ("chat", "parallel_tool_calls"): False,
    ("chat", "functions"): [WEATHER["function"]],
    ("chat", "function_call"): "auto",
    ("chat", "audio"): {"voice": "alloy", "format": "wav"},
    ("chat", "modalities"): ["text", "audio"],
    ("chat", "prediction"): {"type": "content", "content": "yes"},
    ("chat", "reasoning_effort"): "high",
    ("chat", "verbosity"): "low",
    ("chat", "web_search_options"): {"search_context_size": "low"},
    ("chat", "store"): True,
    ("chat", "metadata"): {"k": "v"},
    ("chat", "service_tier"): "flex",
    ("chat", "moderation"): {"enabled": True},
    ("chat", "prompt_cache_options"): {"ttl": 60},
    ("chat", "prompt_cache_retention"): "24h",
    ("chat", "repetition_penalty"): 1.2,
    ("chat", "min_tokens"): 1,
    ("chat", "stop_token_ids"): [13],
    ("chat", "structured_outputs"): {"choice": ["yes", "no"]},
    ("chat", "guided_json"): {"type": "object"},
    ("completions", "model"): "default",
    ("completions", "prompt"): [504, 3529, 314],
    ("completions", "suffix"): " blue.",
    ("completions", "max_tokens"): 0,
    ("completions", "temperature"): 0.7,
    ("completions", "top_p"): 0.9,
    ("completions", "seed"): 7,
    ("completions", "stop"): "\n",
    ("completions", "stream"): True,
    ("completions", "stream_options"): {"include_usage": True},
    ("completions", "n"): 2,
    ("completions", "best_of"): 2,
    ("completions", "echo"): True,
    ("completions", "logprobs"): 2,
    ("completions", "logit_bias"): {"42": -100},
    ("completions", "presence_penalty"): 0.5,
    ("completions", "frequency_penalty"): 0.5,
    ("completions", "user"): "user-1",
    ("completions", "priority"): "background",
    ("completions", "safety_identifier"): "user-1",
    ("completions", "prompt_cache_key"): "doc-1",
    ("completions", "repetition_penalty"): 1.2,
    ("completions", "min_tokens"): 1,
    ("completions", "stop_token_ids"): [13],
    ("completions", "response_format"): {"type": "json_object"},
    ("completions", "structured_outputs"): {"regex": "[a-z]+"},
    ("completions", "guided_json"): {"type": "object"},
    ("responses", "model"): "default",
    ("responses", "input"): [
        {"role": "user", "content": "Hi."},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Yes?"},
    ],
    ("responses", "instructions"): "Be brief.",
    ("responses", "max_output_tokens"): 3,
    ("responses", "temperature"): 0.7,
    ("responses", "top_p"): 0.9,
    ("responses", "stream"): True,
    ("responses", "stream_options"): {"include_obfuscation": False},
    ("responses", "text"): {"format": {"type": "json_object"}},
    ("responses", "truncation"): "auto",
    ("responses", "metadata"): {"k": "v"},
    ("responses", "user"): "user-1",
    ("responses", "safety_identifier"): "user-1",
    ("responses", "prompt_cache_key"): "doc-1",
    ("responses", "tools"): [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}],
    ("responses", "tool_choice"): "required",
    ("responses", "parallel_tool_calls"): False,
    ("responses", "previous_response_id"): "resp_1",
    ("responses", "conversation"): "conv_1",
    ("responses", "store"): True,
    ("responses", "background"): True,
    ("responses", "background_options"): {"x": 1},
    ("responses", "include"): ["reasoning.encrypted_content"],
    ("responses", "top_logprobs"): 2,
    ("responses", "reasoning"): {"effort": "high"},
    ("responses", "max_tool_calls"): 2,
    ("responses", "prompt"): {"id": "pmpt_1"},
    ("responses", "context_management"): [{"type": "compaction"}],
    ("responses", "service_tier"): "priority",
    ("responses", "moderation"): {"enabled": True},
    ("responses", "prompt_cache_options"): {"ttl": 60},
    ("responses", "prompt_cache_retention"): "24h",
    ("responses", "image"): {"url": "https://example.com/a.png"},
    ("responses", "access_programs"): ["x"],
}
# fields the table names once for their family (vLLM's guided_* beside guided_json)
FAMILY = {"guided_regex": "guided_json", "guided_choice": "guided_json", "guided_grammar": "guided_json"}
# a tool model's fields arrive with what they need: a tool_choice or parallel_tool_calls with its tools
NEEDS_TOOLS = {"tool_choice", "parallel_tool_calls"}


def matrix() -> dict[tuple[str, str], str]:
    text = (ROOT / "README.md").read_text()
    table = text.split("<!-- matrix -->")[1].split("<!-- /matrix -->")[0]
    rows = re.findall(r"^\| (chat|completions|responses) \| `([^`]+)` \| ([a-z ]+) \|", table, re.M)
    assert len(rows) == len({(e, f) for e, f, _ in rows}), "a field is in the table twice"
    return {(e, f): status for e, f, status in rows}


def test_the_table_holds_every_field_the_sdk_and_the_server_know() -> None:
    rows = matrix()
    assert set(rows) == set(ASKS), set(rows) ^ set(ASKS)
    assert set(rows.values()) <= {"honoured", "refused", "with a tool model"}
    sdk = {
        "chat": chat_create_params.CompletionCreateParamsBase.__annotations__,
        "completions": completion_create_params.CompletionCreateParamsBase.__annotations__,
        "responses": response_create_params.ResponseCreateParamsBase.__annotations__,
    }
    bodies: dict[str, type[BaseModel]] = {"chat": ChatBody, "completions": CompletionBody, "responses": ResponsesBody}
    for endpoint in ROUTES:
        named = {f for e, f in rows if e == endpoint}
        body = bodies[endpoint]
        fields = set(sdk[endpoint]) | {"stream"} | {(info.alias or name) for name, info in body.model_fields.items()}
        fields |= set(getattr(body, "REFUSED", {}))
        missing = {FAMILY.get(f, f) for f in fields} - named
        assert not missing, f"{endpoint}: fields missing from the README's matrix: {sorted(missing)}"
    message_fields = {f"messages[].{f}" for f in [*ChatMessage.model_fields, *ChatMessage.REFUSED] if f not in ("role", "content")}
    assert message_fields <= {f for e, f in rows if e == "chat"}, message_fields


def _body(endpoint: str, field: str) -> dict[str, Any]:
    value = ASKS[(endpoint, field)]
    body = dict(BASE[endpoint])
    if field.startswith("messages[]."):
        return body | value
    body[field] = value
    if field in NEEDS_TOOLS:
        body["tools"] = ASKS[(endpoint, "tools")]
    if field in ("top_logprobs",) and endpoint == "chat":
        body["logprobs"] = True
    if (endpoint, field) in (("completions", "max_tokens"), ("completions", "logprobs")):
        body["echo"] = True
    if (endpoint, field) == ("completions", "best_of"):
        body["n"] = 1
    return body


@pytest.mark.parametrize(("endpoint", "field"), sorted(matrix()))
def test_each_field_does_what_the_matrix_says(default_server, endpoint: str, field: str) -> None:
    status = matrix()[(endpoint, field)]
    body = _body(endpoint, field)
    with httpx.stream("POST", f"{default_server.url}{ROUTES[endpoint]}", json=body, timeout=120) as r:
        r.read()
    if (endpoint, field) == ("completions", "suffix") and not default_server_model(default_server.url)["fim"]:
        status = "fim"  # (honoured where the model has FIM tokens; the default model has none)
    if status == "honoured":
        assert r.status_code == 200, r.text
        if body.get("stream"):
            assert r.headers["content-type"].startswith("text/event-stream") and (
                "[DONE]" in r.text or "event: response.completed" in r.text or "event: response.incomplete" in r.text
            )
        return
    error = r.json()["error"]
    assert r.status_code == 400, r.text
    if status == "refused":
        assert error["code"] == "unsupported_parameter" and error["param"].replace(".", "").startswith(
            field.replace("[]", "0").replace(".", "")
        ), error
    elif status == "fim":
        assert error["code"] == "fim_not_supported" and error["param"] == "suffix", error
    else:  # with a tool model: the default model's template has none
        assert error["code"] == "tools_not_supported", error


def default_server_model(url: str) -> dict[str, Any]:
    return httpx.get(f"{url}/v1/models").json()["data"][0]  # type: ignore[no-any-return]
