"""`tandem bench-completion`: how good the suggestions are, not only how fast. At seeded positions
in real code from libraries this project does not use (lsp/bench_typing.py's files), a non-blank
line of a function body is removed and the suggestion at its indentation is scored against it:
the model's raw output from `/v1/completions`, Tandem's post-processed suggestion through the real
language server with each toggle, and llama.cpp's server on the same GGUF file with the same
prompt. A benchmark, not a test: it prints a Markdown table and writes JSON."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from .bench_typing import (
    ROOT,
    SOURCES,
    LspSession,
    Position,
    Served,
    availability,
    free_port,
    load_sources,
    median,
    model_info,
    pct,
    prompt_tokens,
    reused_share,
    select_positions,
    start_server,
    stop_on_sigterm,
)
from .settings import Settings

try:
    from rapidfuzz.distance import Levenshtein as _rf
except ImportError:  # the same metric, computed here
    _rf = None

SIMILARITY = "rapidfuzz Levenshtein" if _rf is not None else "pure-Python Levenshtein (rapidfuzz not installed)"
PEER_VENV = ROOT / "bench-out" / "llama-cpp-venv"
CODE_MODEL = "qwen2.5-coder-0.5b"
MULTILINE_STOP = ["\n\n"]  # the language server's own multi-line stop, without the one it derives from the suffix


def levenshtein(a: str, b: str) -> int:
    if _rf is not None:
        return int(_rf.distance(a, b))
    if len(a) < len(b):
        a, b = b, a
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def edit_similarity(a: str, b: str) -> float:
    """1 - Levenshtein distance / the longer length (1.0 for two empty strings)."""
    longest = max(len(a), len(b))
    return 1.0 if longest == 0 else 1.0 - levenshtein(a, b) / longest


def first_line(suggestion: str) -> str:
    return suggestion.split("\n", 1)[0].strip()


def score(pos: Position, suggestion: str) -> dict[str, Any]:
    got = first_line(suggestion)
    return {"exact": got == pos.removed, "similarity": edit_similarity(got, pos.removed), "empty": not suggestion.strip(), "got": got}


# ----- the techniques ------------------------------------------------------------------------


@dataclass(frozen=True)
class Technique:
    name: str
    kind: str  # "raw", "lsp" or "peer"
    invoked: bool = True
    first_line: bool = False
    warm_up: bool = False
    speculative: bool = False
    time_budget_ms: int | None = None  # None: --time-budget-ms

    @property
    def needs(self) -> str | None:
        """The toggle this row exists for (None: always runs)."""
        return "firstLine" if self.first_line else "warmUp" if self.warm_up else "speculative" if self.speculative else None


TECHNIQUES = {
    t.name: t
    for t in (
        Technique("raw", "raw"),
        Technique("raw-no-indent", "raw"),
        Technique("lsp", "lsp"),
        Technique("lsp-30s", "lsp", time_budget_ms=30_000),
        Technique("lsp-auto", "lsp", invoked=False),
        Technique("lsp-auto-firstLine", "lsp", invoked=False, first_line=True),
        Technique("lsp-warmUp", "lsp", warm_up=True),
        Technique("raw-speculative", "raw", speculative=True),
        Technique("lsp-speculative", "lsp", speculative=True),
        Technique("llama.cpp", "peer"),
    )
}
# lsp-auto is left out by default: with firstLine off, the language server treats an Automatic
# request as an Invoked one (it waits for the block), so that row repeats `lsp`
# raw-no-indent (a diagnostic: lsp/prompt.py keeps the indentation, this row leaves it out) and raw-speculative (the
# same tokens as raw by construction) on request
DEFAULT_TECHNIQUES = "raw,lsp,lsp-auto-firstLine,lsp-warmUp,lsp-speculative,llama.cpp"
DESCRIPTIONS = {
    "raw": "(a) raw model output, Tandem `/v1/completions`",
    "raw-no-indent": "(a') raw, the cursor line's indentation left out of the prompt (it ends at the line start)",
    "lsp": "(b) Tandem language server, Invoked",
    "lsp-30s": "(b') language server, Invoked, time budget 30 s (what post-processing makes of a whole answer)",
    "lsp-auto": "(c) language server, Automatic (as you type)",
    "lsp-auto-firstLine": "(c) language server, Automatic, firstLine on",
    "lsp-warmUp": "(c) language server, Invoked, warmUp on",
    "raw-speculative": "(c) raw, `tandem serve --speculative on`",
    "lsp-speculative": "(c) language server, Invoked, `--speculative on`",
    "llama.cpp": "(d) llama.cpp server (llama-cpp-python), same GGUF, same prompt",
}


def prompt_for(pos: Position, info: dict[str, Any], no_indent: bool = False) -> tuple[str, str | None]:
    """The prefix window and suffix window the language server would send for this position
    (no other documents open), the suffix only when the model has FIM tokens; `no_indent` leaves
    the cursor line's indentation out (the diagnostic row that keeps lsp/prompt.py honest)."""
    from .prompt import build

    prompt = build(
        pos.prefix,
        pos.suffix,
        "python",
        f"file:///bench/{pos.source.package}/{pos.source.relpath}",
        [],
        budget_tokens=min(Settings.prompt_tokens, int(info.get("context_length") or 2048) // 2),
    )
    prefix = prompt.prefix[: len(prompt.prefix) - len(pos.indent)] if no_indent else prompt.prefix
    return prefix, (prompt.suffix if info.get("fim") else None)


async def stream_completion(http: httpx.AsyncClient, url: str, prompt: str, suffix: str | None, max_tokens: int) -> dict[str, Any]:
    """One streamed `/v1/completions` (Tandem's or llama.cpp's): the text, its total latency and
    when its first line was complete."""
    body: dict[str, Any] = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True, "stop": MULTILINE_STOP}
    if suffix is not None:
        body["suffix"] = suffix
    text, first_line_at = "", None
    t0 = time.perf_counter()
    async with http.stream("POST", f"{url}/v1/completions", json=body, timeout=120) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{url} answered {response.status_code}: {(await response.aread())[:300]!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line.strip() == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                raise RuntimeError(str(event["error"]))
            text += event["choices"][0].get("text") or ""
            if first_line_at is None and "\n" in text.lstrip("\n"):
                first_line_at = time.perf_counter() - t0
    total = time.perf_counter() - t0
    return {"text": text, "latency_ms": total * 1000, "first_line_ms": (first_line_at or total) * 1000}


async def run_raw(
    url: str, positions: list[Position], info: dict[str, Any], max_tokens: int, no_indent: bool = False
) -> list[dict[str, Any]]:
    out = []
    async with httpx.AsyncClient(trust_env=False) as http:
        for pos in positions:
            prompt, suffix = prompt_for(pos, info, no_indent)
            r = await stream_completion(http, url, prompt, suffix, max_tokens)
            out.append({**_where(pos), **score(pos, r["text"]), "latency_ms": r["latency_ms"], "first_line_ms": r["first_line_ms"]})
    return out


async def run_lsp(
    url: str, positions: list[Position], t: Technique, max_tokens: int, time_budget_ms: int, open_wait: float
) -> list[dict[str, Any]]:
    """One language server for the chunk; each position in its own document, opened
    `open_wait` seconds before the request and closed after (no other document is open, so none
    lends snippets to the prompt)."""
    settings = {
        "maxTokens": max_tokens,
        "multiline": True,
        "timeBudgetMs": t.time_budget_ms or time_budget_ms,
        "cache": True,
        "firstLine": t.first_line,
        "warmUp": t.warm_up,
    }
    session = await LspSession(settings).start(url)
    out = []
    try:
        for i, pos in enumerate(positions):
            uri = f"file:///bench/{i}/{pos.source.package}/{pos.source.relpath}"
            session.open(uri, pos.document)
            session.rest(uri, pos.line, pos.character)  # the cursor comes to rest there: what warmUp warms
            await asyncio.sleep(open_wait)
            t0 = time.perf_counter()
            error = None
            try:
                text = await session.ask(uri, pos.line, pos.character, invoked=t.invoked)
            except Exception as exc:  # counted as an empty suggestion, and said
                text, error = "", f"{type(exc).__name__}: {exc}"[:200]
            latency = (time.perf_counter() - t0) * 1000
            session.close(uri)
            out.append({**_where(pos), **score(pos, text), "latency_ms": latency, **({"error": error} if error else {})})
        stats = await session.stats()
        out[-1]["lsp_stats"] = {k: v for k, v in stats.items() if isinstance(v, (int, float, str))}
    finally:
        await session.stop()
    return out


def _where(pos: Position) -> dict[str, Any]:
    return {"file": pos.source.name, "line": pos.line + 1, "expected": pos.removed}


# ----- the peer: llama.cpp's server ---------------------------------------------------------


def find_gguf(model: str | None) -> Path | None:
    """The GGUF file a model came from: the embedded default's, a .gguf path, or one installed
    under the models cache whose name contains the model's."""
    from server import models

    if model in (None, "default"):
        return models.default_gguf_path()
    if str(model).endswith(".gguf"):
        return Path(model)
    from server.settings import tandem_home

    want = str(model).lower().replace("_", "-")
    for folder in {tandem_home() / "models" / "gguf", Path.home() / ".cache" / "tandem" / "models" / "gguf"}:
        for f in sorted(folder.rglob("*.gguf")) if folder.is_dir() else []:  # `tandem models install` puts each in a folder of its own
            if want in f.name.lower().replace("_", "-"):
                return f
    return None


def code_model_installed() -> bool:
    return find_gguf(CODE_MODEL) is not None


def peer_problem(venv: Path, gguf: Path | None) -> str | None:
    if gguf is None:
        return "no GGUF file for this model"
    python = venv / "bin" / "python"
    if not python.exists():
        return f"not installed: no venv at {venv} (scripts/install-llama-cpp.sh builds it: PyPI has only the sdist, no prebuilt wheel)"
    probe = subprocess.run(
        [str(python), "-c", "import llama_cpp.server, llama_cpp; print(llama_cpp.__version__)"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if probe.returncode != 0:
        return (
            f"installed at {venv}, but `import llama_cpp.server` failed (exit {probe.returncode}): {probe.stderr.strip().splitlines()[-1:]}"
        )
    return None


def peer_version(venv: Path) -> str:
    return subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import llama_cpp; print(llama_cpp.__version__)"], capture_output=True, text=True, check=False
    ).stdout.strip()


def start_peer(venv: Path, gguf: Path, context: int, threads: int, home: Path) -> Served:
    port = free_port()
    home.mkdir(parents=True, exist_ok=True)
    log = home / f"llama-cpp-{port}.log"
    args = [
        str(venv / "bin" / "python"),
        "-m",
        "llama_cpp.server",
        "--model",
        str(gguf),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        str(context),
        "--n_threads",
        str(threads),
        "--n_threads_batch",
        str(threads),
        "--verbose",
        "False",
    ]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                return Served(proc, url, "llama.cpp", log)
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"llama_cpp.server did not start; see {log}: " + log.read_text(errors="replace")[-600:])
        time.sleep(0.5)


# ----- the driver ----------------------------------------------------------------------------


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    lat = [r["latency_ms"] for r in records]
    firsts = [r["first_line_ms"] for r in records if "first_line_ms" in r]
    n = len(records)
    return {
        "positions": n,
        "exact_match": sum(r["exact"] for r in records) / n if n else None,
        "edit_similarity": sum(r["similarity"] for r in records) / n if n else None,
        "latency_p50_ms": median(lat),
        "latency_p95_ms": pct(lat, 0.95),
        "empty_share": sum(r["empty"] for r in records) / n if n else None,
        "first_line_p50_ms": median(firsts) if firsts else None,
        "errors": sum("error" in r for r in records),
        "engine_prompt_reused_share": _reused([r["engine_prompt_tokens"] for r in records if "engine_prompt_tokens" in r]),
    }


def _reused(parts: list[dict[str, float]]) -> float | None:
    total = sum(p["prefill_tokens"] + p["reused_tokens"] for p in parts)
    return sum(p["reused_tokens"] for p in parts) / total if total else None


def bench_model(
    model: str | None,
    positions: list[Position],
    techniques: list[Technique],
    args: argparse.Namespace,
    avail: dict[str, bool],
    compile_wait: float,
    chunks: int,
    result: dict[str, Any],
    save: Any = None,
) -> dict[str, Any]:
    """Fills `result` (already in the run's list, so `save()` after each row keeps what a long
    run has measured if it is stopped)."""
    home = Path(args.work_dir)
    result.update({"model_arg": model or "default", "rows": {}, "records": {}})
    name, _, given_quant = (model or "").partition("@")  # "name@quant": tandem serve --quant quant
    model = name if name not in ("", "default") else None
    quant = given_quant or None
    wanted = [t for t in techniques if t.needs is None or avail[t.needs]]
    result["left_out"] = {t.name: f"{t.needs} not available" for t in techniques if t not in wanted}
    gguf = find_gguf(model)
    problem = peer_problem(Path(args.peer_venv), gguf) if any(t.kind == "peer" for t in wanted) else None
    if problem is not None:
        result["left_out"]["llama.cpp"] = problem
        wanted = [t for t in wanted if t.kind != "peer"]
    result["llama_cpp"] = {"status": problem or "ran", "gguf": str(gguf) if gguf else None}
    servers: dict[str, Served] = {}
    try:
        for spec in dict.fromkeys(t.speculative for t in wanted if t.kind != "peer"):
            print(f"starting tandem serve --model {model or 'default'} (speculative {'on' if spec else 'off'})", flush=True)
            servers[f"tandem-{spec}"] = start_server(
                home, model, speculative=spec if avail["speculative"] else None, compile_wait=compile_wait, quant=quant
            )
        info = model_info(next(iter(servers.values())).url)
        result["model"], result["decode_steps"] = info, sorted({s.decode_step for s in servers.values()})
        if any(t.kind == "peer" for t in wanted):
            assert gguf is not None
            print(f"starting llama_cpp.server on {gguf.name}", flush=True)
            servers["peer"] = start_peer(Path(args.peer_venv), gguf, int(info.get("context_length") or 2048), args.peer_threads, home)
            result["llama_cpp"]["version"] = peer_version(Path(args.peer_venv))
        records: dict[str, list[dict[str, Any]]] = {t.name: [] for t in wanted}
        size = -(-len(positions) // chunks)
        # the engine's prefix cache (8192 tokens by default) holds the last several prompts: a row that
        # follows another over fewer positions than that would reuse the other's prompts
        fresh = size < args.fresh_below
        result["fresh_server_per_row"] = fresh
        used: dict[str, bool] = {}
        for k in range(chunks):
            chunk = positions[k * size : (k + 1) * size]
            if not chunk:
                continue
            for t in wanted if k % 2 == 0 else wanted[::-1]:  # alternate the order: the machine is shared and noisy
                key = "peer" if t.kind == "peer" else f"tandem-{t.speculative}"
                if fresh and t.kind != "peer" and used.get(key):  # a short chunk: the last row's prompts would still be in the prefix cache
                    servers.pop(key).stop()
                    servers[key] = start_server(
                        home, model, speculative=t.speculative if avail["speculative"] else None, compile_wait=compile_wait, quant=quant
                    )
                used[key] = True
                url = servers[key].url
                before = prompt_tokens(url) if t.kind != "peer" else None
                t0 = time.perf_counter()
                if t.kind == "lsp":
                    got = asyncio.run(run_lsp(url, chunk, t, args.max_tokens, args.time_budget_ms, args.open_wait_ms / 1000))
                else:
                    got = asyncio.run(run_raw(url, chunk, info, args.max_tokens, no_indent=t.name == "raw-no-indent"))
                if before is not None:
                    got[-1]["engine_prompt_tokens"] = reused_share(before, prompt_tokens(url))
                records[t.name] += got
                result["records"], result["rows"] = records, {name: summarise(rs) for name, rs in records.items() if rs}
                if save is not None:
                    save()
                s = summarise(got)
                print(
                    f"  chunk {k + 1}/{chunks} {t.name:<20} exact {s['exact_match']:.0%}, similarity {s['edit_similarity']:.2f}, "
                    f"p50 {s['latency_p50_ms']:.0f} ms ({time.perf_counter() - t0:.0f} s)",
                    flush=True,
                )
    finally:
        for served in servers.values():
            served.stop()
    result["rows"] = {name: summarise(rs) for name, rs in records.items()}
    result["records"] = records
    return result


def _f(value: float | None, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    avail = result["available"]
    lines = [
        f"# tandem bench-completion{' --quick' if result['quick'] else ''}",
        "",
        f"{s['positions']} positions (seed {s['seed']}) in "
        + ", ".join(f"{f['file']} ({f['version']})" for f in s["files"])
        + ": a non-blank, "
        "non-comment line inside a function body (after the docstring, outside multi-line strings) is removed, its indentation kept; the "
        "cursor sits where its code began, the rest of the file (from the line's newline) is the suffix. Scored on the first line "
        "of the suggestion, stripped, against the removed line, stripped: **exact match**, and **edit similarity** = 1 − Levenshtein "
        f"÷ longer length ({SIMILARITY}), averaged. **Latency**: request to complete answer. **Empty**: no suggestion (or only whitespace).",
        "",
        f"Same prompt for the raw rows and the peer: the language server's prefix window and suffix window (lsp/prompt.py, no other documents "
        f"open; the suffix only when the model has FIM tokens), max_tokens {s['max_tokens']}, temperature 0, stop `\\n\\n`. The language-server "
        f"rows run `tandem lsp --no-autostart` under pygls's client with maxTokens {s['max_tokens']}, time budget {s['time_budget_ms']} ms, each "
        f"position in its own document opened {s['open_wait_ms']} ms before the request. Positions run in {s['chunks']} chunk(s), the row "
        "order reversed every other chunk. Toggles: "
        + "; ".join(f"{k} {'available' if v else '**not available**'}" for k, v in avail.items())
        + ".",
        "",
    ]
    lines += [
        "| model | technique | positions | exact match | edit similarity | latency p50 ms | p95 ms | empty share |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    notes = []
    for m in result["models"]:
        name = m.get("model", {}).get("id", m["model_arg"])
        if m.get("model", {}).get("quantization"):
            name += f" ({m['model']['quantization']})"
        for tech, row in m["rows"].items():
            label = DESCRIPTIONS.get(tech, tech)
            if tech == "llama.cpp" and m["llama_cpp"].get("version"):
                label += f" {m['llama_cpp']['version']}"
            lines.append(
                f"| {name} | {label} | {row['positions']} | {_f(row['exact_match'], '.1%')} | {_f(row['edit_similarity'], '.3f')} | "
                f"{_f(row['latency_p50_ms'], '.0f')} | {_f(row['latency_p95_ms'], '.0f')} | {_f(row['empty_share'], '.1%')} |"
            )
        for tech, why in m["left_out"].items():
            lines.append(f"| {name} | {DESCRIPTIONS.get(tech, tech)} | – | – | – | – | – | not run: {why} |")
        reused = {t: r["engine_prompt_reused_share"] for t, r in m["rows"].items() if r.get("engine_prompt_reused_share") is not None}
        if reused:
            notes.append(
                f"- {name}: prompt tokens served from Tandem's prefix cache: "
                + ", ".join(f"{t} {v:.0%}" for t, v in reused.items())
                + (" (a fresh server for each row: the chunks are short)" if m.get("fresh_server_per_row") else "")
                + "."
            )
        firsts = {t: r["first_line_p50_ms"] for t, r in m["rows"].items() if r.get("first_line_p50_ms") is not None}
        if firsts:
            notes.append(
                f"- {name}: first line complete after (p50) "
                + ", ".join(f"{t} {v:.0f} ms" for t, v in firsts.items())
                + f"; decode step {', '.join(m.get('decode_steps', []))}."
            )
    return "\n".join(lines + [""] + notes) + "\n"


def run(args: argparse.Namespace) -> int:
    stop_on_sigterm()
    quick = args.quick
    count = args.positions or (16 if quick else 120)
    compile_wait = 0.0 if (quick or args.no_compile) else args.compile_wait
    sources = load_sources(args.files)
    positions = select_positions(sources, count, args.seed)
    names = [n for n in args.techniques.split(",") if n]
    bad = [n for n in names if n not in TECHNIQUES]
    if bad:
        raise SystemExit(f"unknown techniques: {', '.join(bad)} (known: {', '.join(TECHNIQUES)})")
    techniques = [TECHNIQUES[n] for n in names]
    if args.models:
        model_list: list[str | None] = [m for m in args.models.split(",") if m]
    else:
        model_list = [None] + ([CODE_MODEL] if code_model_installed() else [])
    avail = availability()
    chunks = args.chunks or (1 if quick else 2)
    started = time.perf_counter()
    result: dict[str, Any] = {
        "quick": quick,
        "available": avail,
        "similarity": SIMILARITY,
        "models": [],
        "settings": {
            "positions": len(positions),
            "seed": args.seed,
            "files": [{"file": s.name, "version": s.version} for s in sources],
            "max_tokens": args.max_tokens,
            "time_budget_ms": args.time_budget_ms,
            "open_wait_ms": args.open_wait_ms,
            "chunks": chunks,
            "peer_threads": args.peer_threads,
        },
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        result["seconds"] = round(time.perf_counter() - started, 1)
        tmp = out / "completion.json.tmp"
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        tmp.replace(out / "completion.json")

    for model in model_list:
        result["models"].append({})
        bench_model(model, positions, techniques, args, avail, compile_wait, chunks, result["models"][-1], save)
        save()
    text = markdown(result)
    (out / "completion.md").write_text(text)
    print(text)
    print(f"wrote {out / 'completion.md'} and {out / 'completion.json'} in {result['seconds']} s")
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "bench-completion",
        help="completion quality at held-out positions in real code: exact match, edit similarity, latency, vs llama.cpp",
    )
    p.add_argument(
        "--models",
        default=None,
        help=f"comma-separated, passed to tandem serve, each NAME or NAME@QUANT for --quant QUANT "
        f"(default: default, plus {CODE_MODEL} when installed)",
    )
    p.add_argument("--quick", action="store_true", help="a smoke run: 16 positions, one chunk, eager decode")
    p.add_argument("--positions", type=int, default=None, help="how many (default 120; quick 16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--files", type=int, default=None, help=f"how many of the {len(SOURCES)} files (default all)")
    p.add_argument("--techniques", default=DEFAULT_TECHNIQUES, help=f"comma-separated, of {', '.join(TECHNIQUES)}")
    p.add_argument("--max-tokens", type=int, default=24, help="for every row (the language server's maxTokens too)")
    p.add_argument("--time-budget-ms", type=int, default=3000, help="the language server's time budget")
    p.add_argument("--open-wait-ms", type=int, default=1000, help="how long each document is open before its request")
    p.add_argument("--chunks", type=int, default=None, help="position chunks, row order reversed every other one (default 2; quick 1)")
    p.add_argument("--fresh-below", type=int, default=16, help="restart the server between rows when a chunk has fewer positions")
    p.add_argument("--peer-venv", default=str(PEER_VENV), help="llama-cpp-python's venv (scripts/install-llama-cpp.sh)")
    p.add_argument("--peer-threads", type=int, default=2)
    p.add_argument("--compile-wait", type=float, default=240, help="seconds to wait for the server's compiled decode step")
    p.add_argument("--no-compile", action="store_true", help="run the servers eager (as --quick does)")
    p.add_argument("--work-dir", default="bench-out/completion-work")
    p.add_argument("--out", default="bench-out")
    p.set_defaults(func=run, log_level="warning")
