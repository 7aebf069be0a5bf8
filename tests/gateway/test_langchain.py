"""LangChain's `ChatOpenAI` (a client nobody here wrote) against the real server: its default
structured output, its function-calling structured output and `bind_tools` give objects and
calls, streamed and whole. Nothing here reaches the network: LangChain counts no tokens in these
calls, so tiktoken never fetches its encodings."""

from __future__ import annotations

from typing import Literal

import pytest
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, ConfigDict, Field
from transformers import Qwen2Config, Qwen2ForCausalLM

from tests.conftest import TINY
from tests.gateway.test_tools import hermes_tokenizer  # noqa: F401  (the fixture)


class Weather(BaseModel):
    """The weather asked about."""

    model_config = ConfigDict(extra="forbid")
    city: str = Field(max_length=12)
    unit: Literal["celsius", "fahrenheit"]


@tool(args_schema=Weather)  # (bounded: random weights would write an unbounded string until max_tokens)
def get_weather(city: str, unit: Literal["celsius", "fahrenheit"]) -> str:
    """The weather in a city."""
    return f"18 degrees {unit} in {city}"


def chat(url: str) -> ChatOpenAI:
    return ChatOpenAI(base_url=f"{url}/v1", api_key="unused", model="tiny-llama", max_retries=0, temperature=1.0, max_completion_tokens=100)  # type: ignore[arg-type]


@pytest.fixture
def tool_server(tiny_server, hermes_tokenizer):  # type: ignore[no-untyped-def]  # noqa: F811
    """The real engine on a tiny random-weight Qwen2 whose template has Hermes tools."""
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(hermes_tokenizer), **{**TINY, "max_position_embeddings": 512})).eval()
    with tiny_server(engine="tiny", model=model, tok=hermes_tokenizer) as s:
        yield s


def test_structured_output_both_ways_gives_a_validated_object(tool_server) -> None:
    llm = chat(tool_server.url)
    for method in ("json_schema", "function_calling"):
        for seed in range(3):
            out = llm.bind(seed=seed).with_structured_output(Weather, method=method).invoke("Weather in Paris?")  # type: ignore[arg-type]
            assert isinstance(out, Weather), (method, out)


def test_bind_tools_gives_tool_calls_whole_and_streamed(tool_server) -> None:
    forced = chat(tool_server.url).bind_tools([get_weather], tool_choice="get_weather")
    message = forced.invoke("Weather in Paris?")
    assert [c["name"] for c in message.tool_calls] == ["get_weather"]  # type: ignore[attr-defined]
    Weather.model_validate(message.tool_calls[0]["args"])  # type: ignore[attr-defined]
    chunks = list(forced.stream("Weather in Rome?"))
    whole = chunks[0]
    for chunk in chunks[1:]:
        whole = whole + chunk  # type: ignore[assignment]
    assert [c["name"] for c in whole.tool_calls] == ["get_weather"]  # type: ignore[attr-defined]
    # the call's result goes back as a ToolMessage, and the answer comes
    result = get_weather.invoke(message.tool_calls[0])  # type: ignore[attr-defined]
    answer = chat(tool_server.url).bind_tools([get_weather], tool_choice="none").invoke(["Weather in Paris?", message, result])
    assert answer.tool_calls == [] and isinstance(answer.content, str)  # type: ignore[attr-defined]
