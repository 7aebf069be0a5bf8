"""The real language server (`tandem lsp`, pygls) through a real LSP client (pytest-lsp), against
a real `tandem serve` on the default model: completions arrive, cancellation and supersession
stop the generation in the engine, auto-start and sharing one engine, and bad inputs."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import httpx
import psutil
import pytest
from lsprotocol import types
from pygls.exceptions import JsonRpcInvalidParams, JsonRpcRequestCancelled

from server.settings import tandem_home
from tests.conftest import free_port, metric
from tests.lsp_client import end_of, inline_params, open_doc, start_lsp, stats, wait_until

pytestmark = pytest.mark.default_model
PY = "import os\n\ndef list_python_files(path):\n    "  # the 135M model writes poor Python, but here it writes some
PY_END = (3, 4)
LONG = "# one thousand primes, on one line\nprimes = [2, 3, 5, 7, 11, 13, 17, 19, 23, "  # the model goes on and on


def cancelled_in_engine(url: str) -> float:
    return metric(url, "tandem_requests_finished_total", 'reason="cancelled"')


async def engine_idle(url: str) -> None:
    """Wait out calls other tests left behind (the default server is shared, and a stream whose
    client left ends in the server a moment later: after a long prefill, say), so the counters
    read next belong to this test. Every call is in the gateway from its arrival to its audit
    record, and a cancelled one stays in the engine's counts until the worker drops it."""
    await wait_until(lambda: metric(url, "tandem_gateway_calls_in_flight") == 0, timeout=60)
    await wait_until(
        lambda: sum(metric(url, f"tandem_requests_{state}") for state in ("running", "prefilling", "waiting")) == 0, timeout=60
    )


async def start_slow_request(client, url: str, msg_id: str | None = None):  # type: ignore[no-untyped-def]
    """Open a document the model goes on and on about, wait for the engine to be idle, and start
    an inline completion there; returns (its future, the engine's cancel count before, the cursor)
    once the generation is running."""
    open_doc(client, "file:///work/primes.py", LONG)
    cursor = end_of(LONG)
    await engine_idle(url)
    before = cancelled_in_engine(url)
    # pytest-lsp's send_request_async is a coroutine: a task sends it now, not when awaited
    future = asyncio.ensure_future(
        client.protocol.send_request_async(
            types.TEXT_DOCUMENT_INLINE_COMPLETION, inline_params("file:///work/primes.py", *cursor), msg_id=msg_id
        )
    )
    await wait_until(lambda: metric(url, "tandem_requests_running") >= 1)
    return future, before, cursor


async def test_an_inline_completion_for_a_python_file_arrives(default_server) -> None:
    client = await start_lsp(
        default_server.url, settings={"maxTokens": 32, "timeBudgetMs": 30_000, "lineWaitMs": 30_000}
    )  # arrival, not speed, is tested here
    try:
        init = client.initialize_result.capabilities  # inline completion is advertised: it is registered with options
        assert init.inline_completion_provider is not None and init.completion_provider is not None
        assert init.text_document_sync.change == types.TextDocumentSyncKind.Incremental
        open_doc(client, "file:///work/fib.py", PY)
        result = await client.text_document_inline_completion_async(inline_params("file:///work/fib.py", *PY_END))
        (item,) = result.items
        assert item.insert_text.strip() and item.range.start == types.Position(*PY_END)
        assert item.command.command == "tandem.accepted" and item.command.arguments[0].startswith("cmpl-")
        # the same state again comes from the cache, and the plain completion request gives the same text
        listed = await client.text_document_completion_async(
            types.CompletionParams(types.TextDocumentIdentifier("file:///work/fib.py"), types.Position(*PY_END))
        )
        assert listed.items[0].insert_text == item.insert_text
        counts = await stats(client)
        assert counts["cache_hits"] == 1 and counts["engine_calls"] == 1
        # the status bar's source: the engine was reported ready (warmed up right after initialisation)
        assert [s["state"] for s in client.engine_status][-1] == "ready" and counts["engine_state"] == "ready"
        # feedback reaches the server's metrics
        before = metric(default_server.url, "tandem_completion_feedback_total")
        client.protocol.notify("tandem/completionFeedback", {"request_id": item.command.arguments[0], "event": "accepted"})
        await wait_until(lambda: metric(default_server.url, "tandem_completion_feedback_total") == before + 1)
    finally:
        await client.shutdown_session()


async def test_incremental_edits_and_utf16_positions(default_server) -> None:
    client = await start_lsp(default_server.url, settings={"maxTokens": 8})
    try:
        text = 'greeting = "こんにちは 😀"\nname = '
        open_doc(client, "file:///work/u.py", text)
        client.text_document_did_change(
            types.DidChangeTextDocumentParams(
                types.VersionedTextDocumentIdentifier(version=2, uri="file:///work/u.py"),
                [types.TextDocumentContentChangePartial(range=types.Range(types.Position(0, 15), types.Position(0, 17)), text="🎉")],
            )
        )
        line, character = end_of(text)
        result = await client.text_document_inline_completion_async(inline_params("file:///work/u.py", line, character))
        assert result is not None
        # inside the surrogate pair of the emoji that replaced the two UTF-16 units at 15..17
        with pytest.raises(JsonRpcInvalidParams, match="surrogate"):
            await client.text_document_inline_completion_async(inline_params("file:///work/u.py", 0, 16))
        with pytest.raises(JsonRpcInvalidParams, match="past the end"):
            await client.text_document_inline_completion_async(inline_params("file:///work/u.py", 1, 99))
        with pytest.raises(JsonRpcInvalidParams, match="past the end"):
            await client.text_document_inline_completion_async(inline_params("file:///work/u.py", 7, 0))
        unknown = await client.text_document_inline_completion_async(inline_params("file:///work/never-opened.py", 0, 0))
        assert not unknown.items
        huge = "x = 1\n" * 300_000 + "def f():\n    "
        open_doc(client, "file:///work/huge.py", huge)
        line, character = end_of(huge)
        assert (await client.text_document_inline_completion_async(inline_params("file:///work/huge.py", line, character))) is not None
        # and it keeps serving: every request above was answered, and the engine was asked each time it should be
        open_doc(client, "file:///work/fib.py", PY)
        assert (await client.text_document_inline_completion_async(inline_params("file:///work/fib.py", *PY_END))) is not None
        counts = await stats(client)
        assert counts["requests"] == counts["engine_calls"] == 3 and counts["unknown_document"] == 1  # refused positions never got that far
    finally:
        await client.shutdown_session()


async def test_an_unreachable_engine_is_reported_and_requests_get_empty_answers() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nobody listens here, and --no-autostart starts nobody
    client = await start_lsp(url, "--no-autostart", settings={"maxTokens": 8})
    try:
        await wait_until(lambda: any(s["state"] == "unreachable" for s in client.engine_status), timeout=10)
        assert client.engine_status[-1]["server_url"] == url and "no Tandem server" in client.engine_status[-1]["detail"]
        open_doc(client, "file:///work/a.py", PY)
        result = await client.text_document_inline_completion_async(inline_params("file:///work/a.py", *PY_END))
        assert not result.items
        counts = await stats(client)
        assert counts["engine_unavailable"] == 1 and counts["engine_state"] == "unreachable"
        assert any("no Tandem server" in m.message for m in client.log_messages)  # the output channel says why
    finally:
        await client.shutdown_session()


async def test_a_cancelled_request_leaves_no_generation_running(default_server) -> None:
    url = default_server.url
    client = await start_lsp(url, settings={"maxTokens": 400, "timeBudgetMs": 30_000, "lineWaitMs": 30_000})
    try:
        future, before, _ = await start_slow_request(client, url, msg_id="slow-1")
        client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id="slow-1"))
        with pytest.raises(JsonRpcRequestCancelled):
            await future
        # its generation waits a moment for a next keystroke that wants it, then it is stopped
        # (unless the model ended it first) and nothing is left running in the engine
        await wait_until(lambda: metric(url, "tandem_requests_running") == 0)
        counts = await stats(client)
        assert counts["generations_running"] == 0
        if counts.get("generations_reaped"):
            await wait_until(lambda: cancelled_in_engine(url) == before + 1)
    finally:
        await client.shutdown_session()


async def test_a_newer_request_on_the_document_supersedes_the_older(default_server) -> None:
    url = default_server.url
    client = await start_lsp(url, settings={"maxTokens": 400, "timeBudgetMs": 30_000, "lineWaitMs": 30_000})
    try:
        older, before, (line, character) = await start_slow_request(client, url)
        client.text_document_did_change(
            types.DidChangeTextDocumentParams(
                types.VersionedTextDocumentIdentifier(version=2, uri="file:///work/primes.py"),
                [
                    types.TextDocumentContentChangePartial(
                        range=types.Range(types.Position(line, character), types.Position(line, character)), text="x, "
                    )
                ],
            )
        )
        client.set_configuration({"maxTokens": 8, "timeBudgetMs": 30_000, "lineWaitMs": 30_000}, section="tandem")
        client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings=None))

        async def applied() -> bool:  # the server pulled the new settings
            return bool((await stats(client))["max_tokens"] == 8)

        await wait_until(applied, timeout=10)
        newer = await client.text_document_inline_completion_async(inline_params("file:///work/primes.py", line, character + 3))
        with pytest.raises(JsonRpcRequestCancelled):
            await older
        assert newer is not None
        counts = await stats(client)
        assert counts["superseded"] == 1
        await wait_until(lambda: cancelled_in_engine(url) >= before + 1)
    finally:
        await client.shutdown_session()


async def test_switching_completions_off_stops_what_is_running_and_asks_nothing_more(default_server) -> None:
    url = default_server.url
    slow = {"maxTokens": 400, "timeBudgetMs": 30_000, "lineWaitMs": 30_000}
    client = await start_lsp(url, settings=slow)
    try:
        pending, before, (line, character) = await start_slow_request(client, url)
        client.set_configuration({**slow, "enabled": False}, section="tandem")
        client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings=None))
        # the running generation is stopped in the engine, long before its 400 tokens
        await wait_until(lambda: cancelled_in_engine(url) >= before + 1)
        await wait_until(lambda: metric(url, "tandem_requests_running") == 0)
        await asyncio.wait_for(pending, 20)  # answered (with what had come, if a line had), not left hanging
        counts = await stats(client)
        assert counts["generations_running"] == 0
        # and while off, a request is answered with nothing and reaches no engine
        await engine_idle(url)
        finished = metric(url, "tandem_requests_finished_total")
        off = await client.text_document_inline_completion_async(inline_params("file:///work/primes.py", line, character))
        assert off is None or not off.items
        assert metric(url, "tandem_gateway_calls_in_flight") == 0
        assert metric(url, "tandem_requests_finished_total") == finished
    finally:
        await client.shutdown_session()


@pytest.fixture
def private_home(tmp_path: Path) -> Path:
    """A TANDEM_HOME of its own (auto-start lock and log), sharing the converted model cache."""
    (tmp_path / "models").symlink_to(tandem_home() / "models", target_is_directory=True)
    return tmp_path


async def test_auto_start_and_two_language_servers_share_one_engine(default_model_dir, private_home: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "TANDEM_HOME": str(private_home)}
    first = await start_lsp(url, env=env, settings={"maxTokens": 8, "timeBudgetMs": 30_000, "lineWaitMs": 30_000})
    second = None
    try:
        open_doc(first, "file:///work/a.py", PY)
        result = await first.text_document_inline_completion_async(inline_params("file:///work/a.py", *PY_END))
        assert result.items, "no completion after auto-start"
        assert httpx.get(f"{url}/healthz").status_code == 200
        second = await start_lsp(url, env=env, settings={"maxTokens": 8})
        open_doc(second, "file:///work/b.py", "class Stack:\n    def push(self, item):\n        ")
        assert (await second.text_document_inline_completion_async(inline_params("file:///work/b.py", 2, 8))) is not None
        s1 = await stats(first)
        s2 = await stats(second)
        assert s1["engine_started_here"] is True and s2["engine_started_here"] is False
        servers = [
            p
            for p in psutil.process_iter(["cmdline"])
            if p.info["cmdline"] and "serve" in p.info["cmdline"] and str(port) in p.info["cmdline"]
        ]
        assert len(servers) == 1  # one engine for both
        calls = s1["engine_calls"] + s2["engine_calls"]  # each language server's generations, all in that one engine
        await wait_until(lambda: metric(url, "tandem_requests_finished_total") >= calls, timeout=120)
    finally:
        await first.shutdown_session()
        if second is not None:
            await second.shutdown_session()
        for p in psutil.process_iter(["cmdline"]):
            if p.info["cmdline"] and "serve" in p.info["cmdline"] and str(port) in p.info["cmdline"]:
                os.kill(p.pid, signal.SIGTERM)
