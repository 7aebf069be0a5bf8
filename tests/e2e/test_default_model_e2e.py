"""`tandem serve` on the embedded default model, driven over a real socket by the official
`openai` client: right answers, 16 batched streams, cancellation, metrics, and no network."""

from __future__ import annotations

import asyncio
import json
from typing import Literal

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from pydantic import BaseModel, Field

from tests.waiting import eventually

pytestmark = pytest.mark.default_model
MODEL = "SmolLM2-135M-Instruct"
# Asked as "What is the capital of France?" the model's first token is a near-tie (0.08 logits in
# fp32 between "The" and "L"): any change of kernel can answer "L'Étoile". Asked so, 1.4 apart.
QUESTION = [{"role": "user", "content": "Name the capital of France."}]


def metrics_text(url: str) -> str:
    return httpx.get(f"{url}/metrics").text


def metric(url: str, name: str) -> float:
    for line in metrics_text(url).splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not exposed")


@pytest.fixture(scope="module")
def client(default_server):  # type: ignore[no-untyped-def]
    url = default_server.url
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)


def test_models_reports_context_quantization_and_fim(default_server) -> None:
    url = default_server.url
    (model,) = httpx.get(f"{url}/v1/models").json()["data"]
    assert model["id"] == MODEL
    assert model["context_length"] == 8192
    assert model["quantization"] == "q4"  # --quant auto on a CPU, for a file of Q4_1 blocks
    assert model["fim"] is False
    assert 150 * 2**20 < model["memory_footprint_bytes"] < 260 * 2**20


def test_chat_answers_a_factual_question(client) -> None:
    out = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=30)
    assert "Paris" in out.choices[0].message.content
    assert out.choices[0].finish_reason == "stop"
    assert out.usage.prompt_tokens > 10 and 0 < out.usage.completion_tokens <= 30


def test_chat_streams_the_same_answer(client) -> None:
    chunks = list(client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=30, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert "Paris" in text
    assert len([c for c in chunks if c.choices[0].delta.content]) > 3  # it really streamed
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_completion_continues_text(client) -> None:
    out = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0)
    assert "Paris" in out.choices[0].text
    streamed = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == out.choices[0].text


def test_sixteen_concurrent_streams_are_batched_together(default_server) -> None:
    url = default_server.url
    aclient = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300)
    topics = [
        "the sea",
        "a cat",
        "winter",
        "coffee",
        "trains",
        "the moon",
        "music",
        "a garden",
        "mountains",
        "rain",
        "books",
        "the city",
        "bread",
        "friendship",
        "autumn",
        "stars",
    ]

    async def one(topic: str) -> tuple[str, str | None]:
        stream = await aclient.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"Write a poem about {topic}."}], temperature=0, max_tokens=40, stream=True
        )
        parts, finish = [], None
        async for chunk in stream:
            parts.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        return "".join(parts), finish

    async def run() -> list[tuple[str, str | None]]:
        try:
            return await asyncio.gather(*(one(t) for t in topics))
        finally:
            await aclient.close()

    results = asyncio.run(run())
    assert all(text and finish in ("stop", "length") for text, finish in results)
    # the engine's own record: one decode step ran with all sixteen in the batch
    assert metric(url, "tandem_batch_size_peak") >= 16
    # through the engine's own step (the tests' servers keep it eager: TANDEM_COMPILE=0)
    assert metric(url, 'tandem_decode_step_info{step="eager"}') == 1


def test_a_cancelled_stream_frees_its_slot(default_server, client) -> None:
    url = default_server.url
    before = _cancelled(url)
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Tell me a very long story."}], max_tokens=2000, stream=True
    )
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    eventually(lambda: _cancelled(url) >= before + 1, "the generation stopping after the client left", 20)
    assert metric(url, "tandem_requests_running") == 0


def _cancelled(url: str) -> float:
    for line in metrics_text(url).splitlines():
        if line.startswith('tandem_requests_finished_total{reason="cancelled"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_bad_inputs_on_the_real_model(client, default_server) -> None:
    url = default_server.url
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=QUESTION)
    with pytest.raises(openai.BadRequestError, match="context"):
        client.completions.create(model=MODEL, prompt="lorem ipsum " * 5000, max_tokens=1)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL, prompt="x", max_tokens=0)
    r = httpx.post(f"{url}/v1/chat/completions", content=b"\xff\xfe{", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_encoding"
    assert (
        "Paris" in client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=20).choices[0].message.content
    )


def test_metrics_are_exposed(default_server, client) -> None:
    url = default_server.url
    client.completions.create(model=MODEL, prompt="Hello", max_tokens=4)
    text = metrics_text(url)
    for name in [
        "tandem_time_to_first_token_seconds_bucket",
        "tandem_inter_token_latency_seconds_bucket",
        "tandem_request_queue_time_seconds_bucket",
        "tandem_requests_running",
        "tandem_requests_waiting",
        "tandem_batch_size_bucket",
        "tandem_generation_tokens_total",
        "tandem_prefix_cache_hits_total",
        "tandem_model_memory_bytes",
    ]:
        assert name in text, name
    assert metric(url, "tandem_generation_tokens_total") > 0
    assert metric(url, "tandem_time_to_first_token_seconds_count") > 0


def test_logprobs_agree_with_the_greedy_choice_and_with_scoring_the_answer_again(default_server, client) -> None:
    """Each token of a greedy answer is the likeliest of its alternatives, and the answer's
    logprobs as it was decoded are what the prompt's own logprobs say when the answer is sent
    back as part of the prompt (one prefill pass, against the decode steps)."""
    url = default_server.url
    out = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=12, temperature=0, logprobs=True, top_logprobs=3)
    content = out.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content and "".join(t.token for t in content) == out.choices[0].message.content
    for t in content:
        assert t.top_logprobs[0].token == t.token and t.top_logprobs[0].logprob == pytest.approx(t.logprob, abs=1e-6)
    prompt = httpx.post(f"{url}/tokenize", json={"messages": QUESTION}).json()["tokens"]
    answer = httpx.post(
        f"{url}/tokenize", json={"prompt": out.choices[0].message.content, "add_special_tokens": False, "return_token_strs": True}
    ).json()
    assert answer["token_strs"] == [t.token for t in content]  # the answer's own tokens
    echoed = httpx.post(
        f"{url}/v1/completions", json={"prompt": prompt + answer["tokens"], "max_tokens": 0, "echo": True, "logprobs": 0}
    ).json()["choices"][0]["logprobs"]["token_logprobs"][len(prompt) :]
    # (equal up to the rounding of the quantized weights' prefill and decode kernels, which differ)
    assert echoed == pytest.approx([t.logprob for t in content], abs=1e-2)
    assert sum(echoed) == pytest.approx(sum(t.logprob for t in content), abs=3e-2)


def test_three_answers_come_from_one_prefill(default_server, client) -> None:
    url = default_server.url
    computed = lambda: metric(url, "tandem_prefill_tokens_total") + metric(url, "tandem_prefix_cache_reused_tokens_total")  # noqa: E731
    before = computed()
    out = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Write one sentence about the sea."}],
        max_tokens=10,
        n=3,
        temperature=0.9,
        seed=3,
    )
    assert [c.index for c in out.choices] == [0, 1, 2] and all(c.message.content for c in out.choices)
    assert len({c.message.content for c in out.choices}) > 1
    assert out.usage is not None and computed() - before == out.usage.prompt_tokens  # the prompt once, not three times


class Capital(BaseModel):
    country: str = Field(max_length=40)
    capital: str = Field(max_length=40)
    continent: Literal["Africa", "Asia", "Europe", "North America", "South America", "Oceania", "Antarctica"]
    population_millions: int = Field(ge=0, le=10000)  # (bounded: a small model, free to, writes digits until max_tokens)


def test_parse_gives_a_validated_object_twenty_times_out_of_twenty(client) -> None:
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Describe the capital of France as JSON."}]
    answers = []
    for seed in range(20):
        out = client.chat.completions.parse(
            model=MODEL, messages=messages, response_format=Capital, temperature=0.7, seed=seed, max_tokens=120
        )
        assert isinstance(out.choices[0].message.parsed, Capital), out.choices[0].message.content
        answers.append(out.choices[0].message.parsed)
    assert sum(a.capital == "Paris" for a in answers) >= 10  # and, constrained, the small model still knows it
    anything = client.chat.completions.create(
        model=MODEL, messages=messages, response_format={"type": "json_object"}, temperature=0, max_tokens=200
    )
    assert isinstance(json.loads(anything.choices[0].message.content or ""), dict)


def test_the_server_made_no_connection_off_this_machine(default_server, client) -> None:
    guard_log = default_server.guard_log
    client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4)
    assert guard_log.read_text() == ""
