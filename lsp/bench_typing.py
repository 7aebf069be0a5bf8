"""`tandem bench-typing`: replay typing a real Python file, one character at a time at a typing
pace, through the real language server against a real server on the default model. It reports
keystroke-to-suggestion latency (p50/p95 of the requests that were answered), the share of
requests cancelled because the next keystroke came first, and the cache hit rate, with the
completion cache and the engine's prefix reuse on and off. A benchmark, not a test."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

import httpx
from lsprotocol import types
from pygls.lsp.client import LanguageClient

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_server(prefix_cache: bool, home: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    args = [sys.executable, "-m", "server.cli", "serve", "--port", str(port), "--audit-dir", str(home / f"audit-{port}"),
            "--dialog-dir", str(home / f"dialog-{port}"), "--log-level", "warning"]
    if not prefix_cache:
        args += ["--prefix-cache-tokens", "0"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("tandem serve did not start")
        time.sleep(0.25)


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


async def replay(url: str, text: str, start: int, chars: int, interval: float, pause: float, cache: bool) -> dict[str, Any]:
    client = LanguageClient("tandem-bench", "0.1")
    settings = {"maxTokens": 24, "multiline": True, "timeBudgetMs": 2000, "cache": cache}

    @client.feature(types.WORKSPACE_CONFIGURATION)
    def configuration(params: types.ConfigurationParams) -> list[Any]:
        return [settings for _ in params.items]

    await client.start_io(sys.executable, "-m", "server.cli", "lsp", "--server-url", url, "--no-autostart")
    caps = types.ClientCapabilities(workspace=types.WorkspaceClientCapabilities(configuration=True),
                                    text_document=types.TextDocumentClientCapabilities(inline_completion=types.InlineCompletionClientCapabilities()))
    await client.initialize_async(types.InitializeParams(capabilities=caps, process_id=os.getpid()))
    client.initialized(types.InitializedParams())
    uri = "file:///bench/typed.py"
    doc = text[:start] + text[start + chars:]
    client.text_document_did_open(types.DidOpenTextDocumentParams(types.TextDocumentItem(uri=uri, language_id="python", version=1, text=doc)))
    latencies: list[float] = []
    pending: list[asyncio.Task[Any]] = []
    cancelled = answered = 0

    async def ask(line: int, character: int) -> None:
        nonlocal cancelled, answered
        t0 = time.perf_counter()
        try:
            await client.text_document_inline_completion_async(types.InlineCompletionParams(
                text_document=types.TextDocumentIdentifier(uri=uri), position=types.Position(line=line, character=character),
                context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic)))
            latencies.append(time.perf_counter() - t0)
            answered += 1
        except Exception:  # superseded by the next keystroke, or cancelled
            cancelled += 1

    await asyncio.sleep(1.0)
    for i in range(chars):
        before = text[: start + i]
        ch = text[start + i]
        line = before.count("\n")
        character = _utf16_len(before[before.rfind("\n") + 1:])
        end = types.Position(line, character)
        client.text_document_did_change(types.DidChangeTextDocumentParams(
            types.VersionedTextDocumentIdentifier(version=i + 2, uri=uri), [types.TextDocumentContentChangePartial(range=types.Range(end, end), text=ch)]))
        after = before + ch
        pos = (after.count("\n"), _utf16_len(after[after.rfind("\n") + 1:]))
        pending.append(asyncio.ensure_future(ask(*pos)))
        await asyncio.sleep(pause if ch == "\n" else interval)  # people pause at the end of a line
    done, late = await asyncio.wait(pending, timeout=30)
    for task in late:  # an answer that never came is counted, not waited for forever
        task.cancel()
    stats = await asyncio.wait_for(client.protocol.send_request_async("tandem/stats", None), 10)
    stats = stats._asdict() if hasattr(stats, "_asdict") else dict(stats)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.shutdown_async(None), 10)
        client.exit(None)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.stop(), 10)
    lat = sorted(latencies)
    return {
        "requests": chars, "answered": answered, "cancelled": cancelled, "unanswered": len(late), "cancelled_share": cancelled / chars,
        "p50_ms": statistics.median(lat) * 1000 if lat else None,
        "p95_ms": lat[min(len(lat) - 1, int(0.95 * len(lat)))] * 1000 if lat else None,
        "cache_hits": stats.get("cache_hits", 0), "cache_hit_rate": stats.get("cache_hits", 0) / max(stats.get("requests", 1), 1),
        "engine_calls": stats.get("engine_calls", 0), "early_stops": stats.get("early_stops", 0),
    }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def run(args: argparse.Namespace) -> int:
    path = Path(args.file) if args.file else Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py"
    text = path.read_text()
    start = text.index(args.start_at) if args.start_at else len(text) // 2
    home = Path(args.work_dir)
    home.mkdir(parents=True, exist_ok=True)
    rows = []
    for prefix_cache in (True, False):
        proc, url = _start_server(prefix_cache, home)
        try:
            for cache in (True, False):
                result = asyncio.run(replay(url, text, start, args.chars, args.interval_ms / 1000, args.pause_ms / 1000, cache))
                rows.append({"completion_cache": cache, "prefix_reuse": prefix_cache, **result})
                print(json.dumps(rows[-1]), flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    lines = [f"Typing replay: {args.chars} characters of {path.name} at one every {args.interval_ms} ms with a {args.pause_ms} ms pause "
             "at each line end, default model, an inline completion request per keystroke (maxTokens 24, time budget 2 s)", "",
             "| completion cache | engine prefix reuse | p50 ms | p95 ms | answered | cancelled share | cache hit rate | engine calls |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {'on' if r['completion_cache'] else 'off'} | {'on' if r['prefix_reuse'] else 'off'} | {_ms(r['p50_ms'])} | {_ms(r['p95_ms'])} | "
                     f"{r['answered']} | {r['cancelled_share']:.0%} | {r['cache_hit_rate']:.0%} | {r['engine_calls']} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "typing.md").write_text(table + "\n")
        (out / "typing.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("bench-typing", help="replay typing a Python file through the language server: latency, cancellations, cache hits")
    p.add_argument("--file", help="default: the standard library's textwrap.py")
    p.add_argument("--start-at", default="def dedent(text):", help="where in the file the typing starts")
    p.add_argument("--chars", type=int, default=200, help="characters typed per run")
    p.add_argument("--interval-ms", type=int, default=120, help="time between keystrokes (120 ms is about 100 words a minute)")
    p.add_argument("--pause-ms", type=int, default=2500, help="pause after each line")
    p.add_argument("--work-dir", default="bench-out/typing-work")
    p.add_argument("--out", default="bench-out")
    p.set_defaults(func=run, log_level="warning")
