"""Another `tandem serve` as the upstream of a Tandem gateway: a fleet of CPU boxes needs nothing
else. The upstream is the suite's default-model server (its own process, its own audit log)."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.dialog_client import Chat
from tests.gateway.test_gateway import records

pytestmark = pytest.mark.default_model
MODEL = "SmolLM2-135M-Instruct"


@pytest.mark.parametrize("tokenizer", [None, "default"])
def test_a_tandem_gateway_serves_through_another_tandem(default_server, pool_gateway, tokenizer) -> None:
    upstream = default_server.url
    with pool_gateway([f"{upstream}/v1"], tokenizer=tokenizer, read_timeout=120) as g:
        info = httpx.get(f"{g.url}/v1/models").json()["data"][0]
        # what the upstream Tandem says of its model reaches the clients of the front one
        assert info["id"] == MODEL and info["backend"] == "upstream" and info["quantization"] == "q4"
        assert info["token_count"] == ("tokenizer" if tokenizer else "upstream")  # (counted by the upstream's /tokenize)
        assert info["context_length"] == httpx.get(f"{upstream}/v1/models").json()["data"][0]["context_length"]
        client = openai.OpenAI(base_url=f"{g.url}/v1", api_key="unused", max_retries=0, timeout=120)
        answer = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Name the capital of France."}], max_tokens=24, temperature=0
        )
        assert "Paris" in (answer.choices[0].message.content or "")
        completion = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0)
        assert completion.choices[0].text.strip()
        with Chat(g.url) as visitor:
            text, frames = visitor.ask("Name the capital of France.")
            assert text.strip() and frames[-1]["type"] == "done"
        rows = records(g.audit_dir, 3)
        assert {r["model"]["name"] for r in rows} == {MODEL} and all(r["outcome"]["status"] == "ok" for r in rows)
