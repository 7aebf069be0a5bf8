"""The OpenAI API's sampling fields over a real socket, through the official `openai` client:
logprobs and top_logprobs, echo, n and best_of, logit_bias and the penalties, nulls where OpenAI
takes them, one model by id, /tokenize and /detokenize; and logprobs never spelling out what the
output guard redacted. On the real engine with the tiny random-weight model (the default model's
end-to-end run is in tests/e2e/test_default_model_e2e.py)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.conftest import metric
from tests.gateway.test_gateway import records
from tests.secrets_corpus import corpus

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Tell me a story about a fox."}]


def client_of(url: str, strict: bool = True) -> openai.OpenAI:
    """The SDK, validating every response against its types (not where a field is null that its
    types do not allow, as OpenAI and vLLM send an echoed prompt's first logprob)."""
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, _strict_response_validation=strict)


def test_chat_logprobs_are_each_tokens_and_agree_with_the_greedy_choice(tiny_server) -> None:
    with tiny_server(engine="tiny") as s, client_of(s.url) as client:
        out = client.chat.completions.create(
            model="tiny-llama", messages=MESSAGES, max_tokens=12, temperature=0, logprobs=True, top_logprobs=4
        )
        choice = out.choices[0]
        assert choice.logprobs is not None and choice.logprobs.content is not None
        content = choice.logprobs.content
        assert out.usage is not None and len(content) == out.usage.completion_tokens == 12
        assert "".join(t.token for t in content) == choice.message.content
        for t in content:
            assert len(t.top_logprobs) == 4 and t.top_logprobs[0].token == t.token and t.top_logprobs[0].logprob == t.logprob
            assert [a.logprob for a in t.top_logprobs] == sorted((a.logprob for a in t.top_logprobs), reverse=True)
            assert t.bytes is not None and bytes(t.bytes).decode("utf-8", "replace") == t.token
        # streamed: the same tokens, in the chunks their text came in
        stream = client.chat.completions.create(
            model="tiny-llama", messages=MESSAGES, max_tokens=12, temperature=0, logprobs=True, stream=True
        )
        streamed = [t for chunk in stream for c in chunk.choices if c.logprobs and c.logprobs.content for t in c.logprobs.content]
        assert [(t.token, round(t.logprob, 5)) for t in streamed] == [(t.token, round(t.logprob, 5)) for t in content]
        assert all(t.top_logprobs == [] for t in streamed)
        # not asked: none
        plain = client.chat.completions.create(model="tiny-llama", messages=MESSAGES, max_tokens=3)
        assert plain.choices[0].logprobs is None


def test_completions_echo_gives_the_prompts_logprobs_as_lm_evaluation_harness_reads_them(tiny_server, tokenizer) -> None:
    """lm-evaluation-harness's local-completions: token ids, echo, max_tokens 1, logprobs 1, then
    the continuation's log-likelihood is the sum of token_logprobs[ctxlen:-1], and it is greedy
    when each token's logprob is the largest in its top_logprobs."""
    with tiny_server(engine="tiny") as s, client_of(s.url, strict=False) as client:
        context, continuation = tokenizer("The quick brown fox")["input_ids"], tokenizer(" jumps over")["input_ids"]
        prompt = context + continuation
        out = client.completions.create(model="tiny-llama", prompt=prompt, max_tokens=1, temperature=0, logprobs=1, echo=True)
        lp = out.choices[0].logprobs
        assert lp is not None and lp.tokens is not None and lp.token_logprobs is not None and lp.top_logprobs is not None
        assert len(lp.tokens) == len(prompt) + 1 and lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
        assert all(isinstance(x, float) and x <= 0 for x in lp.token_logprobs[1:])
        assert out.choices[0].text.startswith(tokenizer.decode(prompt))
        assert lp.text_offset is not None and lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
        loglikelihood = sum(lp.token_logprobs[len(context) : -1])  # type: ignore[arg-type]
        assert loglikelihood < 0
        # the answer's own token: greedy, so its logprob is the largest of its alternatives
        assert lp.token_logprobs[-1] == max(lp.top_logprobs[-1].values())
        # max_tokens 0: the prompt's logprobs alone, nothing generated
        only = client.completions.create(model="tiny-llama", prompt=prompt, max_tokens=0, logprobs=0, echo=True)
        assert only.choices[0].logprobs is not None and only.choices[0].logprobs.token_logprobs == lp.token_logprobs[:-1]
        assert only.usage is not None and only.usage.completion_tokens == 0 and only.choices[0].finish_reason == "length"
        # echo streamed: the prompt's text first
        stream = list(client.completions.create(model="tiny-llama", prompt="Once upon", max_tokens=3, echo=True, stream=True))
        assert stream[0].choices[0].text == "Once upon"


def test_n_answers_share_one_prefill_and_best_of_keeps_the_likeliest(tiny_server, tokenizer) -> None:
    with tiny_server(engine="tiny", prefix_cache_tokens=0) as s, client_of(s.url) as client:
        before = metric(s.url, "tandem_prefill_tokens_total")
        out = client.chat.completions.create(model="tiny-llama", messages=MESSAGES, max_tokens=8, n=3, temperature=1.0, seed=11)
        assert [c.index for c in out.choices] == [0, 1, 2] and len({c.message.content for c in out.choices}) > 1
        assert out.usage is not None and metric(s.url, "tandem_prefill_tokens_total") - before == out.usage.prompt_tokens
        assert out.usage.completion_tokens == 24
        again = client.chat.completions.create(model="tiny-llama", messages=MESSAGES, max_tokens=8, n=3, temperature=1.0, seed=11)
        assert [c.message.content for c in again.choices] == [c.message.content for c in out.choices]  # seeded: reproducible
        # streamed: every answer opens with the role and ends with its finish
        chunks = list(
            client.chat.completions.create(model="tiny-llama", messages=MESSAGES, max_tokens=5, n=2, temperature=1.0, stream=True)
        )
        for i in range(2):
            mine = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == i]
            assert mine[0].delta.role == "assistant" and mine[-1].finish_reason == "length"
        # best_of: three made, the likeliest returned, all three counted
        best = client.completions.create(model="tiny-llama", prompt="Once upon a time", max_tokens=6, best_of=3, temperature=1.0, seed=5)
        assert len(best.choices) == 1 and best.choices[0].logprobs is None and best.usage is not None
        assert best.usage.completion_tokens == 18
        scored = client.completions.create(
            model="tiny-llama", prompt="Once upon a time", max_tokens=6, n=3, temperature=1.0, seed=5, logprobs=0
        )
        scores = {c.text: sum(c.logprobs.token_logprobs or []) for c in scored.choices if c.logprobs}  # type: ignore[arg-type]
        assert best.choices[0].text == max(scores, key=lambda t: scores[t])


def test_logit_bias_and_penalties_change_the_answer_and_nulls_are_defaults(tiny_server) -> None:
    with tiny_server(engine="tiny") as s, client_of(s.url) as client:

        def tokens(**kwargs: Any) -> list[str]:
            out = client.completions.create(model="tiny-llama", prompt="def add(a, b):", max_tokens=10, temperature=0, logprobs=0, **kwargs)
            assert out.choices[0].logprobs is not None and out.choices[0].logprobs.tokens is not None
            return out.choices[0].logprobs.tokens

        plain = tokens()
        assert len(set(plain)) < len(plain)  # the tiny model repeats itself
        assert tokens(frequency_penalty=2.0) != plain
        assert tokens(presence_penalty=2.0) != plain
        assert tokens(extra_body={"repetition_penalty": 2.0}) != plain
        ids = httpx.post(f"{s.url}/tokenize", json={"prompt": plain[0], "add_special_tokens": False}).json()["tokens"]
        assert len(ids) == 1
        assert plain[0] not in tokens(logit_bias={str(ids[0]): -100})
        # every null OpenAI takes is its default
        nulls = {"temperature": None, "top_p": None, "n": None, "stream": None, "seed": None, "stop": None, "logprobs": None}
        r = httpx.post(f"{s.url}/v1/completions", json={"prompt": "def add(a, b):", "max_tokens": 10, **nulls, "presence_penalty": None})
        assert r.status_code == 200 and len(r.json()["choices"]) == 1
        chat = {"messages": MESSAGES, "max_tokens": 2, "temperature": None, "logprobs": None, "top_logprobs": None, "n": None}
        assert httpx.post(f"{s.url}/v1/chat/completions", json=chat).status_code == 200


def test_one_model_by_id_and_the_tokenizer_routes(tiny_server, tokenizer) -> None:
    with tiny_server(engine="tiny") as s, client_of(s.url) as client:
        model = client.models.retrieve("tiny-llama")
        assert model.id == "tiny-llama" and model.object == "model"
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("gpt-17")
        text = "héllo wörld, 你好"
        vllm = httpx.post(f"{s.url}/tokenize", json={"model": "tiny-llama", "prompt": text, "return_token_strs": True}).json()
        assert vllm["tokens"] == tokenizer(text)["input_ids"] and vllm["count"] == len(vllm["tokens"]) and vllm["max_model_len"] == 256
        llama = httpx.post(f"{s.url}/tokenize", json={"content": text, "with_pieces": True}).json()
        assert [t["id"] for t in llama["tokens"]] == tokenizer(text, add_special_tokens=False)["input_ids"]
        back = httpx.post(f"{s.url}/detokenize", json={"tokens": vllm["tokens"]}).json()
        assert back["prompt"] == back["content"] == tokenizer.decode(vllm["tokens"])
        # messages: the chat template's count, as the chat endpoint reports it
        chat = httpx.post(f"{s.url}/tokenize", json={"messages": MESSAGES}).json()
        usage = client.chat.completions.create(model="tiny-llama", messages=MESSAGES, max_tokens=1).usage  # type: ignore[arg-type]
        assert usage is not None and chat["count"] == usage.prompt_tokens
        for bad, param in (
            ({"prompt": "x", "messages": MESSAGES}, "prompt"),
            ({}, "prompt"),
            ({"prompt": "x", "model": "gpt-17"}, "model"),
            ({"prompt": 5}, "prompt"),
        ):
            r = httpx.post(f"{s.url}/tokenize", json=bad)
            assert r.status_code in (400, 404) and r.json()["error"]["param"] == param, bad
        r = httpx.post(f"{s.url}/detokenize", json={"tokens": [99_999_999]})
        assert r.status_code == 400 and r.json()["error"]["param"] == "tokens"


def test_n_answers_are_recorded_each_and_their_controls_with_them(tiny_server) -> None:
    with tiny_server(engine="tiny") as s, client_of(s.url) as client:
        out = client.chat.completions.create(
            model="tiny-llama", messages=MESSAGES, max_tokens=4, n=2, temperature=1.0, presence_penalty=0.5, logprobs=True
        )
        row = records(s.audit_dir, 1)[-1]
        params = row["model"]["params"]
        assert params["n"] == 2 and params["presence_penalty"] == 0.5 and params["logprobs"] == 0
        choices = row["output"]["choices"]
        assert [c["index"] for c in choices] == [0, 1] and sum(c["tokens"] for c in choices) == row["output"]["tokens"] == 8
        for c, answer in zip(choices, out.choices):
            assert f"[choice {c['index']}]\n{answer.message.content}" in row["_content"]["output"]


SINGLE_LINE = [secret for secret in corpus() if "\n" not in secret.value and "\\n" not in secret.value]


@pytest.mark.parametrize("secret", SINGLE_LINE, ids=lambda s: s.kind or s.type)
def test_logprobs_never_spell_out_what_the_output_guard_redacted(tiny_server, secret) -> None:
    """The scripted engine says a secret in 5-character tokens, each token's logprob entry spelling
    its text: the text the client gets is redacted, and so is every entry of a token the secret
    touches (chosen and alternatives), streamed or whole."""
    with tiny_server() as s:
        said = secret.in_prose()
        s.engine.script = [said[i : i + 5] for i in range(0, len(said), 5)]
        start = said.index(secret.value)
        inside = {i for i, piece in enumerate(s.engine.script) if i * 5 < start + len(secret.value) and i * 5 + len(piece) > start}
        body = {"messages": MESSAGES, "max_tokens": 200, "logprobs": True, "top_logprobs": 1}
        whole = httpx.post(f"{s.url}/v1/chat/completions", json=body).json()["choices"][0]
        with httpx.stream("POST", f"{s.url}/v1/chat/completions", json={**body, "stream": True}) as r:
            events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
        streamed = [t for e in events if e.get("choices") and e["choices"][0]["logprobs"] for t in e["choices"][0]["logprobs"]["content"]]
        for entries, text in ((whole["logprobs"]["content"], whole["message"]["content"]), (streamed, None)):
            assert len(entries) == len(s.engine.script)
            shown = json.dumps(entries)
            assert not [f for f in secret.fragments(8) if f in shown], "a piece of the secret is in the logprobs"
            for i, e in enumerate(entries):
                if i in inside:
                    assert e["token"] == "[redacted]" and e["bytes"] is None and e["top_logprobs"] == []
                else:
                    assert e["token"] == s.engine.script[i] or e["token"] == "[redacted]"
            if text is not None:
                assert secret.value not in text and "[REDACTED:" in text
