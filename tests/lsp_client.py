"""Starting the real language server under a real LSP client (pytest-lsp), for tests and the benchmark."""

from __future__ import annotations

import asyncio
import sys
from typing import Any, cast

from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient, client_capabilities

from tests.conftest import ROOT
from tests.waiting import eventually_async


class TandemClient(LanguageClient):
    """pytest-lsp's client as these tests hold it: what `start_lsp` records on it, typed."""

    engine_status: list[dict[str, Any]]  # every tandem/engineStatus notification, in order
    initialize_result: types.InitializeResult


def text_of(item: types.InlineCompletionItem) -> str:
    """An inline suggestion's text (the server sends plain strings, never snippets)."""
    assert isinstance(item.insert_text, str), item.insert_text
    return item.insert_text


async def start_lsp(
    server_url: str, *extra: str, env: dict[str, str] | None = None, settings: dict[str, Any] | None = None
) -> TandemClient:
    config = ClientServerConfig(
        server_command=[sys.executable, "-m", "server.cli", "lsp", "--server-url", server_url, *extra], server_env=env
    )
    client = cast(TandemClient, await config.start())
    client.engine_status = []

    @client.feature("tandem/engineStatus")
    def engine_status(params: Any) -> None:
        client.engine_status.append(params._asdict() if hasattr(params, "_asdict") else dict(params))

    if settings is not None:
        client.set_configuration(settings, section="tandem")
    caps = client_capabilities("visual-studio-code")
    caps.text_document.inline_completion = types.InlineCompletionClientCapabilities()
    client.initialize_result = await client.initialize_session(
        types.InitializeParams(capabilities=caps, root_uri=ROOT.as_uri(), process_id=None)
    )
    return client


def open_doc(client: LanguageClient, uri: str, text: str, language: str = "python", version: int = 1) -> None:
    client.text_document_did_open(
        types.DidOpenTextDocumentParams(types.TextDocumentItem(uri=uri, language_id=language, version=version, text=text))
    )


def inline_params(uri: str, line: int, character: int) -> types.InlineCompletionParams:
    return types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri),
        position=types.Position(line, character),
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic),
    )


def suggest_once(server_url: str, uri: str, text: str, line: int, character: int) -> str:
    """One inline suggestion from a fresh `tandem lsp` against a server that is already up (a
    generous time budget: the first request there may be slow), as the editor would ask for it."""

    async def ask() -> str:
        client = await start_lsp(server_url, "--no-autostart", settings={"timeBudgetMs": 30_000, "lineWaitMs": 30_000})
        try:
            open_doc(client, uri, text)
            result = await client.text_document_inline_completion_async(inline_params(uri, line, character))
            assert result is not None and result.items, result
            return text_of(result.items[0])
        finally:
            await client.shutdown_session()

    return asyncio.run(ask())


def end_of(text: str) -> tuple[int, int]:
    """(line, UTF-16 character) of the end of text."""
    lines = text.split("\n")
    return len(lines) - 1, len(lines[-1].encode("utf-16-le")) // 2


async def stats(client: LanguageClient) -> dict[str, Any]:
    """The language server's own counters (`tandem/stats`)."""
    result = await client.protocol.send_request_async("tandem/stats", None)
    return result._asdict() if hasattr(result, "_asdict") else dict(result)


async def wait_until(check: Any, timeout: float = 20) -> None:
    """Until `check()` (a value, or an awaitable of one) is true; fails after `timeout` seconds."""
    await eventually_async(check, "the language server's state", timeout)
