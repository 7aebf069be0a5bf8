"""Hot model swap and mixed routing: a new model or a new upstream list takes over while answers
keep streaming (none fails, none is cut), and the IDE and the chat can be served from different
backends."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from dialog.service import DialogConfig
from server.audit import AuditConfig
from tests.conftest import ADMIN_TOKEN, ROOT, ThreadedServer, free_port, tiny_loaded
from tests.gateway.test_gateway import records
from tests.scripted_engine import ScriptedEngine
from tests.upstream.engines import TandemProcess
from tests.waiting import eventually

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def chat(url: str, text: str, stream: bool = True, max_tokens: int = 16) -> dict[str, Any]:
    """One chat through the gateway: how it ended ('stop'/'length', or the error's code) and its text."""
    body = {"messages": [{"role": "user", "content": text}], "max_tokens": max_tokens, "stream": stream}
    if not stream:
        r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=180)
        if r.status_code != 200:
            return {"ended": r.json()["error"]["code"], "text": "", "model": None}
        return {
            "ended": r.json()["choices"][0]["finish_reason"],
            "text": r.json()["choices"][0]["message"]["content"],
            "model": r.json()["model"],
        }
    text, ended, model = "", None, None
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=180) as r:
        if r.status_code != 200:
            return {"ended": f"http {r.status_code}", "text": r.read().decode(), "model": None}
        for line in r.iter_lines():
            if line.startswith("data: {"):
                event = json.loads(line[6:])
                if "error" in event:
                    ended = event["error"]["code"]
                    continue
                model = event["model"]
                if event["choices"]:
                    text += event["choices"][0]["delta"].get("content") or ""
                    ended = event["choices"][0]["finish_reason"] or ended
    return {"ended": ended, "text": text, "model": model}


def complete(url: str, prompt: str) -> dict[str, Any]:
    r = httpx.post(f"{url}/v1/completions", json={"prompt": prompt, "max_tokens": 8, "temperature": 0}, timeout=180)
    if r.status_code != 200:
        return {"ended": r.json()["error"]["code"], "model": None}
    return {"ended": r.json()["choices"][0]["finish_reason"], "model": r.json()["model"]}


def test_replacing_the_upstream_list_under_load_fails_nothing(scripted, pool_gateway) -> None:
    a, b = scripted("a", model="model-a"), scripted("b", model="model-b")
    a.pieces = [f"piece {i}\n" for i in range(10)]
    a.delay = 0.1
    with pool_gateway([a.url]) as g:
        with ThreadPoolExecutor(6) as pool:
            running = [pool.submit(chat, g.url, f"q{i}") for i in range(6)]
            eventually(lambda: a.streaming >= 3, "answers streaming from a")
            swapped = httpx.post(f"{g.url}/admin/model", json={"upstreams": [f"{b.url}/v1"]}, headers=ADMIN, timeout=60)
            assert swapped.status_code == 200, swapped.text
            state = swapped.json()
            assert [s["model"] for s in state["serving"]] == ["model-b"]
            assert state["draining"] and state["draining"][0]["model"] == "model-a" and state["draining"][0]["calls"] >= 3
            after = chat(g.url, "after the swap")  # new calls go to b at once, while a's still run
            assert after["ended"] == "stop" and after["text"] == "Hello from b." and after["model"] == "model-b"
            results = [f.result() for f in running]
        assert all(r["ended"] == "stop" and r["text"].count("piece") == 10 for r in results), results  # whole, on a
        eventually(lambda: httpx.get(f"{g.url}/admin/model", headers=ADMIN).json()["draining"] == [], "a's pool drained and closed")
        served_by_a = len(a.requests)
        assert chat(g.url, "later")["text"] == "Hello from b." and len(a.requests) == served_by_a
        rows = records(g.audit_dir, 8)
        assert all(r["outcome"]["status"] == "ok" for r in rows)
        assert sorted(r["model"]["name"] for r in rows) == ["model-a"] * 6 + ["model-b"] * 2


def test_the_language_server_sees_a_swapped_model_at_its_next_request(scripted, pool_gateway) -> None:
    """After a swap the language server reads what is served again (here: a model that fills in the middle)."""
    import asyncio

    from lsp.engine_client import EngineClient

    a, b = scripted("a", model="model-a"), scripted("b", model="model-b")
    b.llama_cpp = True  # b fills in the middle, a does not

    async def session(url: str) -> list[tuple[str, bool]]:
        client = EngineClient(url, autostart=False)
        seen = []
        try:
            for swap in (False, True, False):
                info = await client.ready()
                seen.append((info.model, info.fim))
                if swap:
                    r = await asyncio.to_thread(httpx.post, f"{url}/admin/model", json={"upstreams": [b.url]}, headers=ADMIN, timeout=60)
                    assert r.status_code == 200, r.text
                async for _ in client.complete("def f(", None, 4, []):
                    pass
        finally:
            await client.close()
        return seen

    with pool_gateway([a.url]) as g:
        assert asyncio.run(session(g.url)) == [("model-a", False), ("model-a", False), ("model-b", True)]


def test_the_admin_api_refuses_bad_swaps_clearly_and_keeps_serving(scripted, pool_gateway) -> None:
    a = scripted("a")
    with pool_gateway([a.url]) as g:
        assert httpx.post(f"{g.url}/admin/model", json={"upstreams": [a.url]}).status_code == 401
        for body, param in (
            ({}, "model"),
            ({"model": "x", "upstreams": [a.url]}, "model"),
            ({"upstreams": []}, "upstreams"),
            ({"upstreams": ["ftp://x"]}, "upstreams"),
            ({"upstreams": [a.url], "surface": "everything"}, "surface"),
            ({"model": "/no/such/model.gguf"}, "model"),
            ({"model": "x", "colour": "red"}, "colour"),
            ([1, 2], None),
        ):
            r = httpx.post(f"{g.url}/admin/model", json=body, headers=ADMIN, timeout=60)
            assert r.status_code == 400 and r.json()["error"]["message"], (body, r.text)
            assert r.json()["error"]["param"] == param, (body, r.text)
        assert httpx.post(f"{g.url}/admin/model", content=b"{not json", headers=ADMIN).status_code == 400
        assert chat(g.url, "still there?")["text"] == "Hello from a."
        assert httpx.get(f"{g.url}/admin/model", headers=ADMIN).json()["serving"][0]["model"] == "scripted-model"


def test_the_ide_and_the_chat_can_be_served_by_different_backends(scripted, tiny_model, tokenizer, tmp_path) -> None:
    """`--upstream completion=URL`: completions through the pool, the chat on the model here."""
    from server.app import ServerConfig, create_app
    from server.backends.upstream import UpstreamConfig

    code = scripted("code", model="code-model")
    local = ScriptedEngine()
    local.script = ["Local", " answer."]
    config = ServerConfig(
        audit=AuditConfig(tmp_path / "audit"),
        admin_token=ADMIN_TOKEN,
        dialog=DialogConfig(directory=tmp_path / "dialog"),
        upstream=UpstreamConfig(health_interval=0.2),
        completion_upstreams=(code.url,),
    )
    app = create_app(config, loader=lambda: tiny_loaded(tiny_model, tokenizer), engine_factory=lambda *_: local)
    with ThreadedServer(app, free_port()) as g:
        served = httpx.get(f"{g.url}/v1/models").json()["data"]
        assert {(m["id"], tuple(m["endpoints"]), m["backend"]) for m in served} == {
            ("code-model", ("completions",), "upstream"),
            ("tiny-llama", ("chat",), "local"),
        }
        assert complete(g.url, "def f(") == {"ended": "stop", "model": "code-model"}
        answer = chat(g.url, "hi", stream=False)
        assert answer["text"] == "Local answer." and answer["model"] == "tiny-llama"
        assert len(code.requests) == 1 and len(local.requests) == 1
        wrong = httpx.post(f"{g.url}/v1/completions", json={"model": "tiny-llama", "prompt": "x"})
        assert wrong.status_code == 404 and "code-model" in wrong.json()["error"]["message"]
        # the chat alone moves to the pool too; the IDE's backend is untouched
        moved = httpx.post(f"{g.url}/admin/model", json={"upstreams": [code.url], "surface": "chat"}, headers=ADMIN, timeout=60)
        assert moved.status_code == 200
        assert chat(g.url, "hi", stream=False)["model"] == "code-model" and len(code.requests) == 2
        eventually(lambda: local.alive is False, "the local engine closed once the chat left it")


@pytest.mark.default_model
def test_a_hot_swap_of_the_local_model_under_load_fails_nothing(tmp_path) -> None:
    """A real server on the default model switches to the code model (`tandem models use`) while
    chats and completions keep coming: every request succeeds, each answered by one model."""
    server = TandemProcess(tmp_path, "swapped", "--max-batch-size", "8").wait_ready()
    try:
        stop = threading.Event()
        results: list[dict[str, Any]] = []

        def keep_asking(i: int) -> None:
            n = 0
            while not stop.is_set():
                results.append(
                    chat(server.url, f"Say hello to visitor {i}-{n}.") if i % 2 else complete(server.url, f"# step {n}\ndef step_{i}(")
                )
                n += 1

        with ThreadPoolExecutor(4) as pool:
            workers = [pool.submit(keep_asking, i) for i in range(4)]
            eventually(lambda: len(results) >= 4, "requests answered by the first model", 120)
            use = subprocess.run(
                [sys.executable, "-m", "server.cli", "models", "use", "qwen2.5-coder-0.5b", "--server-url", server.url, "--admin-token", ADMIN_TOKEN],
                cwd=ROOT, capture_output=True, text=True, timeout=600,
            )  # fmt: skip
            assert use.returncode == 0, use.stdout + use.stderr
            assert "serving ide_completion and support_chat: qwen2.5-coder-0.5b" in use.stdout
            eventually(lambda: sum(r["model"] == "qwen2.5-coder-0.5b" for r in results) >= 4, "requests answered by the new model", 300)
            stop.set()
            for w in workers:
                w.result()
        assert results and all(r["ended"] in ("stop", "length") for r in results), [
            r for r in results if r["ended"] not in ("stop", "length")
        ]
        models = {r["model"] for r in results}
        assert models == {"SmolLM2-135M-Instruct", "qwen2.5-coder-0.5b"}
        eventually(lambda: httpx.get(f"{server.url}/admin/model", headers=ADMIN).json()["draining"] == [], "the old model freed")
        info = httpx.get(f"{server.url}/v1/models").json()["data"]
        assert [m["id"] for m in info] == ["qwen2.5-coder-0.5b"] and info[0]["fim"] is True
        audited = records(server.audit_dir, len(results))
        assert {r["model"]["name"] for r in audited} == models and all(r["outcome"]["status"] == "ok" for r in audited)
    finally:
        server.stop()
