"""The language server against hostile input (issue 15, "Hardening"), over real connections:

- hypothesis-generated malformed requests (wrong types, missing fields, null params, bad enums,
  negative positions, lone surrogates) to every request the server registers, with malformed
  notifications in between: each request is answered, InvalidParams, and a valid completion
  still works afterwards;
- a document holding lone surrogates breaks no completion, its own or another's;
- raw bytes on stdio and TCP: any Content-Length (huge, negative, garbage, missing, over the
  cap), garbage lines, a body that is not JSON: the process lives and answers the next request;
- the framing itself (lsp/transport.py), as a property: any split of the stream into reads, any
  junk between messages, and every well-framed message comes out.

The engine is a scripted stand-in on loopback (`/healthz`, `/v1/models`, streaming
`/v1/completions`), so nothing here needs the model.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import json
import queue
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lsprotocol import types
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

from lsp.transport import MAX_BODY, Framer, FramingError
from tests.conftest import ROOT, ThreadedServer, free_port
from tests.lsp_client import end_of, inline_params, open_doc, start_lsp, stats
from tests.waiting import eventually

INVALID_PARAMS, INVALID_REQUEST, PARSE_ERROR = -32602, -32600, -32700
ANSWER_TIMEOUT = 10.0  # a request not answered by then is a request never answered
GOOD = "def double(x):\n    "
SCRIPT = ["return", " x * 2", "\n"]


# --- the scripted engine -----------------------------------------------------------------------


class ScriptedHTTPEngine:
    """Tandem's HTTP API as the language server uses it, answering every completion with SCRIPT."""

    def __init__(self) -> None:
        self.prompts: list[dict[str, Any]] = []
        self.app = Starlette(
            routes=[
                Route("/healthz", lambda request: PlainTextResponse("ok")),
                Route("/v1/models", lambda request: JSONResponse({"data": [{"id": "scripted", "fim": False, "context_length": 2048}]})),
                Route("/v1/completions", self.complete, methods=["POST"]),
                Route("/v1/feedback", lambda request: JSONResponse({"ok": True}), methods=["POST"]),
            ]
        )

    async def complete(self, request: Request) -> StreamingResponse:
        self.prompts.append(await request.json())  # a body that is not UTF-8 JSON fails here, and the test with it

        async def events() -> AsyncIterator[str]:
            for piece in SCRIPT:
                yield f"data: {json.dumps({'id': 'cmpl-scripted', 'choices': [{'text': piece}]})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")


@pytest.fixture(scope="module")
def engine() -> Iterator[tuple[str, ScriptedHTTPEngine]]:
    scripted = ScriptedHTTPEngine()
    with ThreadedServer(scripted.app, free_port()) as server:
        yield server.url, scripted


# --- (1) the fuzz ------------------------------------------------------------------------------


class LoopThread:
    """An event loop in a thread of its own, holding the LSP client, so that hypothesis's
    synchronous examples can drive it (each waits for its own answer, bounded)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Any, *args: Any) -> Any:
        """`fn(*args)` on the loop's thread (the client's transport is not thread-safe)."""

        async def call() -> Any:
            return fn(*args)

        return self.run(call())

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


class Answer:
    def __init__(self, result: Any = None, code: int | None = None, message: str = "") -> None:
        self.result, self.code, self.message = result, code, message

    def __repr__(self) -> str:
        return f"Answer(code={self.code}, message={self.message!r})" if self.code is not None else f"Answer(result={self.result!r})"


def watch_null_id_errors(client: Any) -> queue.Queue[Any]:
    """Errors the server sends with id null (answers to requests whose id was unusable)."""
    errors: queue.Queue[Any] = queue.Queue()
    original = client.protocol._handle_response

    def handle(msg_id: Any, result: Any = None, error: Any = None) -> None:
        if msg_id is None and error is not None:
            errors.put(error)
        else:
            original(msg_id, result, error)

    client.protocol._handle_response = handle
    return errors


async def raw_request(client: Any, message: dict[str, Any], timeout: float = ANSWER_TIMEOUT) -> Answer:
    """Send `message` exactly as given (pygls's typed send would refuse or reshape bad params)
    and wait for the answer to its id."""
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()
    client.protocol._request_futures[message["id"]] = future
    client.protocol._send_data(message)
    try:
        result = await asyncio.wait_for(asyncio.wrap_future(future), timeout)
    except TimeoutError:
        client.protocol._request_futures.pop(message["id"], None)
        raise AssertionError(f"no answer within {timeout} s to {json.dumps(message)[:400]}") from None
    except Exception as exc:  # pygls turns an error answer into a JsonRpcException
        return Answer(code=getattr(exc, "code", None), message=str(exc))
    return Answer(result=result)


DOC = "file:///work/fuzzed.py"
DOC_TEXT = "import os\n\ndef main():\n    " + "x = '😀'\n"
AT = {"line": 3, "character": 4}
VALID_PARAMS: dict[str, Any] = {
    "textDocument/inlineCompletion": {
        "textDocument": {"uri": DOC},
        "position": AT,
        "context": {"triggerKind": 1, "selectedCompletionInfo": {"range": {"start": AT, "end": AT}, "text": ""}},
    },
    "textDocument/completion": {"textDocument": {"uri": DOC}, "position": AT, "context": {"triggerKind": 2, "triggerCharacter": "."}},
    "workspace/executeCommand": {"command": "tandem.accepted", "arguments": ["cmpl-1"]},
    "tandem/stats": {},
    "tandem/completionFeedback": {"request_id": "cmpl-1", "event": "dismissed"},
}
NOTIFICATIONS: dict[str, Any] = {
    "textDocument/didOpen": {"textDocument": {"uri": "file:///work/other.py", "languageId": "python", "version": 1, "text": "y = 2\n"}},
    "textDocument/didChange": {
        "textDocument": {"uri": DOC, "version": 9},
        "contentChanges": [{"range": {"start": {"line": 0, "character": 0}, "end": {"line": 0, "character": 1}}, "text": "#"}],
    },
    "textDocument/didClose": {"textDocument": {"uri": "file:///work/other.py"}},
    "$/cancelRequest": {"id": 1},
    "workspace/didChangeConfiguration": {"settings": None},
    "$/setTrace": {"value": "off"},
}
TYPED_REQUESTS = {"textDocument/inlineCompletion", "textDocument/completion", "workspace/executeCommand"}
SURROGATES = ["\udc80", "\ud800", "a\udfffb", "\ud83d"]  # lone, each one; an escaped pair would be a real character
INTERESTING = [
    None,
    True,
    False,
    0,
    -1,
    -(2**31),
    2**31,
    2**32,
    2**63,
    10**30,
    99,
    1.5,
    -0.0,
    "",
    "5",
    "file:///",
    "\u0000",
    [],
    {},
    [None],
    {"line": 0},
    *SURROGATES,
]

# copies: a shared [] that `mutated` changed in place would change every later draw (hypothesis: FlakyStrategyDefinition)
interesting = st.sampled_from(INTERESTING).map(copy.deepcopy)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(categories=["L", "N", "P", "S", "Z", "Cc", "Cs"]), max_size=12)
    | interesting,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into a JSON value (dict keys and list indexes), the value itself first."""
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += paths(v, (*prefix, i))
    return out


@st.composite
def mutated(draw: st.DrawFn, template: Any) -> Any:
    """`template` with one to three of its parts deleted or replaced by arbitrary JSON."""
    value = copy.deepcopy(template)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(paths(value)))
        if not path:
            return draw(json_values)
        parent = value
        for key in path[:-1]:
            parent = parent[key]
        if isinstance(parent, dict) and draw(st.booleans()):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(json_values)
    return value


@st.composite
def malformed_request(draw: st.DrawFn) -> tuple[str, Any]:
    method = draw(st.sampled_from([*VALID_PARAMS, "initialize"]))
    if method == "initialize":  # arbitrary params never hold "capabilities" (keys are at most 8 characters): never valid
        return method, draw(json_values)
    return method, draw(mutated(VALID_PARAMS[method]))


@st.composite
def malformed_notification(draw: st.DrawFn) -> tuple[str, Any]:
    method = draw(st.sampled_from(sorted(NOTIFICATIONS)))
    return method, draw(mutated(NOTIFICATIONS[method]) | json_values)


def test_every_malformed_request_is_answered_and_the_server_keeps_serving(engine) -> None:  # type: ignore[no-untyped-def]
    url, scripted = engine
    loop = LoopThread()
    client = loop.run(start_lsp(url, "--no-autostart", settings={"maxTokens": 8}))
    null_id_errors = watch_null_id_errors(client)
    sent = {"requests": 0, "notifications": 0, "invalid_params": 0, "results": 0}
    try:
        loop.call(open_doc, client, DOC, DOC_TEXT)

        # the review's cases, by name first
        inline = VALID_PARAMS["textDocument/inlineCompletion"]
        named = [
            ("textDocument/inlineCompletion", {**inline, "position": {"line": -1, "character": 0}}),
            ("textDocument/inlineCompletion", {**inline, "context": {"triggerKind": 99}}),
            ("textDocument/inlineCompletion", None),
            ("textDocument/inlineCompletion", {"position": AT, "context": {"triggerKind": 1}}),  # no textDocument
            ("textDocument/inlineCompletion", {**inline, "position": {"line": "3", "character": "4"}}),
            ("textDocument/completion", {"textDocument": {"uri": 7}, "position": AT}),
            ("workspace/executeCommand", None),
            ("workspace/executeCommand", {"command": 5}),
            ("workspace/executeCommand", {"command": "no.such.command"}),
            ("initialize", None),
            ("initialize", {"processId": "me"}),
        ]
        for i, (method, params) in enumerate(named):
            answer = loop.run(raw_request(client, {"jsonrpc": "2.0", "id": f"named-{i}", "method": method, "params": params}))
            assert answer.code == INVALID_PARAMS, (method, params, answer)

        # the same, 20 times over, all in flight at once: no answer is lost in a flood
        async def flood() -> list[Answer]:
            return await asyncio.gather(
                *(
                    raw_request(client, {"jsonrpc": "2.0", "id": f"flood-{n}", "method": method, "params": params})
                    for n, (method, params) in enumerate(named * 20)
                )
            )

        assert {answer.code for answer in loop.run(flood())} == {INVALID_PARAMS}
        missing = loop.run(raw_request(client, {"jsonrpc": "2.0", "id": 41, "method": "textDocument/inlineCompletion"}))
        assert missing.code == INVALID_PARAMS and "params" in missing.message

        # envelopes that are no request at all: answered InvalidRequest, with id null where the id is unusable
        bad_jsonrpc = loop.run(raw_request(client, {"jsonrpc": "1.0", "id": 42, "method": "tandem/stats"}))
        assert bad_jsonrpc.code == INVALID_REQUEST
        bad_method = loop.run(raw_request(client, {"jsonrpc": "2.0", "id": 43, "method": 12}))
        assert bad_method.code == INVALID_REQUEST
        for bad_id in (None, True, 1.5, [1], {"id": 1}):
            loop.call(client.protocol._send_data, {"jsonrpc": "2.0", "id": bad_id, "method": "tandem/stats", "params": None})
            assert null_id_errors.get(timeout=ANSWER_TIMEOUT).code == INVALID_REQUEST
        for not_an_object in ([1], [{"jsonrpc": "2.0", "id": 44, "method": "tandem/stats"}], "hello", 7):  # (pygls sends nothing falsy)
            loop.call(client.protocol._send_data, not_an_object)
            assert null_id_errors.get(timeout=ANSWER_TIMEOUT).code == INVALID_REQUEST

        @settings(max_examples=400, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(request=malformed_request(), notifications=st.lists(malformed_notification(), max_size=2))
        def check(request: tuple[str, Any], notifications: list[tuple[str, Any]]) -> None:
            for method, params in notifications:  # unanswerable, but they must not hurt
                loop.call(client.protocol._send_data, {"jsonrpc": "2.0", "method": method, "params": params})
                sent["notifications"] += 1
            method, params = request
            message = {"jsonrpc": "2.0", "id": str(uuid.uuid4()), "method": method, "params": params}
            answer = loop.run(raw_request(client, message))
            sent["requests"] += 1
            if answer.code is not None:
                assert answer.code == INVALID_PARAMS, (message, answer)
                sent["invalid_params"] += 1
            else:
                sent["results"] += 1  # the mutation left valid params: a real answer of the method's shape
                assert method not in ("initialize", "workspace/executeCommand"), (message, answer)
                if method in TYPED_REQUESTS:
                    assert answer.result is None or hasattr(answer.result, "items"), (message, answer)

        check()
        assert sent["requests"] >= 300

        # and it still serves: a valid completion in a fresh document comes from the engine
        async def valid_completion() -> Any:
            open_doc(client, "file:///work/after-the-fuzz.py", GOOD)
            return await client.text_document_inline_completion_async(inline_params("file:///work/after-the-fuzz.py", *end_of(GOOD)))

        before = len(scripted.prompts)
        result = loop.run(valid_completion())
        assert [item.insert_text for item in result.items] == ["return x * 2"]
        assert len(scripted.prompts) > before
        counts = loop.run(stats(client))
        assert counts["requests"] >= 1
        print(
            f"\nfuzz: {sent['requests']} generated requests answered ({sent['invalid_params']} InvalidParams, "
            f"{sent['results']} still valid), {sent['notifications']} generated notifications survived"
        )
    finally:
        loop.run(client.shutdown_session())
        loop.close()


# --- (2) lone surrogates -----------------------------------------------------------------------


async def test_a_document_with_lone_surrogates_breaks_no_completion(engine) -> None:  # type: ignore[no-untyped-def]
    url, scripted = engine
    client = await start_lsp(url, "--no-autostart", settings={"maxTokens": 8})
    try:
        bad, good = "file:///work/bad.py", "file:///work/good.py"
        open_doc(client, bad, "x = '\udc80'\n")  # pygls's client escapes it: the JSON carries "\udc80"
        line_two = types.Range(types.Position(1, 0), types.Position(1, 0))
        client.text_document_did_change(
            types.DidChangeTextDocumentParams(
                types.VersionedTextDocumentIdentifier(version=2, uri=bad),
                [types.TextDocumentContentChangePartial(range=line_two, text="y = '\ud800'\nz = ")],
            )
        )
        open_doc(client, good, GOOD)
        open_doc(client, "file:///work/good2.py", GOOD.replace("double", "twice"))
        before = len(scripted.prompts)
        for uri in (good, "file:///work/good2.py"):  # every later completion of the language, not just the first
            result = await client.text_document_inline_completion_async(inline_params(uri, *end_of(GOOD)))
            assert [item.insert_text for item in result.items] == ["return x * 2"]
        # the bad document itself: a position after its replaced surrogate means the same place (one UTF-16 unit)
        own = await client.text_document_inline_completion_async(inline_params(bad, 2, 4))
        assert own is not None
        after = await client.text_document_inline_completion_async(inline_params(bad, 0, 7))
        assert after is not None
        prompts = [p["prompt"] for p in scripted.prompts[before:]]
        assert prompts and all(not any(0xD800 <= ord(c) <= 0xDFFF for c in p) for p in prompts)
        assert any("x = '\ufffd'" in p for p in prompts)  # the snippet of the bad document, cleaned
        counts = await stats(client)
        assert counts.get("engine_unavailable", 0) == 0
    finally:
        await client.shutdown_session()


# --- (3) raw bytes -----------------------------------------------------------------------------


def frame(body: bytes | str, header: bytes | None = None) -> bytes:
    data = body.encode() if isinstance(body, str) else body
    return (header if header is not None else b"Content-Length: %d\r\n\r\n" % len(data)) + data


def message(msg_id: int, method: str, params: Any = None) -> str:
    return json.dumps({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params})


INITIALIZE: dict[str, Any] = {"processId": None, "rootUri": None, "capabilities": {}}
HOSTILE = [
    frame(message(1, "initialize", INITIALIZE), b"Content-Length: 99999999999999999999\r\n\r\n"),  # refused, answered with id null
    frame(message(2, "initialize", INITIALIZE), b"Content-Length: -5\r\n\r\n"),
    frame("{}", b"Content-Length: abc\r\n\r\n"),
    frame("{}", b"Content-Length: 1e3\r\n\r\n"),
    frame("{}", b"Content-Length: " + b"9" * 5000 + b"\r\n\r\n"),  # refused
    frame("{}", b"Content-Length:\r\n\r\n"),
    frame("{}", b"Content-Type: application/vscode-jsonrpc; charset=utf-8\r\n\r\n"),  # no length at all
    frame(message(10, "tandem/stats")),  # well framed, but before initialize: -32002
    b"\x00\xff\xfe garbage line\r\n\r\n",
    frame(message(11, "tandem/stats")),
    b"X" * 20_000 + b"\r\n\r\n",  # a header block past the limit
    b"Content-Length: %d\r\n\r\n" % (MAX_BODY + 1),  # well framed, too large: refused
    frame("not json at all"),  # well framed, not JSON: a parse error, answered with id null
    frame(b"\xff\xfe{"),
    frame("[" * 100_000),  # nested past any recursion limit
    frame(message(3, "initialize", {"processId": "not a number", "capabilities": {}})),  # well framed, bad params
]
NULL_ID_ERRORS = [INVALID_REQUEST] * 3 + [PARSE_ERROR] * 3
SERVER_NOT_INITIALIZED = -32002


class RawPeer:
    """Reads framed messages from a byte stream in a thread; `next` waits a bounded time."""

    def __init__(self, read: Any) -> None:
        self.messages: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self._read = read
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        framer = Framer()
        while data := self._read(65536):
            for item in framer.feed(data):
                if not isinstance(item, FramingError):
                    self.messages.put(json.loads(item))

    def next_with(self, key: str, value: Any, timeout: float = ANSWER_TIMEOUT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no message with {key}={value!r} within {timeout} s"
            try:
                msg = self.messages.get(timeout=left)
            except queue.Empty:
                continue
            self.seen.append(msg)
            if msg.get(key) == value:
                return msg


def converse(peer: RawPeer, send: Any, alive: Any) -> None:
    """The hostile bytes, then a valid session, on any transport."""
    send(b"".join(HOSTILE))
    assert peer.next_with("id", 10)["error"]["code"] == SERVER_NOT_INITIALIZED
    assert peer.next_with("id", 11)["error"]["code"] == SERVER_NOT_INITIALIZED
    assert peer.next_with("id", 3)["error"]["code"] == INVALID_PARAMS
    assert [m["error"]["code"] for m in peer.seen if m.get("id") is None] == NULL_ID_ERRORS
    assert alive()
    send(frame(message(4, "initialize", INITIALIZE)))
    init = peer.next_with("id", 4)
    assert "inlineCompletionProvider" in init["result"]["capabilities"]
    nested = '{"a": ' * 400 + "1" + "}" * 400  # deep, but decodable (deeper is a parse error, above)
    send(
        frame(f'{{"jsonrpc": "2.0", "id": 7, "method": "textDocument/inlineCompletion", "params": {nested}}}')
        + frame(f'{{"jsonrpc": "2.0", "id": 8, "method": "tandem/stats", "params": {nested}}}')
    )
    assert peer.next_with("id", 7)["error"]["code"] == INVALID_PARAMS
    assert "engine_state" in peer.next_with("id", 8)["result"]  # untyped params: anything goes
    send(frame(message(5, "tandem/stats")))
    assert "engine_state" in peer.next_with("id", 5)["result"]
    send(frame(message(6, "shutdown")) + frame(json.dumps({"jsonrpc": "2.0", "method": "exit"})))
    assert peer.next_with("id", 6)["result"] is None
    assert not [m for m in peer.seen if m.get("id") in (1, 2)]  # the bodies of refused headers were skipped, not run


def lsp_command(*extra: str) -> list[str]:
    return [sys.executable, "-m", "server.cli", "lsp", "--no-autostart", "--server-url", f"http://127.0.0.1:{free_port()}", *extra]


def test_raw_bytes_on_stdio_never_kill_the_server() -> None:
    proc = subprocess.Popen(lsp_command("--stdio"), cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        stdin = proc.stdin

        def send(data: bytes) -> None:
            stdin.write(data)
            stdin.flush()

        converse(RawPeer(proc.stdout.read1), send, lambda: proc.poll() is None)  # type: ignore[attr-defined]  # a pipe: a BufferedReader
        assert proc.wait(timeout=ANSWER_TIMEOUT) == 0  # exit after shutdown: a clean 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdin.close()  # type: ignore[union-attr]
        proc.stdout.close()  # type: ignore[union-attr]


def test_raw_bytes_on_tcp_never_kill_the_server() -> None:
    port = free_port()
    proc = subprocess.Popen(
        lsp_command("--tcp", f"127.0.0.1:{port}"), cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:

        def connected() -> socket.socket | None:
            assert proc.poll() is None, "the TCP language server exited"
            try:
                return socket.create_connection(("127.0.0.1", port), timeout=1)
            except OSError:
                return None

        sock = eventually(connected, "the TCP language server listening", 30)
        with sock:
            sock.settimeout(None)
            converse(RawPeer(sock.recv), sock.sendall, lambda: proc.poll() is None)
            assert proc.wait(timeout=ANSWER_TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- the framing, as a property ----------------------------------------------------------------

no_colon = st.binary(max_size=40).map(lambda b: b.replace(b":", b";"))  # junk that cannot hold a header
bad_lengths = st.sampled_from([b"99999999999999999999", b"-5", b"abc", b"", b"1 2", b"0x10", b"+5", b"5.0", b"%d" % (MAX_BODY + 1)])
junk = st.one_of(
    no_colon,
    st.builds(lambda v, body: b"Content-Length: " + v + b"\r\n\r\n" + body, bad_lengths, no_colon),
    st.builds(lambda body: b"Content-Type: text/plain\r\n\r\n" + body, no_colon),
)


@settings(max_examples=300, deadline=None, database=None)
@given(
    items=st.lists(st.one_of(st.binary(max_size=200).map(lambda b: ("body", b)), junk.map(lambda j: ("junk", j))), max_size=8),
    cuts=st.lists(st.integers(1, 64), max_size=30),
)
def test_framing_recovers_every_well_framed_message(items: list[tuple[str, bytes]], cuts: list[int]) -> None:
    stream = b"".join(frame(data) if kind == "body" else data for kind, data in items)
    framer, bodies, at = Framer(), [], 0
    for cut in [*cuts, len(stream)]:  # arbitrary read sizes
        bodies += [x for x in framer.feed(stream[at : at + cut]) if not isinstance(x, FramingError)]
        at += cut
    bodies += [x for x in framer.feed(stream[at:]) if not isinstance(x, FramingError)]
    assert bodies == [data for kind, data in items if kind == "body"]
