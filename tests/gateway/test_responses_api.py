"""/v1/responses through the official SDK, validating every response and event against its types:
text in and out, instructions, a conversation as input, the stream's events in their order,
structured output through `responses.parse()`, truncation; and what it does not serve refused by
name, the server still serving."""

from __future__ import annotations

import httpx
import openai
import pytest
from pydantic import BaseModel, Field

from tests.gateway.test_gateway import records


def client_of(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, _strict_response_validation=True)


def test_a_response_is_the_chat_answer_in_responses_clothes(tiny_server) -> None:
    with tiny_server() as s, client_of(s.url) as client:
        s.engine.script = ["Hello", " there", "."]
        out = client.responses.create(model="tiny-llama", input="Say hello.", instructions="Be brief.", max_output_tokens=50)
        assert out.status == "completed" and out.output_text == "Hello there." and out.instructions == "Be brief."
        assert out.usage is not None and out.usage.output_tokens == 3 and out.usage.total_tokens == out.usage.input_tokens + 3
        sent = s.engine.requests[-1].prompt
        assert isinstance(sent, list)  # the chat template's ids: the instructions as the system message, then the input
        # a conversation as input, parts and all
        conversation = [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": [{"type": "output_text", "text": "Hello!"}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "And now?"}]},
        ]
        again = client.responses.create(model="tiny-llama", input=conversation)  # type: ignore[arg-type]
        assert again.output_text == "Hello there."
        # out of tokens: incomplete, and says why
        short = client.responses.create(model="tiny-llama", input="Say hello.", max_output_tokens=2)
        assert short.status == "incomplete" and short.incomplete_details is not None
        assert short.incomplete_details.reason == "max_output_tokens" and short.output_text == "Hello there"


def test_the_stream_sends_every_event_in_order(tiny_server) -> None:
    with tiny_server() as s, client_of(s.url) as client:
        s.engine.script = ["One", " two", " three"]
        events = list(client.responses.create(model="tiny-llama", input="Count.", stream=True))
        kinds = [e.type for e in events]
        opening = ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]
        closing = ["response.output_text.done", "response.content_part.done", "response.output_item.done", "response.completed"]
        assert kinds[:4] == opening and kinds[-4:] == closing and set(kinds[4:-4]) == {"response.output_text.delta"}
        assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "One two three"  # type: ignore[union-attr]
        assert [e.sequence_number for e in events] == list(range(len(events)))
        assert events[-1].response.output_text == "One two three"  # type: ignore[union-attr]
        with client.responses.stream(model="tiny-llama", input="Count.") as stream:
            final = stream.get_final_response()
        assert final.output_text == "One two three" and final.id.startswith("resp_")


class Answer(BaseModel):
    word: str = Field(max_length=8)
    count: int = Field(ge=0, le=99)


def test_text_format_holds_the_real_engine_to_a_schema(tiny_server) -> None:
    with tiny_server(engine="tiny") as s, client_of(s.url) as client:
        for seed in range(3):
            out = client.responses.parse(
                model="tiny-llama", input="Pick a word.", text_format=Answer, temperature=1.0, max_output_tokens=80
            )
            assert isinstance(out.output_parsed, Answer), (seed, out.output_text)
        rows = records(s.audit_dir, 3)
        assert rows[-1]["model"]["params"]["grammar"] == "json_schema" and rows[-1]["surface"] == "support_chat"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "x", "tools": [{"type": "function", "name": "f", "parameters": {}}]}, "tools"),
        ({"input": "x", "previous_response_id": "resp_1"}, "previous_response_id"),
        ({"input": "x", "store": True}, "store"),
        ({"input": "x", "background": True}, "background"),
        ({"input": "x", "reasoning": {"effort": "high"}}, "reasoning"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "data:,"}]}]}, "input.0.content.0"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input.0"),
        ({"input": "x", "tools": [{"type": "web_search"}]}, "tools.0.type"),
        ({"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{no"}]}, "input.0.arguments"),
        ({"input": "x", "text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
        ({"input": "x", "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "strang"}}}}, "text.format"),
        ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": "x", "model": "gpt-17"}, "model"),
        ({"input": [{"role": "system", "content": "only a system message"}]}, "input"),
        ({}, "input"),
    ],
)
def test_what_it_does_not_serve_is_refused_by_name(tiny_server, body: dict, param: str) -> None:
    with tiny_server(engine="tiny") as s:
        r = httpx.post(f"{s.url}/v1/responses", json=body)
        assert r.status_code in (400, 404) and r.json()["error"]["param"] == param, r.text
        assert httpx.post(f"{s.url}/v1/responses", json={"input": "hello", "max_output_tokens": 2}).json()["status"] == "incomplete"
