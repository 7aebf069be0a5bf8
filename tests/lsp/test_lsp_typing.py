"""Completion as the user types, through the real language server and a real LSP client, against
a scripted HTTP engine whose pace and answers the test sets: the first line comes back while the
generation goes on; typing through it and accepting it are served from its continuation with no
new engine call; a result cut by the time budget is never an empty answer for that spot; warm-ups
go out at background priority and every real request cancels them; a generation nobody wants is
stopped. (tests/lsp/test_lsp.py runs the same paths on the real engine.)"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from lsprotocol import types
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

from tests.conftest import ThreadedServer, free_port
from tests.lsp_client import inline_params, open_doc, start_lsp, stats, wait_until

DOC = "def double(x):\n    "
CURSOR = (1, 4)


class PacedEngine:
    """Tandem's completion API, streaming `script` one piece every `pace` seconds; it records each
    request's body and whether its stream was closed before the end."""

    def __init__(self) -> None:
        self.script: list[str] = []
        self.pace = 0.0
        self.bodies: list[dict[str, Any]] = []
        self.closed_early: list[int] = []
        self.finished: list[int] = []
        self.app = Starlette(
            routes=[
                Route("/healthz", lambda request: PlainTextResponse("ok")),
                Route("/v1/models", lambda request: JSONResponse({"data": [{"id": "paced", "fim": False, "context_length": 4096}]})),
                Route("/v1/completions", self.complete, methods=["POST"]),
            ]
        )

    async def complete(self, request: Request) -> StreamingResponse:
        body = await request.json()
        self.bodies.append(body)
        n = len(self.bodies) - 1
        script = ["x"] if body.get("priority") == "background" else list(self.script)
        pace = self.pace * (20 if body.get("priority") == "background" else 1)  # a warm-up is a long prefill

        async def events() -> AsyncIterator[str]:
            ended = False
            try:
                for piece in script:
                    await asyncio.sleep(pace)  # the scripted engine's pace (the model's time per piece), server side
                    yield f"data: {json.dumps({'id': f'cmpl-{n:032x}', 'choices': [{'text': piece}]})}\n\n"
                yield "data: [DONE]\n\n"
                ended = True
            finally:
                (self.finished if ended else self.closed_early).append(n)

        return StreamingResponse(events(), media_type="text/event-stream")

    def real(self) -> list[dict[str, Any]]:
        return [b for b in self.bodies if b.get("priority") != "background"]


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, PacedEngine]]:
    engine = PacedEngine()
    with ThreadedServer(engine.app, free_port()) as server:
        yield server.url, engine


@pytest.fixture
def engine(served: tuple[str, PacedEngine]) -> PacedEngine:
    engine = served[1]
    engine.bodies.clear()
    engine.closed_early.clear()
    engine.finished.clear()
    engine.pace = 0.0
    return engine


def type_text(client: Any, uri: str, version: int, line: int, character: int, text: str) -> None:
    at = types.Position(line, character)
    client.text_document_did_change(
        types.DidChangeTextDocumentParams(
            types.VersionedTextDocumentIdentifier(version=version, uri=uri),
            [types.TextDocumentContentChangePartial(range=types.Range(at, at), text=text)],
        )
    )


async def ask(client: Any, uri: str, line: int, character: int, invoked: bool = False) -> str | None:
    params = inline_params(uri, line, character)
    if invoked:
        params.context = types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked)
    result = await client.text_document_inline_completion_async(params)
    return result.items[0].insert_text if result.items else None


async def test_the_first_line_arrives_before_the_block_and_typing_through_is_served_from_it(served, engine) -> None:
    url, _ = served
    engine.script = ["if x", " is None:\n", "        log(x)", "\n        return 0", "\n    return x * 2", "\n"]
    engine.pace = 0.3
    client = await start_lsp(url, "--no-autostart", settings={"timeBudgetMs": 20_000, "warmUp": False, "lineWaitMs": 20_000})
    try:
        open_doc(client, "file:///w/a.py", DOC)
        assert await ask(client, "file:///w/a.py", *CURSOR) == "if x is None:"  # the first line, while the block is still coming
        assert len(engine.finished) == 0  # the generation goes on behind it
        # typing through the suggestion: answered from the generation, no new engine call
        type_text(client, "file:///w/a.py", 2, 1, 4, "if x")
        assert await ask(client, "file:///w/a.py", 1, 8) == " is None:"
        # accepting the line: the next line is the continuation
        type_text(client, "file:///w/a.py", 3, 1, 8, " is None:")
        assert await ask(client, "file:///w/a.py", 1, 17) == "\n        log(x)"
        # an explicit request waits for the block (the if's body: the scope filter ends it there)
        assert await ask(client, "file:///w/a.py", 1, 17, invoked=True) == "\n        log(x)\n        return 0"
        counts = await stats(client)
        assert counts["engine_calls"] == 1 and len(engine.real()) == 1 and counts["cache_hits"] == 3
    finally:
        await client.shutdown_session()


async def test_a_slow_line_shows_its_whole_words_and_typing_through_them_gets_the_rest(served, engine) -> None:
    """No whole line within `lineWaitMs`: the words written so far (never half a word), and the
    same generation then serves the rest of the line as the user types through them."""
    url, _ = served
    engine.script = ["if x", " is None:\n", "        return 0\n"]
    engine.pace = 0.4
    client = await start_lsp(url, "--no-autostart", settings={"timeBudgetMs": 20_000, "warmUp": False, "lineWaitMs": 100})
    try:
        open_doc(client, "file:///w/w.py", DOC)
        assert await ask(client, "file:///w/w.py", *CURSOR) == "if "  # "x" may be the start of a longer name: not yet
        type_text(client, "file:///w/w.py", 2, 1, 4, "if ")
        assert await ask(client, "file:///w/w.py", 1, 7) == "x is None:"
        counts = await stats(client)
        assert counts["engine_calls"] == 1 and counts["partial_lines"] >= 1
    finally:
        await client.shutdown_session()


async def test_a_budget_cut_is_not_an_empty_answer_for_that_spot(served, engine) -> None:
    url, _ = served
    engine.script = ["return", " x * 2", "\n"]
    engine.pace = 0.4
    client = await start_lsp(url, "--no-autostart", settings={"timeBudgetMs": 150, "warmUp": False})
    try:
        open_doc(client, "file:///w/b.py", DOC)
        assert await ask(client, "file:///w/b.py", *CURSOR) is None  # nothing in time
        await wait_until(lambda: len(engine.finished) == 1)  # the generation went on after the cut
        assert await ask(client, "file:///w/b.py", *CURSOR) == "return x * 2"  # and the same spot now has its answer
        counts = await stats(client)
        assert counts["engine_calls"] == 1 and counts["time_budget_cuts"] == 1
    finally:
        await client.shutdown_session()


async def test_typing_something_else_cancels_the_generation_and_starts_a_new_one(served, engine) -> None:
    url, _ = served
    engine.script = ["return", " x * 2", "\n", "    pass", "\n"] * 4
    engine.pace = 0.2
    client = await start_lsp(url, "--no-autostart", settings={"timeBudgetMs": 20_000, "warmUp": False, "lineWaitMs": 20_000})
    try:
        open_doc(client, "file:///w/c.py", DOC)
        assert await ask(client, "file:///w/c.py", *CURSOR) == "return x * 2"
        type_text(client, "file:///w/c.py", 2, 1, 4, "y")
        await ask(client, "file:///w/c.py", 1, 5)
        await wait_until(lambda: engine.closed_early == [0])  # the first generation's stream was closed
        counts = await stats(client)
        assert counts["engine_calls"] == 2 and counts["generations_cancelled"] == 1
    finally:
        await client.shutdown_session()


async def test_a_cancelled_request_leaves_its_generation_only_for_a_moment(served, engine) -> None:
    url, _ = served
    engine.script = ["return", " x * 2", "\n"] * 30
    engine.pace = 0.2
    client = await start_lsp(url, "--no-autostart", settings={"timeBudgetMs": 20_000, "warmUp": False})
    try:
        open_doc(client, "file:///w/d.py", DOC)
        future = asyncio.ensure_future(
            client.protocol.send_request_async(
                types.TEXT_DOCUMENT_INLINE_COMPLETION, inline_params("file:///w/d.py", *CURSOR), msg_id="d-1"
            )
        )
        await wait_until(lambda: len(engine.bodies) == 1)
        client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id="d-1"))
        with pytest.raises(Exception):
            await future
        await wait_until(lambda: engine.closed_early == [0])  # nobody came back for it: stopped
        assert (await stats(client))["generations_reaped"] == 1
    finally:
        await client.shutdown_session()


async def test_warm_ups_go_out_in_the_background_and_real_requests_cancel_them(served, engine) -> None:
    """A real request cancels the warm-ups in flight, except one prefilling its own prompt (that
    prefill is what the request needs next)."""
    url, _ = served
    engine.script = ["return", " x * 2", "\n"]
    engine.pace = 0.2  # a warm-up takes 20 times as long here: it is still in flight when the real request comes
    client = await start_lsp(url, "--no-autostart", settings={"timeBudgetMs": 20_000, "lineWaitMs": 20_000})
    try:
        await wait_until(lambda: any(s["state"] == "ready" for s in client.engine_status))
        open_doc(client, "file:///w/e.py", DOC + "\n\nprint(double(2))\n")
        client.protocol.notify("tandem/cursorMoved", {"uri": "file:///w/e.py", "line": 1, "character": 4})
        await wait_until(lambda: len(engine.bodies) == 1)
        warm = engine.bodies[0]
        assert warm["priority"] == "background" and warm["max_tokens"] == 1 and warm["prompt"].endswith("def double(x):\n    ")
        assert await ask(client, "file:///w/e.py", *CURSOR) == "return x * 2"
        real = engine.real()
        assert len(real) == 1 and "priority" not in real[0] and real[0]["prompt"] == warm["prompt"]  # the same prompt: warmed
        assert 0 not in engine.closed_early  # so that warm-up was left to finish its prefill
        await wait_until(lambda: 0 in engine.finished)
        # the same spot again is not warmed twice; an edit warms where it ended
        client.protocol.notify("tandem/cursorMoved", {"uri": "file:///w/e.py", "line": 1, "character": 4})
        type_text(client, "file:///w/e.py", 2, 3, 16, "\n")
        await wait_until(lambda: len(engine.bodies) == 3)
        assert engine.bodies[2]["priority"] == "background" and engine.bodies[2]["prompt"].endswith("print(double(2))\n")
        # a real request elsewhere: that warm-up, in flight for another prompt, is cancelled
        type_text(client, "file:///w/e.py", 3, 1, 4, "y = x\n    ")
        assert await ask(client, "file:///w/e.py", 2, 4) == "return x * 2"
        await wait_until(lambda: 2 in engine.closed_early)
        counts = await stats(client)
        assert counts["warmups_cancelled"] == 1 and counts["warmups_in_flight"] == 0
        for bad in (
            {"uri": "file:///w/e.py", "line": 99, "character": 0},
            {"uri": 3},
            {"uri": "file:///nope.py", "line": 0, "character": 0},
        ):
            client.protocol.notify("tandem/cursorMoved", bad)  # ignored, and the server goes on
        assert await ask(client, "file:///w/e.py", *CURSOR) == "return x * 2"
    finally:
        await client.shutdown_session()


async def test_an_explicit_request_shows_the_lines_written_so_far_when_the_block_is_slow(served, engine) -> None:
    url, _ = served
    engine.script = ["if x:\n", "        a()\n"] + ["        b()\n"] * 20 + ["    return x\n"]
    engine.pace = 0.15
    client = await start_lsp(url, "--no-autostart", settings={"timeBudgetMs": 20_000, "warmUp": False})
    try:
        open_doc(client, "file:///w/f.py", DOC)
        shown = await ask(client, "file:///w/f.py", *CURSOR, invoked=True)
        assert shown is not None and shown.startswith("if x:\n        a()") and len(engine.finished) == 0  # before the block ended
        assert "return x" not in shown and not shown.endswith("\n")
    finally:
        await client.shutdown_session()
