"""`tandem lsp`: a pygls language server serving inline completions from Tandem's engine.

`textDocument/inlineCompletion` (LSP 3.18, registered with options so it is advertised) and
`textDocument/completion` for clients without inline support. A newer request on a document,
or `$/cancelRequest`, cancels the one in flight, and with it the generation in the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
import time
from collections import Counter
from typing import Any, BinaryIO

from lsprotocol import types
from pygls.exceptions import JsonRpcInvalidParams
from pygls.io_ import StdoutWriter
from pygls.lsp.server import LanguageServer

from . import postprocess, transport
from .engine_client import EngineClient, EngineUnavailable, ServerInfo
from .generations import LINGER_SECONDS, Generation, Generations
from .positions import PositionError, offset_of
from .present import aligned, block_complete, has_first_line, suggestion
from .prompt import OpenDocument, Prompt, build
from .protocol import TandemProtocol, strict_converter
from .settings import Settings
from .warmup import Warmer

log = logging.getLogger("tandem.lsp")
VERSION = "0.1.0"
FEEDBACK = "tandem/completionFeedback"
STATS = "tandem/stats"
ENGINE_STATUS = "tandem/engineStatus"  # server -> client: {"state": "starting" | "ready" | "unreachable", "detail"}
CURSOR_MOVED = "tandem/cursorMoved"  # client -> server: {"uri", "line", "character"}, when the cursor comes to rest
BLOCK_WAIT_SECONDS = 0.8  # an explicit request waits this long for the whole block, then shows the lines written so far
# An explicit request with no whole line by then shows the whole words written so far. (As you
# type, the `lineWaitMs` setting: a line takes longer to decode on a CPU than the pause a developer
# gives a suggestion, and the rest comes as they type through the words, from the same generation.)
INVOKED_LINE_WAIT_SECONDS = 0.9
CONTEXT_CHARS = 4000  # of the text around the cursor, what post-processing looks at


class TandemLanguageServer(LanguageServer):
    protocol: TandemProtocol

    def __init__(self, settings: Settings, autostart: bool = True) -> None:
        super().__init__("tandem-lsp", VERSION, protocol_cls=TandemProtocol, converter_factory=strict_converter)
        self.settings, self.autostart = settings, autostart
        self.engine = EngineClient(settings.server_url, autostart)
        self.generations = Generations()
        self.warmer = Warmer(self._send_warm_up)
        self.inflight: dict[str, asyncio.Task[Any]] = {}
        self.edited: dict[str, float] = {}
        self.stats: Counter[str] = Counter()
        self.configured = asyncio.Event()  # set once the client's settings are in (or known absent)
        self.engine_state = "unknown"
        self.warm_up: asyncio.Future[None] | None = None

    # The transports: pygls's, but reading through lsp/transport.py's framing (any Content-Length,
    # garbage, an oversized message: skipped, and the server goes on) into TandemProtocol.

    def start_io(self, stdin: BinaryIO | None = None, stdout: BinaryIO | None = None) -> None:
        self._stop_event = threading.Event()
        self.protocol.set_writer(StdoutWriter(stdout or sys.stdout.buffer))
        try:
            asyncio.run(self._serve(transport.stdin_chunks(stdin or sys.stdin.buffer)))
        except BrokenPipeError:
            log.error("lost the client; shutting down")
        except (KeyboardInterrupt, SystemExit):
            pass
        finally:
            self.shutdown()

    def start_tcp(self, host: str, port: int) -> None:
        self._stop_event = threading.Event()

        async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.protocol.set_writer(writer)  # type: ignore[arg-type]
            try:
                await self._serve(transport.stream_chunks(reader))
            finally:
                self.shutdown()  # one client per server, as pygls

        async def listen() -> None:
            self._server = await asyncio.start_server(connection, host, port)
            async with self._server:
                await self._server.serve_forever()

        with contextlib.suppress(asyncio.CancelledError, KeyboardInterrupt):
            asyncio.run(listen())

    async def _serve(self, chunks: Any) -> None:
        assert self._stop_event is not None
        await transport.serve(chunks, self.protocol.handle_body, self.protocol.handle_framing_error, self._stop_event)

    def report_engine(self, state: str, detail: str = "") -> None:
        """Tell the client (VS Code's status bar) when the engine's state changes."""
        if state != self.engine_state:
            self.engine_state = state
            self.protocol.notify(ENGINE_STATUS, {"state": state, "detail": detail, "server_url": self.settings.server_url})

    async def engine_info(self) -> ServerInfo:
        """The engine's model info, starting the engine when none answers; reported to the client."""
        if self.engine.info is None:
            self.report_engine("starting", self.settings.server_url)
        try:
            info = await self.engine.ready()
        except EngineUnavailable as exc:
            self.report_engine("unreachable", str(exc))
            raise
        self.report_engine("ready", info.model)
        return info

    def apply(self, settings: Settings) -> None:
        if settings.server_url != self.settings.server_url:
            old = self.engine
            self.engine = EngineClient(settings.server_url, self.autostart)
            self.engine_state = "unknown"
            asyncio.ensure_future(old.close())
        switched_off = self.settings.enabled and not settings.enabled
        self.settings = settings
        if switched_off:  # off means nothing more is asked of the engine: not what was pending, either
            self.warmer.cancel_all()
            self.stats["generations_cancelled"] += self.generations.cancel_everywhere()

    async def suggest(self, uri: str, position: types.Position, whole_block: bool = False) -> tuple[str, str] | None:
        """(completion, request id) for the cursor, or None. Cancels this document's older request.
        `whole_block`: an explicit request, which may wait for a multi-line block; otherwise the
        first complete line is the answer (as-you-type)."""
        doc = self.workspace.text_documents.get(uri)
        if doc is None:
            self.stats["unknown_document"] += 1
            return None
        if not self.settings.enabled_for(doc.language_id or ""):
            return None
        source = doc.source
        try:
            offset = offset_of(source, position.line, position.character)
        except PositionError as exc:
            raise JsonRpcInvalidParams(str(exc)) from None
        self.warmer.cancel_pending()  # no warm-up goes out before a real request (in-flight ones: _start)
        current = asyncio.current_task()
        previous = self.inflight.get(uri)
        if previous is not None and previous is not current and not previous.done():
            previous.cancel()
            self.stats["superseded"] += 1
        if current is not None:
            self.inflight[uri] = current
        self.stats["requests"] += 1
        try:
            if not self.configured.is_set():  # the first request can race the settings' arrival
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.configured.wait(), 2.0)
            return await self._suggest(
                uri, doc.language_id or "", source[:offset], source[offset:], whole_block or not self.settings.first_line
            )
        except asyncio.CancelledError:
            self.stats["cancelled"] += 1
            raise
        finally:
            if self.inflight.get(uri) is current:
                del self.inflight[uri]

    async def _suggest(self, uri: str, language: str, prefix: str, suffix: str, whole_block: bool) -> tuple[str, str] | None:
        s = self.settings
        ctx = postprocess.Context(prefix[-CONTEXT_CHARS:], suffix[:CONTEXT_CHARS], s.multiline)
        found = self.generations.find(uri, prefix, suffix) if s.cache else None
        if found is not None:
            gen = found[0]
            answer = await self._answer(gen, prefix, suffix, ctx, whole_block)
            if gen.rest_after(prefix, suffix) is not None and (answer is not None or not gen.cut):
                self.stats["cache_hits"] += 1
                self.generations.hits += 1
                return (answer, gen.request_id) if answer else None
            # a generation cut short, with nothing usable from here: never an empty answer, make a new one
        self.generations.misses += 1
        self.stats["generations_cancelled"] += self.generations.cancel_live(uri)  # nothing here can use them
        try:
            info = await self.engine_info()
        except EngineUnavailable as exc:
            self._unavailable(exc)
            return None
        gen = self._start(uri, language, prefix, suffix, info)
        answer = await self._answer(gen, prefix, suffix, ctx, whole_block)
        if isinstance(gen.error, EngineUnavailable):
            self._unavailable(gen.error)
            return None
        return (answer, gen.request_id) if answer else None

    def _start(self, uri: str, language: str, prefix: str, suffix: str, info: ServerInfo) -> Generation:
        """A new generation for this document state, running in the background."""
        s = self.settings
        prompt = self._prompt(uri, language, prefix, suffix, info)
        self.warmer.cancel_all(keeping=prompt.prefix)  # except one prefilling this prompt's start
        stop = ["\n\n"] if s.multiline else ["\n"]
        below = next((line.strip() for line in suffix.split("\n", 8)[1:] if line.strip()), "")
        if len(below) >= 6:
            stop.append(below)  # the suffix drives the stopping: never write what already follows
        ctx = postprocess.Context(prompt.cursor_prefix, suffix, s.multiline)
        line_before = prompt.cursor_prefix[prompt.cursor_prefix.rfind("\n") + 1 :]
        pieces = aligned(
            self.engine.complete(prompt.prefix, prompt.suffix if info.fim else None, s.max_tokens, stop, document=uri),
            line_before if not line_before.strip() else None,
        )
        gen = Generation(uri, prefix, suffix)
        gen.task = asyncio.ensure_future(gen.run(pieces, lambda text: block_complete(text, ctx)))
        gen.task.add_done_callback(lambda task: self._ended(gen))
        self.generations.add(gen)
        self.stats["engine_calls"] += 1
        return gen

    def _ended(self, gen: Generation) -> None:
        if gen.stopped_early:
            self.stats["early_stops"] += 1

    def _prompt(self, uri: str, language: str, prefix: str, suffix: str, info: ServerInfo) -> Prompt:
        others = [
            OpenDocument(u, d.language_id or "", d.source, self.edited.get(u, 0.0))
            for u, d in self.workspace.text_documents.items()
            if u != uri and (d.language_id or "") == language
        ]
        return build(prefix, suffix, language, uri, others, budget_tokens=min(self.settings.prompt_tokens, info.context_length // 2))

    async def _answer(self, gen: Generation, prefix: str, suffix: str, ctx: postprocess.Context, whole_block: bool) -> str | None:
        """The suggestion `gen` gives for this state: once it is ready (a first line, or with
        `whole_block` the block) or the time budget is over; None when it has nothing usable."""

        def rest() -> str | None:
            return gen.rest_after(prefix, suffix)

        def ready() -> bool:
            r = rest()
            if r is None:
                return True  # it wrote something else than was typed: nothing to wait for
            return block_complete(r, ctx) if whole_block else has_first_line(r)

        def first_line() -> bool:
            r = rest()
            return r is None or has_first_line(r)

        def words() -> bool:
            r = rest()
            return r is None or bool(suggestion(r, ctx, whole_block=False, finished=gen.done and not gen.cut))

        budget = self.settings.time_budget_ms / 1000
        started = time.monotonic()

        def left(until: float) -> float:
            return max(min(until, budget) - (time.monotonic() - started), 0.0)

        try:
            if whole_block:  # the block if it comes soon; else its whole lines so far, once there is one
                in_time = await gen.wait(ready, left(BLOCK_WAIT_SECONDS))
                if not in_time:
                    in_time = await gen.wait(first_line, left(INVOKED_LINE_WAIT_SECONDS))
            else:
                in_time = await gen.wait(ready, left(self.settings.line_wait_ms / 1000))
            if not in_time:  # no whole line yet: its whole words, once there are some
                in_time = await gen.wait(words, left(budget))
                self.stats["partial_lines"] += in_time
        except asyncio.CancelledError:
            if gen.waiting == 0 and not gen.done:
                gen.abandoned = True  # it may still serve the next keystroke; reaped if none wants it
                asyncio.get_running_loop().call_later(LINGER_SECONDS + 0.05, self._reap)
            raise
        if not in_time:
            self.stats["time_budget_cuts"] += 1
        r = rest()
        if r is None:
            return None
        return suggestion(r, ctx, whole_block=whole_block, finished=gen.done and not gen.cut) or None

    def _reap(self) -> None:
        for gen in self.generations.unwanted(time.monotonic()):
            gen.cancel()
            self.stats["generations_reaped"] += 1

    def warm(self, uri: str, offset: int | None) -> None:
        """The cursor came to rest at `offset` (None: the document's last edit): warm the prompt there."""
        s = self.settings
        if not (s.enabled and s.warm_up and self.engine.info is not None):
            return

        def prompt() -> tuple[str, str | None] | None:
            doc = self.workspace.text_documents.get(uri)
            info = self.engine.info
            if doc is None or info is None or not s.enabled_for(doc.language_id or ""):
                return None
            source = doc.source
            at = min(max(offset if offset is not None else len(source), 0), len(source))
            prefix, suffix = source[:at], source[at:]
            if self.generations.find(uri, prefix, suffix) is not None:
                return None  # a request was here already: its prompt is in the engine's cache
            built = self._prompt(uri, doc.language_id or "", prefix, suffix, info)
            return built.prefix, built.suffix if info.fim else None

        self.warmer.schedule(uri, prompt)

    async def _send_warm_up(self, prompt: str, suffix: str | None, uri: str) -> None:
        async for _ in self.engine.complete(prompt, suffix, 1, [], background=True, document=uri):
            pass

    def _unavailable(self, exc: EngineUnavailable) -> None:
        """No suggestion: counted, shown in the status bar and said in the client's log."""
        self.stats["engine_unavailable"] += 1
        self.report_engine("unreachable", str(exc))
        self.window_log_message(types.LogMessageParams(types.MessageType.Warning, f"Tandem: {exc}"))


def create_server(settings: Settings, autostart: bool = True) -> TandemLanguageServer:
    server = TandemLanguageServer(settings, autostart)

    @server.feature(types.INITIALIZED)
    async def initialized(ls: TandemLanguageServer, params: types.InitializedParams) -> None:
        await _load_configuration(ls)
        ls.warm_up = asyncio.ensure_future(_warm_up(ls))  # the engine is ready (or started) before the first keystroke

    @server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
    async def configuration_changed(ls: TandemLanguageServer, params: types.DidChangeConfigurationParams) -> None:
        await _load_configuration(ls)
        if ls.engine_state == "unknown":  # a new server URL
            ls.warm_up = asyncio.ensure_future(_warm_up(ls))

    @server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
    def changed(ls: TandemLanguageServer, params: types.DidChangeTextDocumentParams) -> None:
        uri = params.text_document.uri
        ls.edited[uri] = time.monotonic()
        ls.warm(uri, _edit_end(ls, uri, params.content_changes))

    @server.feature(CURSOR_MOVED)
    def cursor_moved(ls: TandemLanguageServer, params: Any) -> None:
        uri, line, character = (getattr(params, k, None) for k in ("uri", "line", "character"))
        doc = ls.workspace.text_documents.get(uri) if isinstance(uri, str) else None
        if doc is None or not (isinstance(uri, str) and isinstance(line, int) and isinstance(character, int)):
            return
        with contextlib.suppress(PositionError):
            ls.warm(uri, offset_of(doc.source, line, character))

    @server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
    def closed(ls: TandemLanguageServer, params: types.DidCloseTextDocumentParams) -> None:
        ls.edited.pop(params.text_document.uri, None)
        ls.generations.forget(params.text_document.uri)

    @server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
    async def inline_completion(ls: TandemLanguageServer, params: types.InlineCompletionParams) -> types.InlineCompletionList | None:
        invoked = params.context is not None and params.context.trigger_kind == types.InlineCompletionTriggerKind.Invoked
        found = await ls.suggest(params.text_document.uri, params.position, whole_block=invoked)
        if found is None:
            return types.InlineCompletionList(items=[])
        text, request_id = found
        item = types.InlineCompletionItem(
            insert_text=text,
            range=types.Range(params.position, params.position),
            command=types.Command(title="Tandem: suggestion accepted", command="tandem.accepted", arguments=[request_id]),
        )
        return types.InlineCompletionList(items=[item])

    @server.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions(trigger_characters=[".", "(", "="]))
    async def completion(ls: TandemLanguageServer, params: types.CompletionParams) -> types.CompletionList:
        found = await ls.suggest(params.text_document.uri, params.position)
        if found is None:
            return types.CompletionList(is_incomplete=True, items=[])
        text, request_id = found
        label = text.strip().split("\n", 1)[0][:60]
        item = types.CompletionItem(
            label=label,
            insert_text=text,
            kind=types.CompletionItemKind.Text,
            detail="Tandem",
            sort_text="0",
            filter_text=text,
            data={"request_id": request_id},
        )
        return types.CompletionList(is_incomplete=True, items=[item])

    @server.feature(FEEDBACK)
    async def feedback(ls: TandemLanguageServer, params: Any) -> None:
        request_id, event = getattr(params, "request_id", None), getattr(params, "event", None)
        if isinstance(request_id, str) and event in ("accepted", "dismissed"):
            ls.stats[event] += 1
            await ls.engine.feedback(request_id, event)

    @server.feature(STATS)
    def stats(ls: TandemLanguageServer, params: Any) -> dict[str, Any]:
        return {
            **ls.stats,
            "cache_hits_total": ls.generations.hits,
            "cache_misses_total": ls.generations.misses,
            "warmups_sent": ls.warmer.sent,
            "warmups_cancelled": ls.warmer.cancelled,
            "warmups_skipped": ls.warmer.skipped,
            "warmups_in_flight": ls.warmer.in_flight,
            "generations_running": ls.generations.running(),
            "engine_started_here": ls.engine.started_server,
            "server_url": ls.settings.server_url,
            "engine_state": ls.engine_state,
            "enabled": ls.settings.enabled,
            "max_tokens": ls.settings.max_tokens,
        }  # (the settings in effect)

    return server


def _edit_end(ls: TandemLanguageServer, uri: str, changes: Any) -> int | None:
    """Where the cursor is after an edit: the end of the last change's new text (None when unknown)."""
    doc = ls.workspace.text_documents.get(uri)
    if doc is None or not changes:
        return None
    last = changes[-1]
    if not isinstance(last, types.TextDocumentContentChangePartial):
        return None
    try:
        return offset_of(doc.source, last.range.start.line, last.range.start.character) + len(last.text)
    except PositionError:
        return None


async def _warm_up(ls: TandemLanguageServer) -> None:
    with contextlib.suppress(EngineUnavailable):
        await ls.engine_info()


async def _load_configuration(ls: TandemLanguageServer) -> None:
    try:
        caps = ls.client_capabilities.workspace if ls.client_capabilities else None
        if not (caps and caps.configuration):
            return
        (section,) = await ls.workspace_configuration_async(types.ConfigurationParams(items=[types.ConfigurationItem(section="tandem")]))
        ls.apply(ls.settings.updated(_plain(section)))
    except Exception as exc:  # a client that fails the request keeps the defaults
        log.warning("workspace/configuration failed: %s", exc)
    finally:
        ls.configured.set()


def _plain(value: Any) -> Any:
    """pygls hands untyped JSON results over as named tuples; settings want dicts and lists."""
    if hasattr(value, "_asdict"):
        return {k: _plain(v) for k, v in value._asdict().items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
