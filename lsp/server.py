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
from .cache import CompletionCache
from .engine_client import EngineClient, EngineUnavailable, ServerInfo
from .positions import PositionError, offset_of
from .prompt import OpenDocument, build
from .protocol import TandemProtocol, strict_converter
from .settings import Settings

log = logging.getLogger("tandem.lsp")
VERSION = "0.1.0"
FEEDBACK = "tandem/completionFeedback"
STATS = "tandem/stats"
ENGINE_STATUS = "tandem/engineStatus"  # server -> client: {"state": "starting" | "ready" | "unreachable", "detail"}


class TandemLanguageServer(LanguageServer):
    protocol: TandemProtocol

    def __init__(self, settings: Settings, autostart: bool = True) -> None:
        super().__init__("tandem-lsp", VERSION, protocol_cls=TandemProtocol, converter_factory=strict_converter)
        self.settings, self.autostart = settings, autostart
        self.engine = EngineClient(settings.server_url, autostart)
        self.cache = CompletionCache()
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
        self.settings = settings

    async def suggest(self, uri: str, position: types.Position) -> tuple[str, str] | None:
        """(completion, request id) for the cursor, or None. Cancels this document's older request."""
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
            return await self._suggest(uri, doc.language_id or "", source[:offset], source[offset:])
        except asyncio.CancelledError:
            self.stats["cancelled"] += 1
            raise
        finally:
            if self.inflight.get(uri) is current:
                del self.inflight[uri]

    async def _suggest(self, uri: str, language: str, prefix: str, suffix: str) -> tuple[str, str] | None:
        s = self.settings
        if s.cache:
            hit = self.cache.get(uri, prefix, suffix)
            if hit is not None:
                self.stats["cache_hits"] += 1
                return (hit.completion, hit.request_id) if hit.completion else None
        try:
            info = await self.engine_info()
        except EngineUnavailable as exc:
            self._unavailable(exc)
            return None
        others = [OpenDocument(u, d.language_id or "", d.source, self.edited.get(u, 0.0)) for u, d in self.workspace.text_documents.items()]
        prompt = build(prefix, suffix, language, uri, others, budget_tokens=min(1536, info.context_length // 2))
        stop = ["\n\n"] if s.multiline else ["\n"]
        below = next((line.strip() for line in suffix.split("\n")[1:] if line.strip()), "")
        if len(below) >= 6:
            stop.append(below)  # the suffix drives the stopping: never write what already follows
        ctx = postprocess.Context(prompt.cursor_prefix, suffix, s.multiline)
        raw, request_id = "", ""
        self.stats["engine_calls"] += 1
        try:
            async with asyncio.timeout(s.time_budget_ms / 1000):
                async for request_id, piece in self.engine.complete(prompt.prefix, prompt.suffix if info.fim else None, s.max_tokens, stop):
                    raw += piece
                    if _plainly_complete(raw, ctx):
                        self.stats["early_stops"] += 1
                        break  # leaving the stream cancels the rest of the generation
        except TimeoutError:
            self.stats["time_budget_cuts"] += 1
            raw = raw[: raw.rfind("\n")] if "\n" in raw else raw
        except EngineUnavailable as exc:
            self._unavailable(exc)
            return None
        completion = postprocess.postprocess(raw, ctx)
        if s.cache:
            self.cache.put(uri, prefix, suffix, completion, request_id)
        return (completion, request_id) if completion else None


    def _unavailable(self, exc: EngineUnavailable) -> None:
        """No suggestion: counted, shown in the status bar and said in the client's log."""
        self.stats["engine_unavailable"] += 1
        self.report_engine("unreachable", str(exc))
        self.window_log_message(types.LogMessageParams(types.MessageType.Warning, f"Tandem: {exc}"))


def _plainly_complete(raw: str, ctx: postprocess.Context) -> bool:
    """The block has ended: a finished line after which the scope filter would cut anyway."""
    if "\n" not in raw:
        return False
    if not ctx.multiline:
        return True
    complete = raw[: raw.rfind("\n")]
    return "\n" in complete and postprocess.limit_scope(complete, ctx) != complete


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
        ls.edited[params.text_document.uri] = time.monotonic()

    @server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
    def closed(ls: TandemLanguageServer, params: types.DidCloseTextDocumentParams) -> None:
        ls.edited.pop(params.text_document.uri, None)
        ls.cache.forget(params.text_document.uri)

    @server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
    async def inline_completion(ls: TandemLanguageServer, params: types.InlineCompletionParams) -> types.InlineCompletionList | None:
        found = await ls.suggest(params.text_document.uri, params.position)
        if found is None:
            return types.InlineCompletionList(items=[])
        text, request_id = found
        item = types.InlineCompletionItem(insert_text=text, range=types.Range(params.position, params.position),
                                          command=types.Command(title="Tandem: suggestion accepted", command="tandem.accepted", arguments=[request_id]))
        return types.InlineCompletionList(items=[item])

    @server.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions(trigger_characters=[".", "(", "="]))
    async def completion(ls: TandemLanguageServer, params: types.CompletionParams) -> types.CompletionList:
        found = await ls.suggest(params.text_document.uri, params.position)
        if found is None:
            return types.CompletionList(is_incomplete=True, items=[])
        text, request_id = found
        label = text.strip().split("\n", 1)[0][:60]
        item = types.CompletionItem(label=label, insert_text=text, kind=types.CompletionItemKind.Text, detail="Tandem",
                                    sort_text="0", filter_text=text, data={"request_id": request_id})
        return types.CompletionList(is_incomplete=True, items=[item])

    @server.feature(FEEDBACK)
    async def feedback(ls: TandemLanguageServer, params: Any) -> None:
        request_id, event = getattr(params, "request_id", None), getattr(params, "event", None)
        if isinstance(request_id, str) and event in ("accepted", "dismissed"):
            ls.stats[event] += 1
            await ls.engine.feedback(request_id, event)

    @server.feature(STATS)
    def stats(ls: TandemLanguageServer, params: Any) -> dict[str, Any]:
        return {**ls.stats, "cache_hits_total": ls.cache.hits, "cache_misses_total": ls.cache.misses,
                "engine_started_here": ls.engine.started_server, "server_url": ls.settings.server_url, "engine_state": ls.engine_state}

    return server


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
