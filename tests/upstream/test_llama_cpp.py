"""`tandem serve --upstream` in front of two real llama.cpp servers (llama-cpp-python's, on the
default model's GGUF): the OpenAI client, the support chat's WebSocket and the language server
all served through them, guarded and audited; 16 streams spread over both; one killed mid-run and
started again; a cancelled stream freeing its slot upstream."""

from __future__ import annotations

import json
import random
import string
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest

from server.audit import AuditReader
from tests.conftest import metric
from tests.dialog_client import Chat
from tests.gateway.test_gateway import _all, records
from tests.lsp_client import suggest_once
from tests.upstream.engines import LlamaServer, TandemProcess, llama_server_python
from tests.waiting import eventually

pytestmark = pytest.mark.default_model
MODEL = "SmolLM2-135M-Instruct"
QUESTION = [{"role": "user", "content": "Name the capital of France."}]


@dataclass
class Fleet:
    a: LlamaServer
    b: LlamaServer
    gateway: TandemProcess

    def up(self, server: LlamaServer) -> bool:
        upstreams = httpx.get(f"{self.gateway.url}/healthz", timeout=5).json()["upstreams"]
        return bool(next(u["up"] for u in upstreams if u["url"] == server.url))

    def served(self, server: LlamaServer, outcome: str = "ok") -> float:
        return metric(self.gateway.url, "tandem_upstream_requests_total", f'outcome="{outcome}",upstream="{server.url}"')


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    python = llama_server_python()
    folder = tmp_path_factory.mktemp("fleet")
    a, b = LlamaServer(python, folder, "a"), LlamaServer(python, folder, "b")
    try:
        a.start()
        b.start()
        gateway = TandemProcess(
            folder, "gateway",
            "--upstream", a.url, "--upstream", f"{b.url}/v1",
            "--upstream-tokenizer", "default", "--context-length", "2048",
            "--upstream-health-interval", "0.5", "--upstream-max-concurrency", "8",
        ).wait_ready(120)  # fmt: skip
        try:
            yield Fleet(a, b, gateway)
        finally:
            gateway.stop()
    finally:
        a.stop()
        b.stop()


@pytest.fixture(scope="module")
def client(fleet: Fleet) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{fleet.gateway.url}/v1", api_key="unused", max_retries=0, timeout=120)


def test_the_openai_client_is_answered_through_llama_cpp_guarded_and_audited(fleet: Fleet, client: openai.OpenAI) -> None:
    (model,) = client.models.list().data
    assert model.id == MODEL
    info = httpx.get(f"{fleet.gateway.url}/v1/models").json()["data"][0]
    assert info["backend"] == "upstream" and info["token_count"] == "tokenizer" and info["context_length"] == 2048
    before = len(records(fleet.gateway.audit_dir, 0))  # (other tests' calls, in whatever order the tests run)
    answer = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=24, temperature=0)  # type: ignore[arg-type]
    assert "Paris" in (answer.choices[0].message.content or "")
    assert answer.usage is not None and answer.usage.prompt_tokens > 5 and answer.usage.completion_tokens > 0
    streamed = client.completions.create(model=MODEL, prompt="def add(a, b):\n    return", max_tokens=12, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices).strip()
    secret = "ghp_" + "".join(random.choices(string.ascii_letters + string.digits, k=36))  # fresh: redacted before it is sent or stored
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"my token is {secret}"}], max_tokens=4)
    rows = records(fleet.gateway.audit_dir, before + 3)[before:]
    assert {r["model"]["name"] for r in rows} == {MODEL}
    assert [r["outcome"]["status"] for r in rows[:3]] == ["ok", "ok", "ok"]
    reader = AuditReader(fleet.gateway.audit_dir)
    try:
        contents = [reader.get(str(r["seq"]))["content"] for r in reader.search(_all(), limit=100)]
    finally:
        reader.close()
    assert secret not in json.dumps(contents) and "[REDACTED" in json.dumps(contents)


def test_the_support_chat_is_answered_through_llama_cpp(fleet: Fleet) -> None:
    with Chat(fleet.gateway.url) as visitor:
        answer, frames = visitor.ask("Name the capital of France.")
        assert answer.strip() and frames[-1]["type"] == "done" and frames[-1]["finish_reason"] in ("stop", "length")
        again, _ = visitor.ask("Thank you! And of Italy?")
        assert again.strip()


def test_the_language_server_completes_through_llama_cpp(fleet: Fleet) -> None:
    assert suggest_once(fleet.gateway.url, "file:///work/sums.py", "def add(a, b):\n    return ", 1, 11).strip()
    rows = records(fleet.gateway.audit_dir, 1)
    # ok, or cancelled: the language server stops a generation once it holds the line it shows
    assert any(r["surface"] == "ide_completion" and r["outcome"]["status"] in ("ok", "cancelled") for r in rows)


def test_sixteen_concurrent_streams_spread_over_both_upstreams(fleet: Fleet, client: openai.OpenAI) -> None:
    before = fleet.served(fleet.a), fleet.served(fleet.b)

    def ask(i: int) -> str:
        stream = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"Write one sentence about the number {i}."}], max_tokens=24, stream=True
        )
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, range(16)))
    assert all(a.strip() for a in answers)
    spread = fleet.served(fleet.a) - before[0], fleet.served(fleet.b) - before[1]
    assert sum(spread) == 16 and min(spread) >= 6, spread


def _stream(url: str, i: int) -> dict[str, Any]:
    """One long streamed chat: its text, and how it ended (finish reason or the error event's code)."""
    body = {"messages": [{"role": "user", "content": f"Count from {i} to 500, one number per line."}], "max_tokens": 160, "stream": True}
    text, ended = "", None
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=180) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            if "error" in event:
                ended = event["error"]["code"]
            elif event["choices"]:
                text += event["choices"][0]["delta"].get("content") or ""
                ended = event["choices"][0]["finish_reason"] or ended
    return {"text": text, "ended": ended}


def test_killing_an_upstream_mid_run_loses_nothing_and_it_is_taken_back(fleet: Fleet) -> None:
    a, url = fleet.a, fleet.gateway.url
    first_tokens = lambda: metric(url, "tandem_upstream_first_token_seconds_count", f'upstream="{a.url}"')  # noqa: E731
    started_on_a = first_tokens()
    records_before = len(records(fleet.gateway.audit_dir, 0))
    with ThreadPoolExecutor(8) as pool:
        running = [pool.submit(_stream, url, i) for i in range(8)]
        eventually(lambda: first_tokens() > started_on_a, "an answer streaming from upstream a", 120)
        a.kill()
        results = [f.result() for f in running]
    cut = [r for r in results if r["ended"] == "upstream_failed"]
    whole = [r for r in results if r["ended"] in ("stop", "length")]
    assert len(cut) + len(whole) == 8, results  # each ended one way or the other: nothing silent
    assert 1 <= len(cut)  # the answers that had started on a are cut, explicitly (their text so far, then the error)
    assert len(whole) >= 4  # the rest (queued on a, or on b) complete
    rows = records(fleet.gateway.audit_dir, records_before + 8)[records_before:]
    assert sorted(r["outcome"]["status"] for r in rows) == sorted(["error"] * len(cut) + ["ok"] * len(whole))
    eventually(lambda: not fleet.up(a), "a out of the rotation")
    for i in range(3):  # routed around it
        assert _stream(url, 100 + i)["ended"] in ("stop", "length")
    a.start()
    eventually(lambda: fleet.up(a), "a back in the rotation once it answers", 60)
    served = fleet.served(a)
    with ThreadPoolExecutor(4) as pool:
        assert all(r["ended"] in ("stop", "length") for r in pool.map(lambda i: _stream(url, 200 + i), range(4)))
    assert fleet.served(a) > served


def test_a_cancelled_stream_frees_the_upstreams_slot(fleet: Fleet) -> None:
    url = fleet.gateway.url
    eventually(lambda: fleet.up(fleet.a) and fleet.up(fleet.b), "both upstreams up")
    disconnects = lambda: sum(s.log.read_text(errors="replace").count("Disconnected from client") for s in (fleet.a, fleet.b))  # noqa: E731
    before = disconnects()
    body = {"prompt": "1, 2, 3, 4, 5,", "max_tokens": 1500, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i == 6:
                break
    upstreams = httpx.get(f"{url}/healthz").json()["upstreams"]
    eventually(lambda: all(u["outstanding"] == 0 for u in httpx.get(f"{url}/healthz").json()["upstreams"]), "the gateway's slot freed")
    assert [u["up"] for u in upstreams] == [True, True]
    # the upstream's own word: llama-cpp-python logs the disconnect and stops generating
    eventually(lambda: disconnects() > before, "the upstream reporting the client gone", 30)
    for server in (fleet.a, fleet.b):  # each answers at once: no 1,500-token generation holds its one slot
        reply = httpx.post(f"{server.url}/v1/completions", json={"prompt": "Hello", "max_tokens": 4}, timeout=15)
        assert reply.status_code == 200
