"""`tandem serve --upstream` in front of llama.cpp's own server (`llama-server`, built from the
llama.cpp that llama-cpp-python vendors), with no tokenizer here: counts from its /tokenize; on the
code model (Qwen2.5-Coder's GGUF, `make code-model`) a gap in the code filled by its native
/infill, for the language server too; on the default model, whose GGUF has no FIM tokens, the
same gap refused clearly; several streams batched in its slots, and a cancelled stream freeing its
slot as its own /slots reports."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from server.model_install import CATALOGUE, installed_gguf
from tests.gateway.test_gateway import records
from tests.lsp_client import suggest_once
from tests.upstream.engines import LlamaCppServer, TandemProcess, llama_cpp_binary
from tests.waiting import eventually

pytestmark = pytest.mark.default_model
CODE_MODEL = "qwen2.5-coder-0.5b"


@pytest.fixture(scope="module")
def coder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LlamaCppServer, TandemProcess]]:
    """llama-server on the code model's GGUF, and a gateway in front of it."""
    gguf = installed_gguf(CATALOGUE[CODE_MODEL])
    if gguf is None:
        pytest.fail(f"{CODE_MODEL} is not installed: `make code-model` (part of `make test`) installs it")
    folder = tmp_path_factory.mktemp("llama-server")
    upstream = LlamaCppServer(llama_cpp_binary(), folder, "coder", parallel=4, gguf=gguf, alias=CODE_MODEL)
    try:
        upstream.start()
        gateway = TandemProcess(
            folder, "gateway", "--upstream", upstream.url, "--upstream-health-interval", "0.5", "--upstream-max-concurrency", "4"
        ).wait_ready(120)
        try:
            yield upstream, gateway
        finally:
            gateway.stop()
    finally:
        upstream.stop()


def test_counts_come_from_its_tokenize_and_its_infill_fills_a_gap(coder: tuple[LlamaCppServer, TandemProcess]) -> None:
    _, gateway = coder
    info = httpx.get(f"{gateway.url}/v1/models").json()["data"][0]
    assert info["id"] == CODE_MODEL and info["backend"] == "upstream" and info["token_count"] == "upstream" and info["fim"] is True
    gap = {"prompt": "def add(a, b):\n    return ", "suffix": "\n\n\nprint(add(1, 2))\n", "max_tokens": 8, "temperature": 0}
    r = httpx.post(f"{gateway.url}/v1/completions", json=gap, timeout=60)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert "a + b" in choice["text"] and choice["finish_reason"] in ("stop", "length")
    row = records(gateway.audit_dir, 1)[-1]
    assert row["outcome"]["status"] == "ok" and row["model"]["name"] == CODE_MODEL


def test_the_language_server_completes_through_its_infill(coder: tuple[LlamaCppServer, TandemProcess]) -> None:
    _, gateway = coder
    text = "import math\n\n\ndef circle_area(r):\n    return \n\n\nprint(circle_area(2))\n"
    assert "math.pi" in suggest_once(gateway.url, "file:///work/area.py", text, 4, 11)
    rows = records(gateway.audit_dir, 1)  # ok, or cancelled: the language server stops a generation once it holds the line it shows
    assert any(
        r["surface"] == "ide_completion" and r["outcome"]["status"] in ("ok", "cancelled") and r["model"]["name"] == CODE_MODEL
        for r in rows
    )


def test_streams_share_its_slots_and_a_cancelled_one_frees_its_slot(coder: tuple[LlamaCppServer, TandemProcess]) -> None:
    upstream, gateway = coder

    def ask(i: int) -> str:
        body = {"messages": [{"role": "user", "content": f"Write one sentence about the number {i}."}], "max_tokens": 12}
        r = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=120)
        assert r.status_code == 200, r.text
        return str(r.json()["choices"][0]["message"]["content"])

    with ThreadPoolExecutor(6) as pool:
        assert all(a.strip() for a in pool.map(ask, range(6)))
    body = {"prompt": "1, 2, 3, 4, 5,", "max_tokens": 900, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{gateway.url}/v1/completions", json=body, timeout=60) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i == 6:
                assert any(s["is_processing"] for s in upstream.slots())  # generating in one of its slots now
                break
    eventually(lambda: not any(s["is_processing"] for s in upstream.slots()), "llama-server's slot freed", 30)
    eventually(
        lambda: all(u["outstanding"] == 0 for u in httpx.get(f"{gateway.url}/healthz").json()["upstreams"]), "the gateway's slot freed"
    )


def test_a_model_without_fim_tokens_gets_a_clear_refusal_for_a_gap(tmp_path) -> None:
    upstream = LlamaCppServer(llama_cpp_binary(), tmp_path, "default", parallel=2)  # SmolLM2's GGUF has no FIM tokens
    try:
        upstream.start()
        gateway = TandemProcess(tmp_path, "gateway", "--upstream", upstream.url).wait_ready(120)
        try:
            assert httpx.get(f"{gateway.url}/v1/models").json()["data"][0]["fim"] is False
            r = httpx.post(f"{gateway.url}/v1/completions", json={"prompt": "def f(", "suffix": "\n", "max_tokens": 4}, timeout=60)
            assert r.status_code == 400 and r.json()["error"]["param"] == "suffix"
            assert httpx.post(f"{gateway.url}/v1/completions", json={"prompt": "def f(", "max_tokens": 4}, timeout=60).status_code == 200
        finally:
            gateway.stop()
    finally:
        upstream.stop()
