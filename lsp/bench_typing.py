"""`tandem bench-typing`: replay typing real Python files from libraries this project does not use
(so nothing here was tuned on them), one character at a time at a typing pace, through the real
language server against a real `tandem serve`, for each configuration of the completion toggles.
A benchmark, not a test: it prints a Markdown table and writes JSON. Its helpers (the files, the
positions inside function bodies, the servers, an LSP session) are shared with bench_quality.py.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import contextlib
import importlib.metadata
import importlib.util
import io
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import time
import tokenize
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any

import httpx
from lsprotocol import types
from pygls.lsp.client import LanguageClient

ROOT = Path(__file__).resolve().parent.parent

# Fixed files inside packages that come into .venv only as dependencies of dependencies (torch's),
# resolved through importlib so a fresh venv finds them; their versions go into the JSON.
SOURCES: tuple[tuple[str, str], ...] = (
    ("networkx", "algorithms/dag.py"),
    ("sympy", "utilities/iterables.py"),
    ("jinja2", "lexer.py"),
    ("mpmath", "libmp/libintmath.py"),
)


# ----- the code typed and completed ------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    package: str
    relpath: str
    version: str
    path: Path
    text: str = field(repr=False)

    @property
    def name(self) -> str:
        return f"{self.package}/{self.relpath}"


def load_sources(count: int | None = None) -> list[Source]:
    out = []
    for package, relpath in SOURCES[:count]:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError(f"{package} is not installed in this environment (it comes with torch)")
        path = Path(next(iter(spec.submodule_search_locations))) / relpath
        out.append(Source(package, relpath, importlib.metadata.version(package), path, path.read_text(encoding="utf-8")))
    return out


def _string_interiors(text: str) -> set[int]:
    """1-based lines that lie inside a multi-line string after its first line (removing one
    would not remove a line of code)."""
    inside: set[int] = set()
    start: tuple[int, int] | None = None
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        name = tokenize.tok_name[tok.type]
        if name == "FSTRING_START":
            start = tok.start
        elif name in ("STRING", "FSTRING_END"):
            first = tok.start[0] if name == "STRING" else (start or tok.start)[0]
            inside.update(range(first + 1, tok.end[0] + 1))
    return inside


def _functions(tree: ast.AST) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return sorted((n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))), key=lambda n: n.lineno)


def _code_body(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> list[ast.stmt]:
    body = fn.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
        body = body[1:]  # the docstring is not code to complete
    return body


@cache
def body_lines(text: str) -> tuple[int, ...]:
    """0-based indices of the lines that can be completed: inside a function body after its
    docstring, non-blank, not a comment, not inside a multi-line string."""
    lines = text.split("\n")
    strings = _string_interiors(text)
    found: set[int] = set()
    for fn in _functions(ast.parse(text)):
        body = _code_body(fn)
        if not body:
            continue
        for lineno in range(body[0].lineno, (fn.end_lineno or body[0].lineno) + 1):
            stripped = lines[lineno - 1].strip()
            if stripped and not stripped.startswith("#") and lineno not in strings and lines[lineno - 1][:1] in (" ", "\t"):
                found.add(lineno - 1)
    return tuple(sorted(found))


@dataclass(frozen=True)
class Position:
    """A line removed from a function body; the cursor at its indentation, the rest of the file
    (from the line's newline on) as the suffix."""

    source: Source
    line: int  # 0-based
    indent: str
    removed: str  # the line's code, without its indentation
    prefix: str = field(repr=False)
    suffix: str = field(repr=False)

    @property
    def document(self) -> str:
        return self.prefix + self.suffix

    @property
    def character(self) -> int:
        return utf16_len(self.indent)


def position_at(source: Source, line: int) -> Position:
    text = source.text
    start = 0
    for _ in range(line):
        start = text.index("\n", start) + 1
    end = text.find("\n", start)
    end = len(text) if end < 0 else end
    content = text[start:end]
    indent = content[: len(content) - len(content.lstrip(" \t"))]
    return Position(source, line, indent, content.strip(), text[: start + len(indent)], text[end:])


def select_positions(sources: list[Source], count: int, seed: int) -> list[Position]:
    """`count` positions spread evenly over the files, drawn with `seed` (same files, same seed:
    same positions), in file order."""
    rng = random.Random(seed)
    out: list[Position] = []
    for i, source in enumerate(sources):
        quota = count // len(sources) + (1 if i < count % len(sources) else 0)
        candidates = body_lines(source.text)
        out += [position_at(source, line) for line in sorted(rng.sample(candidates, min(quota, len(candidates))))]
    return out


def typing_span(text: str, chars: int) -> tuple[int, int]:
    """(start, end) offsets of the text typed: from the indentation of the first code line of a
    function in the middle of the file whose code is long enough, to the end of the line where
    `chars` characters are reached."""
    lines = text.split("\n")
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line) + 1)
    spans = []
    for fn in _functions(ast.parse(text)):
        body = _code_body(fn)
        if not body:
            continue
        first = body[0].lineno - 1
        start = offsets[first] + len(lines[first]) - len(lines[first].lstrip(" \t"))
        end = offsets[fn.end_lineno or first + 1] - 1
        if end - start >= chars:
            spans.append((start, end))
    if not spans:
        raise RuntimeError("no function with that much code")
    start, fn_end = spans[len(spans) // 2]
    end = text.find("\n", start + chars)
    return start, min(fn_end, end if end >= 0 else len(text))


def keystrokes(text: str, start: int, end: int) -> list[tuple[int, int, bool]]:
    """(offset, length, ends a line) per keystroke: one character each, except that Enter brings
    the next line's indentation with it, as an editor's auto-indent does."""
    out = []
    i = start
    while i < end:
        if text[i] == "\n":
            j = i + 1
            while j < end and text[j] in " \t":
                j += 1
            out.append((i, j - i, True))
            i = j
        else:
            out.append((i, 1, False))
            i += 1
    return out


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def line_col(text: str) -> tuple[int, int]:
    """(line, UTF-16 character) of the end of text."""
    return text.count("\n"), utf16_len(text[text.rfind("\n") + 1 :])


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


# ----- the servers ----------------------------------------------------------------------------


def stop_on_sigterm() -> None:
    """SIGTERM (a `timeout`, a killed job) ends the run through its `finally`s, which stop the
    servers it started instead of leaving them running."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@cache
def serve_help() -> str:
    return subprocess.run(
        [sys.executable, "-m", "server.cli", "serve", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    ).stdout


def serve_has(flag: str) -> bool:
    return re.search(rf"(^|\s){re.escape(flag)}(\s|=|$)", serve_help(), re.MULTILINE) is not None


def lsp_setting_available(key: str) -> bool:
    """Whether the language server's settings take `tandem.<key>` (unknown keys are ignored)."""
    from .settings import Settings

    base = Settings()
    return any(base.updated({key: value}) != base for value in (True, False))


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    url: str
    decode_step: str
    log: Path

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def decode_step(url: str) -> str:
    with contextlib.suppress(httpx.HTTPError):
        for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
            m = re.match(r'tandem_decode_step_info\{step="(\w+)"\} 1(\.0)?$', line)
            if m:
                return m.group(1)
    return "unknown"


def prompt_tokens(url: str) -> dict[str, float]:
    """The engine's prompt-token counters: computed, and served from its prefix cache."""
    found = {"prefill": 0.0, "reused": 0.0}
    with contextlib.suppress(httpx.HTTPError):
        for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
            m = re.match(r"tandem_(prefill_tokens|prefix_cache_reused_tokens)(?:_total)? (\S+)$", line)
            if m:
                found["prefill" if m.group(1) == "prefill_tokens" else "reused"] = float(m.group(2))
    return found


def reused_share(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    prefill, reused = after["prefill"] - before["prefill"], after["reused"] - before["reused"]
    return {"prefill_tokens": prefill, "reused_tokens": reused, "reused_share": reused / (prefill + reused) if prefill + reused else 0.0}


def start_server(
    home: Path,
    model: str | None = None,
    speculative: bool | None = None,
    prefix_cache: bool = True,
    compile_wait: float = 0.0,
    quant: str | None = None,
) -> Served:
    """`tandem serve` on a free port; `speculative` is passed only when serve lists the flag.
    With compile_wait > 0, wait (that long at most) for the compiled one-row decode step, the
    step a long-running server decodes with; 0 runs it eager (--no-compile)."""
    port = free_port()
    args = [
        sys.executable,
        "-m",
        "server.cli",
        "serve",
        "--port",
        str(port),
        "--audit-dir",
        str(home / f"audit-{port}"),
        "--dialog-dir",
        str(home / f"dialog-{port}"),
        "--log-level",
        "warning",
        "--no-demo-site",
    ]
    if model not in (None, "default"):
        args += ["--model", str(model)]
    if quant:
        args += ["--quant", quant]
    if not prefix_cache:
        args += ["--prefix-cache-tokens", "0"]
    if speculative is not None and serve_has("--speculative"):
        args += ["--speculative", "on" if speculative else "off"]
    if compile_wait <= 0:
        args.append("--no-compile")
    home.mkdir(parents=True, exist_ok=True)
    log = home / f"serve-{port}.log"
    proc = subprocess.Popen(args, cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        return _wait_ready(proc, args, log, port, compile_wait)
    except BaseException:  # stopped while starting (SIGTERM, Ctrl-C): not left running
        proc.kill()
        raise


def _wait_ready(proc: subprocess.Popen[bytes], args: list[str], log: Path, port: int, compile_wait: float) -> Served:
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 900  # a model's first start converts its GGUF file
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"tandem serve did not start ({' '.join(args[3:])}); see {log}: " + log.read_text(errors="replace")[-600:])
        time.sleep(0.25)
    step = decode_step(url)
    until = time.monotonic() + compile_wait
    while compile_wait > 0 and step == "eager" and time.monotonic() < until:
        time.sleep(2)
        step = decode_step(url)
    return Served(proc, url, step, log)


def model_info(url: str) -> dict[str, Any]:
    (model,) = httpx.get(f"{url}/v1/models", timeout=10).json()["data"]
    return dict(model)


# ----- a language-server session ------------------------------------------------------------


class LspSession:
    """The real `tandem lsp` over stdio under pygls's client, with `tandem.*` settings answered
    through workspace/configuration."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings
        self.client = LanguageClient("tandem-bench", "0.1")
        self.versions: dict[str, int] = {}

        @self.client.feature(types.WORKSPACE_CONFIGURATION)
        def configuration(params: types.ConfigurationParams) -> list[Any]:
            return [self.settings for _ in params.items]

        @self.client.feature("tandem/engineStatus")
        def engine_status(params: Any) -> None:
            pass

        @self.client.feature(types.WINDOW_LOG_MESSAGE)
        def log_message(params: Any) -> None:
            pass

    async def start(self, url: str) -> LspSession:
        await self.client.start_io(
            sys.executable, "-m", "server.cli", "lsp", "--server-url", url, "--no-autostart", "--log-level", "error", cwd=str(ROOT)
        )
        server = getattr(self.client, "_server", None)
        if server is not None and server.stderr is not None:  # drained, so a chatty server never blocks on a full pipe
            self._stderr = asyncio.ensure_future(self._drain(server.stderr))
        caps = types.ClientCapabilities(
            workspace=types.WorkspaceClientCapabilities(configuration=True),
            text_document=types.TextDocumentClientCapabilities(inline_completion=types.InlineCompletionClientCapabilities()),
        )
        await asyncio.wait_for(self.client.initialize_async(types.InitializeParams(capabilities=caps, process_id=os.getpid())), 60)
        self.client.initialized(types.InitializedParams())
        return self

    @staticmethod
    async def _drain(stream: asyncio.StreamReader) -> None:
        while await stream.read(65536):
            pass

    def open(self, uri: str, text: str) -> None:
        self.versions[uri] = 1
        self.client.text_document_did_open(
            types.DidOpenTextDocumentParams(types.TextDocumentItem(uri=uri, language_id="python", version=1, text=text))
        )

    def insert(self, uri: str, at: tuple[int, int], text: str) -> None:
        self.versions[uri] += 1
        pos = types.Position(*at)
        self.client.text_document_did_change(
            types.DidChangeTextDocumentParams(
                types.VersionedTextDocumentIdentifier(version=self.versions[uri], uri=uri),
                [types.TextDocumentContentChangePartial(range=types.Range(pos, pos), text=text)],
            )
        )

    def rest(self, uri: str, line: int, character: int) -> None:
        """The cursor came to rest here (what the VS Code extension sends; the server warms the
        prompt there when warmUp is on, and ignores it otherwise)."""
        self.client.protocol.notify("tandem/cursorMoved", {"uri": uri, "line": line, "character": character})

    def close(self, uri: str) -> None:
        self.client.text_document_did_close(types.DidCloseTextDocumentParams(types.TextDocumentIdentifier(uri=uri)))

    async def ask(self, uri: str, line: int, character: int, invoked: bool = False, timeout: float = 60) -> str:
        """The first item's text ("" for no item); raises when the request is cancelled or fails."""
        kind = types.InlineCompletionTriggerKind.Invoked if invoked else types.InlineCompletionTriggerKind.Automatic
        result = await asyncio.wait_for(
            self.client.text_document_inline_completion_async(
                types.InlineCompletionParams(
                    text_document=types.TextDocumentIdentifier(uri=uri),
                    position=types.Position(line=line, character=character),
                    context=types.InlineCompletionContext(trigger_kind=kind),
                )
            ),
            timeout,
        )
        items = list(result.items if isinstance(result, types.InlineCompletionList) else result or [])
        if not items:
            return ""
        text = items[0].insert_text
        return text if isinstance(text, str) else text.value

    async def stats(self) -> dict[str, Any]:
        stats = await asyncio.wait_for(self.client.protocol.send_request_async("tandem/stats", None), 10)
        return stats._asdict() if hasattr(stats, "_asdict") else dict(stats)

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.client.shutdown_async(None), 10)
            self.client.exit(None)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.client.stop(), 10)


# ----- the typing replay -------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    name: str
    first_line: bool = False
    warm_up: bool = False
    speculative: bool = False
    cache: bool = True
    prefix_reuse: bool = True

    @property
    def server_key(self) -> tuple[bool, bool]:
        return (self.speculative, self.prefix_reuse)

    def lsp_settings(self, max_tokens: int, time_budget_ms: int) -> dict[str, Any]:
        return {
            "maxTokens": max_tokens,
            "multiline": True,
            "timeBudgetMs": time_budget_ms,
            "cache": self.cache,
            "firstLine": self.first_line,
            "warmUp": self.warm_up,
        }


CONFIGS = {
    c.name: c
    for c in (
        Config("base"),
        Config("firstLine", first_line=True),
        Config("warmUp", warm_up=True),
        Config("speculative", speculative=True),
        Config("all", first_line=True, warm_up=True, speculative=True),
        Config("no-cache", cache=False),
        Config("no-prefix-reuse", prefix_reuse=False),
    )
}
DEFAULT_CONFIGS = "base,firstLine,warmUp,speculative,all"


def availability() -> dict[str, bool]:
    return {
        "firstLine": lsp_setting_available("firstLine"),
        "warmUp": lsp_setting_available("warmUp"),
        "speculative": serve_has("--speculative"),
    }


async def replay(
    url: str,
    source: Source,
    chars: int,
    interval: float,
    pause: float,
    settings: dict[str, Any],
    invoked_positions: list[Position],
    open_wait: float,
) -> dict[str, Any]:
    """Type the span into the document it was removed from; then explicit requests, each in a
    document open for `open_wait` seconds."""
    text = source.text
    start, end = typing_span(text, chars)
    keys = keystrokes(text, start, end)
    session = await LspSession(settings).start(url)
    uri = f"file:///bench/{source.package}/{source.relpath}"
    session.open(uri, text[:start] + text[end:])
    latencies: list[float] = []
    cancelled = answered = empty = 0
    pauses: list[dict[str, Any]] = []

    async def ask(line: int, character: int) -> tuple[float, str]:
        nonlocal cancelled, answered, empty
        t0 = time.perf_counter()
        try:
            got = await session.ask(uri, line, character)
        except Exception:  # superseded by the next keystroke, or cancelled
            cancelled += 1
            raise
        latencies.append(time.perf_counter() - t0)
        answered += 1
        empty += not got.strip()
        return time.perf_counter() - t0, got

    await asyncio.sleep(open_wait)
    pending: list[asyncio.Task[Any]] = []
    for offset, length, line_end in keys:
        session.insert(uri, line_col(text[:offset]), text[offset : offset + length])
        task = asyncio.ensure_future(ask(*line_col(text[: offset + length])))
        pending.append(task)
        if not line_end:
            await asyncio.sleep(interval)
            continue
        await asyncio.sleep(pause)  # people pause at the end of a line and look at the suggestion
        answered_now = task.done() and not task.cancelled() and task.exception() is None
        shown = answered_now and bool(task.result()[1].strip())
        pauses.append(
            {
                "shown": shown,
                "latency_ms": task.result()[0] * 1000 if shown else None,
                "line": line_col(text[: offset + length])[0],
                "suggestion": task.result()[1] if answered_now else None,
            }
        )
    done, late = await asyncio.wait(pending, timeout=60)
    for task in late:  # an answer that never came is counted, not waited for forever
        task.cancel()
    for task in done:
        with contextlib.suppress(BaseException):
            task.exception()
    stats = await session.stats()
    session.close(uri)
    invoked: list[float] = []
    for i, pos in enumerate(invoked_positions):
        other = f"file:///bench/invoked/{i}/{source.relpath}"
        session.open(other, pos.document)
        session.rest(other, pos.line, pos.character)
        await asyncio.sleep(open_wait)
        t0 = time.perf_counter()
        with contextlib.suppress(Exception):
            await session.ask(other, pos.line, pos.character, invoked=True)
            invoked.append(time.perf_counter() - t0)
        session.close(other)
    await session.stop()
    n = len(keys)
    return {
        "file": source.name,
        "chars": end - start,
        "requests": n,
        "answered": answered,
        "empty_answers": empty,
        "cancelled": cancelled,
        "unanswered": len(late),
        "latencies_ms": [x * 1000 for x in latencies],
        "pauses": pauses,
        "invoked_ms": [x * 1000 for x in invoked],
        "invoked_asked": len(invoked_positions),
        "lsp_requests": stats.get("requests", 0),
        "cache_hits": stats.get("cache_hits", 0),
        "engine_calls": stats.get("engine_calls", 0),
        "early_stops": stats.get("early_stops", 0),
        "time_budget_cuts": stats.get("time_budget_cuts", 0),
    }


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One configuration over its files and rounds: percentiles over the pooled requests."""
    lat = [x for r in runs for x in r["latencies_ms"]]
    pauses = [p for r in runs for p in r["pauses"]]
    invoked = [x for r in runs for x in r["invoked_ms"]]
    requests = sum(r["requests"] for r in runs)
    return {
        "runs": len(runs),
        "keystrokes": requests,
        "answered": sum(r["answered"] for r in runs),
        "p50_ms": median(lat),
        "p95_ms": pct(lat, 0.95),
        "line_end_pauses": len(pauses),
        "pauses_shown": sum(p["shown"] for p in pauses),
        "pause_shown_share": sum(p["shown"] for p in pauses) / len(pauses) if pauses else None,
        "pause_suggestion_p50_ms": median([p["latency_ms"] for p in pauses if p["shown"]]),
        "invoked_requests": len(invoked),
        "invoked_p50_ms": median(invoked),
        "invoked_p95_ms": pct(invoked, 0.95),
        "cancelled_share": sum(r["cancelled"] for r in runs) / requests if requests else 0.0,
        "empty_share": sum(r["empty_answers"] for r in runs) / max(sum(r["answered"] for r in runs), 1),
        "cache_hit_rate": sum(r["cache_hits"] for r in runs) / max(sum(r["lsp_requests"] for r in runs), 1),
        "prompt_reused_share": sum(r.get("reused_tokens", 0) for r in runs)
        / max(sum(r.get("reused_tokens", 0) + r.get("prefill_tokens", 0) for r in runs), 1),
        "engine_calls": sum(r["engine_calls"] for r in runs),
        "engine_calls_per_run": sum(r["engine_calls"] for r in runs) / len(runs),
    }


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


def _pctf(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def run(args: argparse.Namespace) -> int:
    stop_on_sigterm()
    quick = args.quick
    files = args.files or (2 if quick else len(SOURCES))
    chars = args.chars or (60 if quick else 160)
    rounds = args.rounds or (1 if quick else 2)
    invoked_n = args.invoked or (2 if quick else 4)
    compile_wait = 0.0 if (quick or args.no_compile) else args.compile_wait
    sources = load_sources(files)
    avail = availability()
    names = [n for n in args.configs.split(",") if n]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown configurations: {', '.join(unknown)} (known: {', '.join(CONFIGS)})")
    configs = [CONFIGS[n] for n in names]
    # a configuration whose toggles are all unavailable would only repeat another: left out
    skipped = [
        c.name
        for c in configs
        if c.name != "base"
        and not any(
            [
                c.first_line and avail["firstLine"],
                c.warm_up and avail["warmUp"],
                c.speculative and avail["speculative"],
                not c.cache,
                not c.prefix_reuse,
            ]
        )
    ]
    configs = [c for c in configs if c.name not in skipped]
    home = Path(args.work_dir)
    invoked_positions = {s.name: select_positions([s], invoked_n, args.seed) for s in sources}
    servers: dict[tuple[bool, bool], Served] = {}
    runs: dict[str, list[dict[str, Any]]] = {c.name: [] for c in configs}
    started = time.perf_counter()
    try:
        if not avail["speculative"]:  # nothing to pass: one server serves both
            configs = [replace(c, speculative=False) if c.speculative else c for c in configs]
            shown_spec = {c.name for c in CONFIGS.values() if c.speculative}
        else:
            shown_spec = set()
        for key in dict.fromkeys(c.server_key for c in configs):
            print(f"starting tandem serve (speculative {'on' if key[0] else 'off'}, prefix reuse {'on' if key[1] else 'off'})", flush=True)
            servers[key] = start_server(
                home,
                args.model,
                quant=args.quant,
                speculative=key[0] if avail["speculative"] else None,
                prefix_cache=key[1],
                compile_wait=compile_wait,
            )
        info = model_info(next(iter(servers.values())).url)
        for rnd in range(rounds):
            order = configs if rnd % 2 == 0 else configs[::-1]  # alternate who goes first: the machine is shared and noisy
            for c in order:
                for s in sources:
                    before = prompt_tokens(servers[c.server_key].url)
                    r = asyncio.run(
                        replay(
                            servers[c.server_key].url,
                            s,
                            chars,
                            args.interval_ms / 1000,
                            args.pause_ms / 1000,
                            c.lsp_settings(args.max_tokens, args.time_budget_ms),
                            invoked_positions[s.name],
                            args.open_wait_ms / 1000,
                        )
                    )
                    r["round"] = rnd
                    r.update(reused_share(before, prompt_tokens(servers[c.server_key].url)))
                    runs[c.name].append(r)
                    lat = r["latencies_ms"]
                    print(
                        f"  round {rnd + 1} {c.name:<15} {s.name:<28} p50 {_ms(median(lat))} ms, pauses shown "
                        f"{sum(p['shown'] for p in r['pauses'])}/{len(r['pauses'])}, engine calls {r['engine_calls']}",
                        flush=True,
                    )
    finally:
        for served in servers.values():
            served.stop()
    rows = [
        {
            "config": c.name,
            "firstLine": c.first_line,
            "warmUp": c.warm_up,
            "speculative": c.speculative or c.name in shown_spec,
            "cache": c.cache,
            "prefix_reuse": c.prefix_reuse,
            **summarise(runs[c.name]),
        }
        for c in configs
    ]
    base = next((r for r in rows if r["config"] == "base"), None)
    for r in rows:
        r["p50_vs_base"] = r["p50_ms"] / base["p50_ms"] if base and base["p50_ms"] and r["p50_ms"] is not None else None

    def toggle(name: str) -> str:
        return "available" if avail[name] else "**not available** (sent, but nothing takes it: rows differing only by it were left out)"

    steps = sorted({s.decode_step for s in servers.values()})
    lines = [
        f"# tandem bench-typing{' --quick' if quick else ''}",
        "",
        f"Model {info.get('id')} (FIM {'yes' if info.get('fim') else 'no'}); decode step {', '.join(steps)}"
        f"{' (--no-compile)' if compile_wait <= 0 else ''}. Files: "
        + ", ".join(f"{s.name} ({s.package} {s.version})" for s in sources)
        + ".",
        f"Per file and configuration: a fresh language server opens the file without {chars} characters of a function body (from the "
        f"indentation of its first code line to a line end), then types them back, one keystroke every {args.interval_ms} ms, Enter "
        f"bringing the next line's indentation (auto-indent), and a {args.pause_ms} ms pause after each Enter; an Automatic inline "
        f"completion request per keystroke (maxTokens {args.max_tokens}, time budget {args.time_budget_ms} ms, multiline). "
        f"{rounds} round(s), configuration order reversed every other round; percentiles over the pooled requests.",
        "",
        "- **p50/p95**: keystroke to answer, over the answered requests (an empty answer counts as answered).",
        "- **pauses shown**: of the line-end pauses, the share where the request sent at the Enter that began the pause was answered "
        "with a non-empty suggestion before the pause ended (before the next keystroke); **pause p50**: how long into the pause it appeared.",
        f"- **Invoked p95**: explicit requests (InlineCompletionTriggerKind.Invoked), {invoked_n} per file, each on a blanked "
        f"line in a document opened {args.open_wait_ms} ms before (with `tandem/cursorMoved` to the position, as the extension "
        "sends when the cursor comes to rest), after the typing.",
        "- **cancelled**: requests answered with an error (superseded by the next keystroke); **cache hits** and **engine calls**: "
        "the language server's `tandem/stats` over the typing; **prompt reused**: the share of prompt tokens the engine served "
        "from its prefix cache (its /metrics, over the whole run, warm-ups included; a configuration that runs after another on the same "
        "server may find that one's prompts still cached).",
        f"- toggles: firstLine {toggle('firstLine')}; warmUp {toggle('warmUp')}; `tandem serve --speculative` {toggle('speculative')}."
        + (f" Left out: {', '.join(skipped)}." if skipped else ""),
        "",
        "| configuration | firstLine | warmUp | speculative | keystrokes | p50 ms | p95 ms | p50 ÷ base | pauses shown | pause p50 ms "
        "| Invoked p95 ms | cancelled | cache hits | engine calls | prompt reused |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def onoff(flag: bool, name: str) -> str:
        return ("on" if flag else "off") + ("" if avail[name] else " (n/a)")

    for r in rows:
        ratio = "–" if r["p50_vs_base"] is None else f"{r['p50_vs_base']:.2f}"
        extra = "" if r["cache"] and r["prefix_reuse"] else f" ({'cache off' if not r['cache'] else 'prefix reuse off'})"
        lines.append(
            f"| {r['config']}{extra} | {onoff(r['firstLine'], 'firstLine')} | {onoff(r['warmUp'], 'warmUp')} | "
            f"{onoff(r['speculative'], 'speculative')} | {r['keystrokes']} | {_ms(r['p50_ms'])} | {_ms(r['p95_ms'])} | {ratio} | "
            f"{_pctf(r['pause_shown_share'])} ({r['pauses_shown']}/{r['line_end_pauses']}) | {_ms(r['pause_suggestion_p50_ms'])} | "
            f"{_ms(r['invoked_p95_ms'])} | {_pctf(r['cancelled_share'])} | {_pctf(r['cache_hit_rate'])} | {r['engine_calls']} | {_pctf(r['prompt_reused_share'])} |"
        )
    table = "\n".join(lines)
    print(table)
    result = {
        "quick": quick,
        "model": info,
        "decode_steps": steps,
        "available": avail,
        "skipped": skipped,
        "seconds": round(time.perf_counter() - started, 1),
        "settings": {
            "files": [{"file": s.name, "version": s.version} for s in sources],
            "chars": chars,
            "rounds": rounds,
            "interval_ms": args.interval_ms,
            "pause_ms": args.pause_ms,
            "max_tokens": args.max_tokens,
            "time_budget_ms": args.time_budget_ms,
            "invoked_per_file": invoked_n,
            "open_wait_ms": args.open_wait_ms,
            "seed": args.seed,
        },
        "rows": rows,
        "runs": runs,
    }
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "typing.md").write_text(table + "\n")
        (out / "typing.json").write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out / 'typing.md'} and {out / 'typing.json'}")
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "bench-typing",
        help="replay typing real code through the language server: latency, suggestions at pauses, cancellations, cache hits",
    )
    p.add_argument("--model", default=None, help="passed to tandem serve (default: the embedded default model)")
    p.add_argument("--quant", default=None, help="passed to tandem serve --quant (default: its default)")
    p.add_argument("--quick", action="store_true", help="a smoke run: 2 files, 60 characters, 1 round, eager decode")
    p.add_argument("--configs", default=DEFAULT_CONFIGS, help=f"comma-separated, of {', '.join(CONFIGS)}")
    p.add_argument("--files", type=int, default=None, help=f"how many of the {len(SOURCES)} files (default all; quick 2)")
    p.add_argument("--chars", type=int, default=None, help="characters typed per file (default 160; quick 60)")
    p.add_argument("--rounds", type=int, default=None, help="rounds over the configurations (default 2; quick 1)")
    p.add_argument("--invoked", type=int, default=None, help="explicit requests per file (default 4; quick 2)")
    p.add_argument("--interval-ms", type=int, default=120, help="time between keystrokes (120 ms is about 100 words a minute)")
    p.add_argument("--pause-ms", type=int, default=2500, help="pause after each line")
    p.add_argument(
        "--open-wait-ms", type=int, default=1000, help="how long a document is open before the first keystroke or explicit request"
    )
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--time-budget-ms", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0, help="for the explicit requests' positions")
    p.add_argument("--compile-wait", type=float, default=240, help="seconds to wait for the server's compiled decode step")
    p.add_argument("--no-compile", action="store_true", help="run the servers eager (as --quick does)")
    p.add_argument("--work-dir", default="bench-out/typing-work")
    p.add_argument("--out", default="bench-out")
    p.set_defaults(func=run, log_level="warning")
