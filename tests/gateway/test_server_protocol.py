"""The HTTP server on a real socket, with the tiny model: every bad input, auth, overload,
fill-in-the-middle and client disconnects. The default-model end-to-end tests are elsewhere."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from server.backends.tokenizer_text import fim_prompt_ids
from tests.conftest import ROOT, tiny_llama
from tests.waiting import eventually


def metric(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"metric {name} not exposed")


def assert_error(response: httpx.Response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"]
    if param is not None:
        assert error["param"] == param
    return error


def still_serving(url: str) -> None:
    r = httpx.post(f"{url}/v1/completions", json={"prompt": "hello", "max_tokens": 3, "temperature": 0})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3


BAD_BODIES = [
    # (description, endpoint, raw body, status, param)
    ("malformed JSON", "completions", b'{"prompt": "x", ', 400, None),
    ("not an object", "completions", b'["x"]', 400, None),
    ("not UTF-8", "completions", b'{"prompt": "caf\xe9"}', 400, None),
    ("max_tokens is a string", "completions", json.dumps({"prompt": "x", "max_tokens": "ten"}).encode(), 400, "max_tokens"),
    ("prompt is a number", "completions", json.dumps({"prompt": 5}).encode(), 400, "prompt.str"),
    (
        "stream is a string",
        "chat/completions",
        json.dumps({"messages": [{"role": "user", "content": "x"}], "stream": "yes"}).encode(),
        400,
        "stream",
    ),
    ("messages missing", "chat/completions", json.dumps({"model": "tiny-llama"}).encode(), 400, "messages"),
    ("messages empty", "chat/completions", json.dumps({"messages": []}).encode(), 400, "messages"),
    ("unknown role", "chat/completions", json.dumps({"messages": [{"role": "wizard", "content": "x"}]}).encode(), 400, None),
    ("max_tokens 0", "completions", json.dumps({"prompt": "x", "max_tokens": 0}).encode(), 400, "max_tokens"),
    (
        "max_tokens 0, empty prompt",
        "completions",
        json.dumps({"prompt": "", "max_tokens": 0}).encode(),
        400,
        "max_tokens",
    ),  # (found by the fuzz test)
    (
        "max_tokens 0, two answers",
        "completions",
        json.dumps({"prompt": "x", "max_tokens": 0, "echo": True, "n": 2}).encode(),
        400,
        "max_tokens",
    ),
    (
        "max_tokens negative",
        "chat/completions",
        json.dumps({"messages": [{"role": "user", "content": "x"}], "max_tokens": -3}).encode(),
        400,
        "max_tokens",
    ),
    ("max_tokens beyond context", "completions", json.dumps({"prompt": "x", "max_tokens": 100_000}).encode(), 400, "max_tokens"),
    ("prompt longer than context", "completions", json.dumps({"prompt": "word " * 2000, "max_tokens": 1}).encode(), 400, "prompt"),
    (
        "chat longer than context",
        "chat/completions",
        json.dumps({"messages": [{"role": "user", "content": "word " * 2000}]}).encode(),
        400,
        "prompt",
    ),
    ("unknown model", "completions", json.dumps({"model": "gpt-17", "prompt": "x"}).encode(), 404, "model"),
    ("n beyond 16", "completions", json.dumps({"prompt": "x", "n": 17}).encode(), 400, "n"),
    ("best_of below n", "completions", json.dumps({"prompt": "x", "n": 3, "best_of": 2}).encode(), 400, "best_of"),
    ("best_of streamed", "completions", json.dumps({"prompt": "x", "best_of": 2, "stream": True}).encode(), 400, "best_of"),
    ("logprobs beyond 20", "completions", json.dumps({"prompt": "x", "logprobs": 21}).encode(), 400, "logprobs"),
    (
        "top_logprobs without logprobs",
        "chat/completions",
        json.dumps({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}).encode(),
        400,
        "top_logprobs",
    ),
    (
        "an image part",
        "chat/completions",
        json.dumps({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}]}).encode(),
        400,
        "messages.0.content.0",
    ),
    (
        "an audio part",
        "chat/completions",
        json.dumps(
            {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}]}
        ).encode(),
        400,
        "messages.0.content.0",
    ),
    ("logit_bias key not a token id", "completions", json.dumps({"prompt": "x", "logit_bias": {"hello": 5}}).encode(), 400, "logit_bias"),
    ("logit_bias value beyond 100", "completions", json.dumps({"prompt": "x", "logit_bias": {"5": 101}}).encode(), 400, "logit_bias"),
    (
        "logit_bias token beyond the vocabulary",
        "completions",
        json.dumps({"prompt": "x", "logit_bias": {"99999999": 1}}).encode(),
        400,
        "logit_bias",
    ),
    ("presence_penalty beyond 2", "completions", json.dumps({"prompt": "x", "presence_penalty": 2.5}).encode(), 400, "presence_penalty"),
    ("repetition_penalty 0", "completions", json.dumps({"prompt": "x", "repetition_penalty": 0}).encode(), 400, "repetition_penalty"),
    (
        "min_tokens beyond max_tokens",
        "completions",
        json.dumps({"prompt": "x", "max_tokens": 2, "min_tokens": 3}).encode(),
        400,
        "min_tokens",
    ),
    (
        "stop_token_ids beyond the vocabulary",
        "completions",
        json.dumps({"prompt": "x", "stop_token_ids": [99999999]}).encode(),
        400,
        "stop_token_ids",
    ),
    ("temperature out of range", "completions", json.dumps({"prompt": "x", "temperature": 9.5}).encode(), 400, "temperature"),
    ("too many stops", "completions", json.dumps({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}).encode(), 400, "stop"),
    ("token id out of vocabulary", "completions", json.dumps({"prompt": [1, 2, 99_999_999]}).encode(), 400, "prompt"),
    ("suffix without FIM tokens", "completions", json.dumps({"prompt": "def f(", "suffix": "):"}).encode(), 400, "suffix"),
]


def test_every_bad_input_gets_a_clear_4xx_and_the_server_keeps_serving(tiny_server) -> None:
    with tiny_server(engine="tiny") as s:
        for description, endpoint, body, status, param in BAD_BODIES:
            r = httpx.post(f"{s.url}/v1/{endpoint}", content=body, headers={"Content-Type": "application/json"})
            assert r.status_code == status, f"{description}: {r.status_code} {r.text}"
            assert_error(r, status, param)
        assert_error(httpx.get(f"{s.url}/v1/nowhere"), 404)
        assert_error(httpx.get(f"{s.url}/v1/completions"), 405)
        still_serving(s.url)


def test_openai_client_sees_typed_errors(tiny_server) -> None:
    with tiny_server(engine="tiny") as s:
        client = openai.OpenAI(base_url=f"{s.url}/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.NotFoundError):
            client.completions.create(model="no-such-model", prompt="x")
        with pytest.raises(openai.BadRequestError, match="context"):
            client.completions.create(model="tiny-llama", prompt="word " * 2000, max_tokens=1)
        out = client.completions.create(model="tiny-llama", prompt="hello", max_tokens=4, temperature=0)
        assert out.usage is not None and out.usage.completion_tokens == 4


def test_api_key_is_required_when_configured(tiny_server) -> None:
    with tiny_server(api_key="s3cret") as s:
        assert httpx.get(f"{s.url}/healthz").status_code == 200  # probes need no key
        assert_error(httpx.get(f"{s.url}/v1/models"), 401)
        assert_error(httpx.get(f"{s.url}/v1/models", headers={"Authorization": "Bearer wrong"}), 401)
        assert_error(httpx.get(f"{s.url}/metrics"), 401)
        ok = httpx.get(f"{s.url}/v1/models", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        client = openai.OpenAI(base_url=f"{s.url}/v1", api_key="s3cret", max_retries=0)
        assert client.models.list().data[0].id == "tiny-llama"


def test_binding_beyond_loopback_requires_an_api_key() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "server.cli", "serve", "--host", "0.0.0.0", "--port", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"},
    )
    assert proc.returncode == 2
    assert "--api-key" in proc.stderr


def slow_tiny_model(tokenizer, seconds_per_step: float = 0.02):  # type: ignore[no-untyped-def]
    """The tiny model, slowed down so that a request stays in the batch long enough to observe."""
    model = tiny_llama(len(tokenizer))
    model.register_forward_hook(lambda *_: time.sleep(seconds_per_step))
    return model


def wait_for_metric(url: str, name: str, value: float, timeout: float = 10) -> None:
    eventually(lambda: metric(url, name) >= value, f"{name} did not reach {value}", timeout)


def test_overloaded_server_answers_503_with_retry_after(tiny_server, tokenizer) -> None:
    with tiny_server(engine="tiny", model=slow_tiny_model(tokenizer), max_batch_size=1, max_waiting=1) as s, ThreadPoolExecutor(2) as pool:
        body = {"prompt": "hello", "max_tokens": 100, "temperature": 0}
        running = pool.submit(httpx.post, f"{s.url}/v1/completions", json=body, timeout=60)
        wait_for_metric(s.url, "tandem_requests_running", 1)
        queued = pool.submit(httpx.post, f"{s.url}/v1/completions", json=body, timeout=60)
        wait_for_metric(s.url, "tandem_requests_waiting", 1)
        refused = httpx.post(f"{s.url}/v1/completions", json={"prompt": "x", "max_tokens": 2})
        err = assert_error(refused, 503)
        assert err["code"] == "overloaded" and "retry after" in err["message"]
        assert int(refused.headers["Retry-After"]) >= 1
        # nothing lost: the running and the queued request both complete
        assert running.result().json()["usage"]["completion_tokens"] == 100
        assert queued.result().json()["usage"]["completion_tokens"] == 100
        assert metric(s.url, "tandem_requests_refused_total") == 1
        still_serving(s.url)


def test_fill_in_the_middle_builds_the_model_family_prompt(tiny_server, tokenizer) -> None:
    fim = ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>")
    tok = type(tokenizer).from_pretrained(tokenizer.name_or_path)
    tok.add_special_tokens({"additional_special_tokens": list(fim)})
    model = tiny_llama(len(tok))
    with tiny_server(engine="tiny", fim=fim, model=model, tok=tok) as s:
        assert httpx.get(f"{s.url}/v1/models").json()["data"][0]["fim"] is True
        r = httpx.post(
            f"{s.url}/v1/completions",
            json={"prompt": "def add(a, b):\n    return ", "suffix": "\n\nprint(add(1, 2))", "max_tokens": 5, "temperature": 0},
        )
        assert r.status_code == 200, r.text
        pre, suf, mid = tok.convert_tokens_to_ids(list(fim))
        expected = [pre, *tok.encode("def add(a, b):\n    return "), suf, *tok.encode("\n\nprint(add(1, 2))"), mid]
        assert fim_prompt_ids(tok, fim, "def add(a, b):\n    return ", "\n\nprint(add(1, 2))") == expected
        assert r.json()["usage"]["prompt_tokens"] == len(expected)
        # control tokens written in the code are code: one hole, whatever the file says
        sent = fim_prompt_ids(tok, fim, "x = '<|fim_suffix|>'\n", "<|fim_middle|>")
        assert (sent.count(pre), sent.count(suf), sent.count(mid)) == (1, 1, 1) and sent[0] == pre and sent[-1] == mid
        r = httpx.post(f"{s.url}/v1/completions", json={"prompt": "x = '<|fim_suffix|>'\n", "suffix": "<|fim_middle|>", "max_tokens": 1})
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["prompt_tokens"] == len(sent)


def test_client_disconnect_mid_stream_cancels_the_generation(tiny_server, tokenizer) -> None:
    with tiny_server(engine="tiny", model=slow_tiny_model(tokenizer)) as s:
        with httpx.stream("POST", f"{s.url}/v1/completions", json={"prompt": "hello", "max_tokens": 240, "stream": True}) as r:
            lines = r.iter_lines()
            for _ in range(3):
                next(lines)
            assert metric(s.url, "tandem_requests_running") == 1
        eventually(lambda: _has_cancelled(s.url), "the generation being cancelled", 10)
        assert metric(s.url, "tandem_requests_running") == 0
        assert metric(s.url, "tandem_generation_tokens_total") < 100
        still_serving(s.url)


def test_client_disconnect_before_a_whole_answer_cancels_it(tiny_server, tokenizer) -> None:
    with tiny_server(engine="tiny", model=slow_tiny_model(tokenizer)) as s:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{s.url}/v1/completions", json={"prompt": "hello", "max_tokens": 240, "stream": False}, timeout=0.3)
        eventually(lambda: _has_cancelled(s.url), "the generation being cancelled", 10)
        assert metric(s.url, "tandem_requests_running") == 0


@pytest.mark.parametrize("stream", [True, False])
def test_a_queued_request_whose_client_leaves_never_runs(tiny_server, tokenizer, stream: bool) -> None:
    """Disconnect is watched from arrival, not only once tokens flow: a request still waiting for
    a batch slot when its client goes away leaves the queue (an editor cancels most of its
    requests before they start)."""
    with (
        tiny_server(engine="tiny", model=slow_tiny_model(tokenizer, 0.05), max_batch_size=1, max_waiting=4) as s,
        ThreadPoolExecutor(1) as pool,
    ):
        running = pool.submit(
            httpx.post, f"{s.url}/v1/completions", json={"prompt": "hello", "max_tokens": 150, "temperature": 0}, timeout=60
        )
        wait_for_metric(s.url, "tandem_requests_running", 1)
        queued = {"prompt": "a queued prompt", "max_tokens": 150, "stream": stream}
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{s.url}/v1/completions", json=queued, timeout=httpx.Timeout(5, read=0.5))
        eventually(lambda: metric(s.url, "tandem_requests_waiting") == 0, "the queued request stayed in the queue after its client left")
        assert not running.done() and _has_cancelled(s.url)  # it left the queue, it did not run next
        assert running.result().status_code == 200  # the running one is untouched
        assert metric(s.url, "tandem_requests_running") == 0
        still_serving(s.url)


def _has_cancelled(url: str) -> bool:
    return 'tandem_requests_finished_total{reason="cancelled"} 1.0' in httpx.get(f"{url}/metrics").text


def test_stop_and_usage_in_streams(tiny_server) -> None:
    with tiny_server(engine="tiny") as s:
        client = openai.OpenAI(base_url=f"{s.url}/v1", api_key="unused", max_retries=0)
        whole = client.completions.create(model="tiny-llama", prompt="Once upon", max_tokens=12, temperature=0).choices[0].text
        chunks = list(
            client.completions.create(
                model="tiny-llama", prompt="Once upon", max_tokens=12, temperature=0, stream=True, stream_options={"include_usage": True}
            )
        )
        assert "".join(c.choices[0].text for c in chunks if c.choices) == whole
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12
        stop = whole[3:6]
        stopped = client.completions.create(model="tiny-llama", prompt="Once upon", max_tokens=12, temperature=0, stop=[stop])
        assert stopped.choices[0].finish_reason == "stop"
        assert stopped.choices[0].text == whole[: whole.index(stop)]
