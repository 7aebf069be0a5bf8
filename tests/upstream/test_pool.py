"""The gateway in front of a pool of upstreams, each made to fail in the ways real ones do:
routing, affinity, failover before the first token, an explicit error after it, timeouts,
garbage, saturation, health and recovery, cancellation. The upstreams are scripted servers on
real sockets (tests/upstream/scripted_upstream.py); test_llama_cpp.py runs real engines."""

from __future__ import annotations

import json
import random
import string
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.backends.upstream import base_url
from server.backends.upstream.upstream import UpstreamError, _read_event, _read_infill_event
from tests.conftest import metric
from tests.dialog_client import Chat
from tests.gateway.test_gateway import records
from tests.waiting import eventually


def chat(url: str, text: str = "Hello?", stream: bool = False, user: str | None = None, **extra: object) -> httpx.Response:
    body: dict[str, object] = {"messages": [{"role": "user", "content": text}], "max_tokens": 8, "stream": stream, **extra}
    if user:
        body["user"] = user
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)


def sse_events(response: httpx.Response) -> list[dict]:
    return [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")]


def up_state(gateway_url: str, upstream_url: str) -> float:
    return metric(gateway_url, "tandem_upstream_up", f'upstream="{upstream_url}"')


# --- serving through the pool ----------------------------------------------------------------------


def test_answers_arrive_guarded_audited_and_named(scripted, pool_gateway) -> None:
    """Chat and completions through the OpenAI client: the upstream gets the guarded prompt (a
    secret redacted before it leaves), the client gets the upstream's text with a secret in it
    redacted, and each call leaves an audit record naming the upstream's model."""
    a = scripted("a")
    alnum = string.ascii_letters + string.digits
    key = "ghp_" + "".join(random.choices(alnum, k=36))  # fresh each run
    leaked = "sk-ant-api03-" + "".join(random.choices(alnum, k=93)) + "AA"
    a.pieces = ["Your key is ", leaked, " ok."]
    with pool_gateway([a.url]) as g:
        client = openai.OpenAI(base_url=f"{g.url}/v1", api_key="unused")
        models = client.models.list().data
        assert [m.id for m in models] == ["scripted-model"]
        info = httpx.get(f"{g.url}/v1/models").json()["data"][0]
        assert info["backend"] == "upstream" and info["context_length"] == 4096 and info["token_count"] == "upstream"
        answer = client.chat.completions.create(
            model="scripted-model", messages=[{"role": "user", "content": f"my key {key}"}], max_tokens=8
        )
        text = answer.choices[0].message.content or ""
        assert text.startswith("Your key is ") and leaked not in text and "sk-ant" not in text and text.endswith(" ok.")
        assert answer.usage is not None and answer.usage.completion_tokens == 3 and answer.usage.prompt_tokens == 7
        sent = a.requests[-1]
        assert key not in json.dumps(sent) and sent["messages"][-1]["role"] == "user" and sent["model"] == "scripted-model"
        streamed = client.completions.create(model="scripted-model", prompt="def add(a, b):", max_tokens=8, stream=True)
        assert "".join(c.choices[0].text for c in streamed if c.choices).startswith("Your key is ")
        assert a.requests[-1]["prompt"] == "def add(a, b):"
        rows = records(g.audit_dir, 2)
        assert {r["model"]["name"] for r in rows} == {"scripted-model"}
        assert all(r["outcome"]["status"] == "ok" for r in rows)
        assert not any(key in json.dumps(r) for r in rows)
        assert metric(g.url, "tandem_upstream_requests_total", f'outcome="ok",upstream="{a.url}"') == 2


def test_least_outstanding_spreads_concurrent_streams_and_affinity_keeps_a_conversation(scripted, pool_gateway) -> None:
    a, b = scripted("a"), scripted("b")
    for up in (a, b):
        up.delay = 0.3
    with pool_gateway([a.url, b.url]) as g:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda i: chat(g.url, f"question {i}"), range(8)))
        assert all(r.status_code == 200 for r in answers)
        assert len(a.requests) == len(b.requests) == 4  # least outstanding: never two on one while the other is idle
        for up in (a, b):
            up.delay = 0.0
        homes = set()
        for i in range(6):  # one visitor's conversation: the same upstream every time (its prefix cache)
            before = (len(a.requests), len(b.requests))
            assert chat(g.url, f"turn {i}", user="visitor-7").status_code == 200
            homes.add("a" if len(a.requests) > before[0] else "b")
        assert len(homes) == 1
        docs = set()
        for i in range(6):  # one document's completions (the language server sends a hash of its URI): one upstream
            before = (len(a.requests), len(b.requests))
            r = httpx.post(
                f"{g.url}/v1/completions", json={"prompt": f"x = {i}", "max_tokens": 4}, headers={"X-Tandem-Affinity": "doc-9f3a"}
            )
            assert r.status_code == 200
            docs.add("a" if len(a.requests) > before[0] else "b")
        assert len(docs) == 1
        others = set()
        for i in range(20):  # and different visitors spread (all 20 on one: a chance in half a million)
            served_by_a = len(a.requests)
            chat(g.url, "hi", user=f"visitor-{i}-{random.random()}")
            others.add("a" if len(a.requests) > served_by_a else "b")
        assert others == {"a", "b"}


# --- failures before the first token: retried once, elsewhere ---------------------------------------


@pytest.mark.parametrize("mode", ["error500", "garbage", "not_sse", "hang", "cut0"])
def test_a_failure_before_the_first_token_is_retried_on_another_upstream(scripted, pool_gateway, mode) -> None:
    a, b = scripted("a"), scripted("b")
    a.mode, a.cut_after = ("cut", 0) if mode == "cut0" else (mode, 2)
    with pool_gateway([a.url, b.url], read_timeout=1.0) as g:
        for _ in range(2):  # whichever of the two the first lands on
            r = chat(g.url, "hello", stream=True)
            assert r.status_code == 200
            assert "".join(e["choices"][0]["delta"].get("content", "") for e in sse_events(r) if e.get("choices")) == "Hello from b."
            assert not any("error" in e for e in sse_events(r))
        assert len(b.requests) == 2 and len(a.requests) >= 1
        assert metric(g.url, "tandem_upstream_retries_total") >= 1
        assert metric(g.url, "tandem_upstream_failures_total", f'upstream="{a.url}"') >= 1
        rows = records(g.audit_dir, 2)
        assert [r["outcome"]["status"] for r in rows] == ["ok", "ok"]  # nothing duplicated, nothing lost


def test_a_failure_after_text_went_out_ends_with_an_explicit_error_and_is_not_retried(scripted, pool_gateway) -> None:
    a, b = scripted("a"), scripted("b")
    for up in (a, b):
        up.mode, up.cut_after = "cut", 2
    with pool_gateway([a.url, b.url]) as g:
        r = chat(g.url, "hello", stream=True)
        events = sse_events(r)
        text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e.get("choices"))
        assert text and "Hello from".startswith(text)  # what went out (the output guard may hold a piece back), once
        assert events[-1]["error"]["code"] == "upstream_failed" and "incomplete" in events[-1]["error"]["message"]
        assert len(a.requests) + len(b.requests) == 1  # never a second answer
        whole = chat(g.url, "hello")  # not streamed: the same failure is a 502
        assert whole.status_code == 502 and whole.json()["error"]["code"] == "upstream_failed"
        row = records(g.audit_dir, 2)[0]
        assert row["outcome"]["status"] == "error" and row["outcome"]["error_code"] == "upstream_failed"
        for up in (a, b):
            up.mode = "ok"
        eventually(lambda: chat(g.url, "again").status_code == 200, "the pool serving again once the upstreams behave", 20)


def test_every_upstream_failing_gives_clear_errors_and_the_gateway_keeps_serving(scripted, pool_gateway) -> None:
    a, b = scripted("a"), scripted("b")
    with pool_gateway([a.url, b.url], read_timeout=1.0) as g:
        for mode, status in (("error500", 502), ("garbage", 502), ("not_sse", 502), ("hang", 502)):
            a.mode = b.mode = mode
            r = chat(g.url, "hello")
            if r.status_code == 503:  # both already out of the rotation from the previous round
                assert r.json()["error"]["code"] == "engine_unavailable" and int(r.headers["retry-after"]) >= 1
            else:
                assert r.status_code == status, (mode, r.text)
                assert r.json()["error"]["code"] == "upstream_failed" and r.json()["error"]["message"]
            a.mode = b.mode = "ok"
            eventually(lambda: chat(g.url, "ok?").status_code == 200, f"serving again after {mode}", 20)
        assert httpx.get(f"{g.url}/healthz").status_code == 200


def test_a_request_the_upstream_refuses_is_the_callers_error_and_not_retried(scripted, pool_gateway) -> None:
    a, b = scripted("a"), scripted("b")
    a.mode = b.mode = "error400"
    with pool_gateway([a.url, b.url]) as g:
        r = chat(g.url, "hello")
        assert r.status_code == 400 and "max_tokens is too large (scripted)" in r.json()["error"]["message"]
        assert len(a.requests) + len(b.requests) == 1
        assert up_state(g.url, a.url) == up_state(g.url, b.url) == 1  # the request was wrong, not the upstream


def test_openais_sampling_fields_reach_the_upstream_and_what_a_pool_cannot_honour_is_refused_by_name(scripted, pool_gateway) -> None:
    a = scripted("a")
    with pool_gateway([a.url]) as g:
        body = {
            "messages": [{"role": "user", "content": "hi"}],
            "presence_penalty": 0.5,
            "frequency_penalty": 0.25,
            "logit_bias": {"42": -100},
        }
        assert httpx.post(f"{g.url}/v1/chat/completions", json=body).status_code == 200
        sent = a.requests[-1]
        assert sent["presence_penalty"] == 0.5 and sent["frequency_penalty"] == 0.25 and sent["logit_bias"] == {"42": -100.0}
        for field, value in (("logprobs", True), ("n", 2), ("repetition_penalty", 1.2), ("min_tokens", 2), ("stop_token_ids", [3])):
            r = httpx.post(f"{g.url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], field: value})
            assert r.status_code == 400 and r.json()["error"]["param"] == field, (field, r.text)
            assert "upstream" in r.json()["error"]["message"]
        r = httpx.post(f"{g.url}/v1/completions", json={"prompt": "hi", "echo": True})
        assert r.status_code == 400 and r.json()["error"]["param"] == "echo"
        assert len(a.requests) == 1  # nothing refused went out


# --- health, backoff and recovery ---------------------------------------------------------------------


def test_an_upstream_that_fails_its_checks_leaves_the_rotation_and_comes_back(scripted, pool_gateway) -> None:
    a, b = scripted("a"), scripted("b")
    with pool_gateway([a.url, b.url]) as g:
        eventually(lambda: up_state(g.url, a.url) == up_state(g.url, b.url) == 1, "both upstreams up")
        a.healthy = False
        eventually(lambda: up_state(g.url, a.url) == 0, "a out of the rotation")
        before = len(a.requests)
        for _ in range(4):
            assert chat(g.url, "hi").status_code == 200
        assert len(a.requests) == before  # routed around it
        health = httpx.get(f"{g.url}/healthz").json()
        assert [u["up"] for u in health["upstreams"]] == [False, True] and health["status"] == "ok"
        b.healthy = False
        eventually(lambda: up_state(g.url, b.url) == 0, "b out too")
        r = chat(g.url, "hi")
        assert r.status_code == 503 and r.json()["error"]["code"] == "engine_unavailable" and "retry-after" in r.headers
        assert httpx.get(f"{g.url}/healthz").status_code == 503
        a.healthy = b.healthy = True
        eventually(lambda: up_state(g.url, a.url) == up_state(g.url, b.url) == 1, "both back after their backoff")
        assert chat(g.url, "hi").status_code == 200


def test_an_upstream_too_busy_to_answer_its_check_stays_while_it_serves_and_leaves_when_idle(scripted, pool_gateway) -> None:
    """A server that takes one request at a time answers a health check only after the requests
    queued before it: a check that times out while it streams to us does not take it out."""
    a = scripted("a")
    a.pieces = [f"line {i}\n" for i in range(30)]
    a.delay = 0.1
    with pool_gateway([a.url], health_timeout=0.3) as g:
        a.health_open.clear()
        answer = chat(g.url, "a long one", max_tokens=30)
        assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"].count("line") == 30
        assert up_state(g.url, a.url) == 1 and metric(g.url, "tandem_upstream_failures_total") == 0
        eventually(lambda: up_state(g.url, a.url) == 0, "a slow check with nothing in flight taking it out")
        a.health_open.set()
        eventually(lambda: up_state(g.url, a.url) == 1, "back once it answers")


def test_a_busy_upstream_is_not_taken_out_and_saturation_answers_retry_after(scripted, pool_gateway) -> None:
    a, b = scripted("a"), scripted("b")
    a.mode = "busy429"
    with pool_gateway([a.url, b.url], max_concurrency=1, max_waiting=0) as g:
        for _ in range(2):
            assert chat(g.url, "hi").status_code == 200  # a said 429: retried on b
        assert up_state(g.url, a.url) == 1  # busy is not down
        a.mode = "ok"
        a.delay = b.delay = 0.5
        with ThreadPoolExecutor(2) as pool:
            running = [pool.submit(chat, g.url, f"long {i}") for i in range(2)]
            eventually(lambda: a.streaming + b.streaming == 2, "both upstreams busy")
            r = chat(g.url, "one more")
            assert r.status_code == 503 and r.json()["error"]["code"] == "overloaded" and int(r.headers["retry-after"]) >= 1
            assert all(f.result().status_code == 200 for f in running)
        assert metric(g.url, "tandem_upstream_saturated_total") >= 1


def test_requests_beyond_the_slots_wait_for_one_instead_of_failing(scripted, pool_gateway) -> None:
    a = scripted("a")
    a.delay = 0.2
    with pool_gateway([a.url], max_concurrency=2, max_waiting=8) as g:
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda i: chat(g.url, f"q{i}"), range(6)))
        assert [r.status_code for r in answers] == [200] * 6
        assert len(a.requests) == 6


# --- cancellation -----------------------------------------------------------------------------------


def test_a_client_that_leaves_closes_the_upstream_stream(scripted, pool_gateway) -> None:
    a = scripted("a")
    a.pieces = [f"Line {i} of the answer.\n" for i in range(200)]  # (whole lines: the output guard lets them through at once)
    a.delay = 0.05
    with pool_gateway([a.url]) as g:
        body = {"messages": [{"role": "user", "content": "tell me everything"}], "max_tokens": 200, "stream": True}
        with httpx.stream("POST", f"{g.url}/v1/chat/completions", json=body, timeout=30) as r:
            for line in r.iter_lines():
                if "Line 2 of" in line:
                    break
        eventually(lambda: a.closed_early == 1 and a.streaming == 0, "the upstream's stream closed when the client left", 10)
        eventually(lambda: metric(g.url, "tandem_upstream_outstanding", f'upstream="{a.url}"') == 0, "the slot freed")
        assert metric(g.url, "tandem_upstream_requests_total", 'outcome="cancelled"') == 1
        row = records(g.audit_dir, 1)[0]
        assert row["outcome"]["status"] == "cancelled"


# --- counting without the weights ---------------------------------------------------------------------


def test_a_long_conversation_is_fitted_with_the_upstreams_own_counts(scripted, pool_gateway) -> None:
    """No tokenizer here: the support chat's window is fitted with the upstream's /tokenize counts,
    the oldest turns dropped and the system prompt and newest message kept."""
    a = scripted("a", context_length=600)  # 256 of it for the answer
    with pool_gateway([a.url]) as g, Chat(g.url) as visitor:
        for i in range(5):
            answer, frames = visitor.ask(f"question {i}: " + "word " * 60)  # about 70 tokens a turn by its count
            assert answer == "Hello from a." and frames[-1]["type"] == "done"
        sent = a.requests[-1]["messages"]
        assert sent[0]["role"] == "system" and sent[-1]["content"].startswith("question 4:")
        assert 3 <= len(sent) < 1 + 2 * 4 + 1  # some earlier turns dropped, the newest kept
        assert not any(m["content"].startswith("question 0:") for m in sent)
        row = records(g.audit_dir, 5)[-1]
        assert row["prompt"]["context"]["turns_dropped"] > 0 and row["prompt"]["context"]["window"] == 600


def test_without_a_tokenize_endpoint_the_count_is_a_stated_estimate(scripted, pool_gateway) -> None:
    a = scripted("a")
    a.tokenize = False
    with pool_gateway([a.url]) as g:
        assert httpx.get(f"{g.url}/v1/models").json()["data"][0]["token_count"] == "estimate"
        assert chat(g.url, "hi").status_code == 200


def test_fill_in_the_middle_goes_to_an_upstream_that_does_it_and_is_refused_otherwise(scripted, pool_gateway) -> None:
    a = scripted("a")
    with pool_gateway([a.url]) as g:
        r = httpx.post(f"{g.url}/v1/completions", json={"prompt": "def f(", "suffix": "\n", "max_tokens": 4})
        assert r.status_code == 400 and r.json()["error"]["param"] == "suffix"
    a.fim = True
    with pool_gateway([a.url]) as g:
        r = httpx.post(f"{g.url}/v1/completions", json={"prompt": "def f(", "suffix": "\n    return x\n", "max_tokens": 4})
        assert r.status_code == 200
        assert a.requests[-1]["prompt"] == "def f(" and a.requests[-1]["suffix"] == "\n    return x\n"


def test_llama_cpps_own_infill_fills_the_gap_and_a_model_without_fim_tokens_is_refused(scripted, pool_gateway) -> None:
    a = scripted("a")
    a.llama_cpp = True
    with pool_gateway([a.url]) as g:
        assert httpx.get(f"{g.url}/v1/models").json()["data"][0]["fim"] is True
        gap = {"prompt": "def f(", "suffix": "\n    return x\n", "max_tokens": 3, "temperature": 0}
        r = httpx.post(f"{g.url}/v1/completions", json=gap)
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        assert choice["text"] == "Hello from a" and choice["finish_reason"] == "length"
        assert a.paths[-1] == "/infill"
        assert {k: a.requests[-1][k] for k in ("input_prefix", "input_suffix", "n_predict", "stream")} == {
            "input_prefix": "def f(", "input_suffix": "\n    return x\n", "n_predict": 3, "stream": True,
        }  # fmt: skip
        streamed = httpx.post(f"{g.url}/v1/completions", json={**gap, "max_tokens": 8, "stream": True}, timeout=30)
        events = sse_events(streamed)
        assert "".join(e["choices"][0]["text"] for e in events if e.get("choices")) == "Hello from a."
        assert [e["choices"][0]["finish_reason"] for e in events if e.get("choices")][-1] == "stop"
        assert chat(g.url).status_code == 200 and a.paths[-1] == "/v1/chat/completions"  # a chat is still a chat
    a.fim_tokens = False  # llama.cpp's server on a model without FIM tokens: /infill answers 501
    with pool_gateway([a.url]) as g:
        assert httpx.get(f"{g.url}/v1/models").json()["data"][0]["fim"] is False
        r = httpx.post(f"{g.url}/v1/completions", json={"prompt": "def f(", "suffix": "\n", "max_tokens": 4})
        assert r.status_code == 400 and r.json()["error"]["param"] == "suffix"


def test_in_a_mixed_pool_a_gap_goes_only_to_the_upstreams_that_fill_it(scripted, pool_gateway) -> None:
    a, b = scripted("a"), scripted("b")
    a.llama_cpp = True  # b is a plain OpenAI server (vLLM has no suffix)
    with pool_gateway([a.url, b.url]) as g:
        with ThreadPoolExecutor(6) as pool:
            gaps = list(
                pool.map(
                    lambda i: httpx.post(
                        f"{g.url}/v1/completions", json={"prompt": f"x{i} = (", "suffix": ")\n", "max_tokens": 2}, timeout=30
                    ),
                    range(6),
                )
            )
            chats = list(pool.map(lambda i: chat(g.url, f"question {i}"), range(6)))
        assert [r.status_code for r in gaps + chats] == [200] * 12
        assert a.paths.count("/infill") == 6 and "/infill" not in b.paths and not any("suffix" in body for body in b.requests)
        assert b.paths.count("/v1/chat/completions") >= 1  # chats still spread over both


# --- the parsers ---------------------------------------------------------------------------------------


@given(st.text(max_size=300))
def test_any_event_text_is_read_or_refused_as_the_upstreams_fault(data: str) -> None:
    for chat_event in (True, False):
        try:
            text, reason, usage = _read_event(data, chat_event)
        except UpstreamError as exc:
            assert exc.retryable and exc.kind in ("protocol", "stream_error")
        else:
            assert isinstance(text, str) and (reason is None or isinstance(reason, str))


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=10),
        lambda c: st.lists(c) | st.dictionaries(st.text(max_size=8), c),
        max_leaves=20,
    )
)
def test_any_json_event_is_read_or_refused_as_the_upstreams_fault(value: object) -> None:
    for shape in (value, {"choices": value}, {"choices": [value]}, {"choices": [{"delta": value, "text": value, "finish_reason": value}]}):
        try:
            _read_event(json.dumps(shape), True)
            _read_event(json.dumps(shape), False)
        except UpstreamError as exc:
            assert exc.retryable


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=10),
        lambda c: st.lists(c) | st.dictionaries(st.sampled_from(["content", "stop", "stop_type", "error", "tokens_predicted", "x"]), c),
        max_leaves=20,
    )
)
def test_any_llama_cpp_infill_event_is_read_or_refused_as_the_upstreams_fault(value: object) -> None:
    try:
        text, reason, _ = _read_infill_event(json.dumps(value))
    except UpstreamError as exc:
        assert exc.retryable
    else:
        assert isinstance(text, str) and reason in (None, "stop", "length")


@pytest.mark.parametrize(
    ("given_url", "base"),
    [
        ("http://10.0.0.5:8000/v1", "http://10.0.0.5:8000"),
        ("http://gpu-box:8000/v1/", "http://gpu-box:8000"),
        ("https://llm.example/openai/v1", "https://llm.example/openai"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
    ],
)
def test_upstream_urls_are_read_with_or_without_v1(given_url: str, base: str) -> None:
    assert base_url(given_url) == base


@pytest.mark.parametrize("bad", ["", "gpu-box:8000", "ftp://x/v1", "http://", "file:///etc/passwd"])
def test_an_upstream_url_that_is_not_http_is_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        base_url(bad)


def test_concurrent_clients_on_both_sides_of_a_failure_lose_nothing(scripted, pool_gateway) -> None:
    """Race: 12 clients while one upstream starts failing before its first token (from its third
    request on): every request gets a whole answer, each answer once."""
    a, b = scripted("a"), scripted("b")
    a.delay = b.delay = 0.05
    a.fail_from = 3
    with pool_gateway([a.url, b.url], max_concurrency=4) as g:
        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(lambda i: chat(g.url, f"q{i}"), range(12)))
        texts = [r.json()["choices"][0]["message"]["content"] for r in answers]
        assert all(t in ("Hello from a.", "Hello from b.") for t in texts), texts
        rows = records(g.audit_dir, 12)
        assert len(rows) == 12 and all(r["outcome"]["status"] == "ok" for r in rows)
