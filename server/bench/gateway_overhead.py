"""What the gateway costs in front of an upstream: the same streams sent straight to an upstream
and through `tandem serve --upstream` to it, in one run, alternating which goes first.

Upstreams: llama.cpp's own server (`make llama-server`: continuous batching, 16 slots), llama.cpp
through llama-cpp-python (one request at a time) and another `tandem serve` (continuous batching).
An upstream normally runs on another machine, where the gateway's work takes nothing from it; on a
machine with two cores or more the upstream is pinned to core 0 (one thread) and the gateway and
this client to core 1, so the comparison measures the gateway rather than a fight for the cores.

Each stream asks for a short story; tokens are counted with the model's tokenizer in the text the
client received (the same text both ways at temperature 0). Time to first token is to the first
visible (not blank) text the client sees, from that stream's own start. The output guard sends a word only once it is
whole (a secret can be split across tokens), so through the gateway the first text is the first
whole word; the direct stream's time to its first whole word (its text holds a space) is also
recorded. An upstream's own time to first token moves by a hundred milliseconds and more from run
to run here, far more than the gateway costs, so the gateway's share is also measured inside each
run: the client's time to first text less the upstream's first text as the gateway's pool timed it
(`tandem_upstream_first_token_seconds`), for the same requests; less the whole-word hold, that is
the gateway's own work. Tokens/s is compared run against run (each repetition's two runs, side by
side in time), as the median of those ratios. Streams arrive 50 ms apart, the same both ways.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from .. import models

ROOT = Path(__file__).resolve().parents[2]
LLAMA_VERSION = "0.3.36"


logging.getLogger("httpx").setLevel(logging.WARNING)  # (a line per request would bury the table)


def llama_server_venv() -> Path:
    default = Path(os.environ.get("TANDEM_HOME") or Path.home() / ".cache" / "tandem") / f"llama-cpp-server-{LLAMA_VERSION}"
    return Path(os.environ.get("TANDEM_LLAMA_SERVER_VENV") or default)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, proc: subprocess.Popen[bytes], what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.25)  # (a start-up poll, outside any measurement)
    raise RuntimeError(f"{what} did not answer {url} within {timeout:.0f} s")


def _pinned(cpu: int | None) -> Any:
    """A preexec_fn that keeps a child on one core (None: anywhere)."""
    if cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


@functools.cache
def _cores() -> tuple[int | None, int | None]:
    """(the upstream's core, the gateway's and client's core), or (None, None) where there are not
    two; read once, before this process pins itself to the second."""
    if not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2:
        return None, None
    first, second = sorted(os.sched_getaffinity(0))[:2]
    return first, second


def llama_cpp_server() -> Path:
    """llama.cpp's own `llama-server`, built from the llama.cpp sources llama-cpp-python vendors (`make llama-server`)."""
    return llama_server_venv() / "llama.cpp" / "llama-server"


def _gateway(log_dir: Path, upstream: str, cpu: int | None) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    gateway = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--port", str(port), "--upstream", upstream, "--upstream-tokenizer", "default",
         "--context-length", "4096", "--upstream-max-concurrency", "32", "--audit-dir", str(log_dir / "gateway-audit"),
         "--dialog-dir", str(log_dir / "gateway-dialog"), "--log-level", "warning"],
        stdout=open(log_dir / "gateway.log", "wb"), stderr=subprocess.STDOUT, cwd=ROOT, preexec_fn=_pinned(cpu),
    )  # fmt: skip
    return gateway, f"http://127.0.0.1:{port}"


def _upstream(kind: str, log_dir: Path, cpu: int | None) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"} if cpu is not None else None
    if kind == "llama_server":
        binary = llama_cpp_server()
        if not binary.exists():
            raise RuntimeError(f"no llama-server at {binary}: `make llama-server` builds it")
        args = [str(binary), "--model", str(models.default_gguf_path()), "--alias", models.DEFAULT_MODEL_NAME, "--host", "127.0.0.1",
                "--port", str(port), "--ctx-size", "16384", "--parallel", "16", "--threads", "1" if cpu is not None else "2",
                "--threads-batch", "1" if cpu is not None else "2", "--no-webui"]  # fmt: skip
    elif kind == "llama_cpp":
        python = llama_server_venv() / "bin" / "python"
        if not python.exists():
            raise RuntimeError(f"no llama-cpp-python server in {python.parent.parent}: `make llama-server` builds it")
        args = [str(python), "-m", "llama_cpp.server", "--model", str(models.default_gguf_path()), "--model_alias", models.DEFAULT_MODEL_NAME,
                "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096", "--n_threads", "1", "--n_threads_batch", "1",
                "--interrupt_requests", "False", "--verbose", "False"]  # fmt: skip
    else:
        # --no-compile: the compile of the decode step takes a minute of CPU in the background, which would
        # land on whichever side of the comparison runs first
        args = [sys.executable, "-m", "server.cli", "serve", "--port", str(port), "--audit-dir", str(log_dir / "upstream-audit"),
                "--dialog-dir", str(log_dir / "upstream-dialog"), "--log-level", "warning", "--no-compile"]  # fmt: skip
    proc = subprocess.Popen(
        args, stdout=open(log_dir / f"{kind}.log", "wb"), stderr=subprocess.STDOUT, cwd=ROOT, env=env, preexec_fn=_pinned(cpu)
    )
    return proc, f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def _serving(kind: str, log_dir: Path) -> Iterator[tuple[str, str]]:
    """An upstream on the default model and a Tandem gateway in front of it: (direct, gateway) URLs."""
    log_dir.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    upstream_cpu, gateway_cpu = _cores()
    try:
        upstream, direct = _upstream(kind, log_dir, upstream_cpu)
        procs.append(upstream)
        _wait(f"{direct}/v1/models", upstream, kind)
        gateway, via = _gateway(log_dir, direct, gateway_cpu)
        procs.append(gateway)
        _wait(f"{via}/healthz", gateway, "tandem serve --upstream")
        yield direct, via
    finally:
        for proc in reversed(procs):
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
            if proc.poll() is None:
                proc.kill()


WHOLE_WORD = re.compile(r"\S\s")
STORIES = ("a lighthouse keeper", "a lost robot", "a baker in Paris", "a fox and a crow", "two rival chess players", "a train at night",
           "a girl who maps rivers", "an old clockmaker")  # fmt: skip


async def _stream(client: httpx.AsyncClient, url: str, i: int, max_tokens: int, start: float) -> dict[str, Any]:
    body = {
        "model": models.DEFAULT_MODEL_NAME,
        "messages": [{"role": "user", "content": f"Write a long story about {STORIES[i % len(STORIES)]} (number {i})."}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    }
    first, word, finish, text = None, None, None, []
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            if "error" in event:
                raise RuntimeError(f"{url}: {event['error']}")
            if not event.get("choices"):
                continue
            choice = event["choices"][0]
            piece = (choice.get("delta") or {}).get("content")
            if piece:
                text.append(piece)
                if word is None:  # (until then only: the client shares the gateway's core, so it does no more than it must)
                    now, seen = time.perf_counter() - start, "".join(text)
                    if first is None and seen.strip():
                        first = now  # the first visible text
                    if WHOLE_WORD.search(seen):
                        word = now  # a whole word can be seen (what the guard needs before it sends one)
            finish = choice.get("finish_reason") or finish
    end = time.perf_counter() - start
    return {"ttft_s": first, "word_s": word if word is not None else end, "finish": finish, "end_s": end, "text": "".join(text)}


ARRIVAL_SECONDS = 0.05  # one stream starts every 50 ms: the same arrivals both ways (a batching upstream admits a
# burst that lands within a millisecond differently from one spread over a few: that would measure the arrival, not the gateway)


async def _run(url: str, streams: int, max_tokens: int, tokenizer: Any) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=600, trust_env=False, limits=httpx.Limits(max_connections=64)) as client:

        async def arriving(i: int) -> dict[str, Any]:
            await asyncio.sleep(i * ARRIVAL_SECONDS)  # (the workload's pacing, not a wait for a condition)
            return await _stream(client, url, i, max_tokens, time.perf_counter())

        start = time.perf_counter()
        done = await asyncio.gather(*(arriving(i) for i in range(streams)))
        wall = time.perf_counter() - start
    tokens = sum(len(tokenizer(d["text"], add_special_tokens=False)["input_ids"]) for d in done)
    ttfts = sorted(d["ttft_s"] * 1000 for d in done if d["ttft_s"] is not None)
    return {
        "tok_s": tokens / wall,
        "tokens": tokens,
        "ttft_p50_ms": statistics.median(ttfts),
        "ttft_mean_ms": statistics.fmean(ttfts),
        "word_hold_mean_ms": statistics.fmean((d["word_s"] - d["ttft_s"]) * 1000 for d in done if d["ttft_s"] is not None),
        "complete": sum(d["finish"] in ("stop", "length") for d in done),
    }


FIRST_TOKEN = re.compile(r"^tandem_upstream_first_token_seconds_(sum|count)\{[^}]*\} (\S+)$", re.M)


def _first_tokens(gateway: str) -> tuple[float, float]:
    """(seconds, count) of the first upstream text as the gateway's pool timed it (from its request upstream)."""
    found = {"sum": 0.0, "count": 0.0}
    for key, value in FIRST_TOKEN.findall(httpx.get(f"{gateway}/metrics", timeout=10).text):
        found[key] += float(value)
    return found["sum"], found["count"]


def _through(gateway: str, streams: int, max_tokens: int, tokenizer: Any) -> dict[str, Any]:
    """One run through the gateway, with what the same requests waited for upstream: the client's
    time to first text less the upstream's, in the same run, is the time spent in the gateway."""
    seconds, count = _first_tokens(gateway)
    run = asyncio.run(_run(gateway, streams, max_tokens, tokenizer))
    seconds, count = (a - b for a, b in zip(_first_tokens(gateway), (seconds, count), strict=True))
    run["upstream_ttft_mean_ms"] = 1000 * seconds / count if count else float("nan")
    run["in_gateway_mean_ms"] = run["ttft_mean_ms"] - run["upstream_ttft_mean_ms"]
    return run


def measure_gateway_overhead(streams: list[int], max_tokens: int, repeats: int, log_dir: Path, tokenizer: Any) -> dict[str, Any]:
    _, gateway_cpu = _cores()
    if gateway_cpu is None:
        return _measure(streams, max_tokens, repeats, log_dir, tokenizer)
    everywhere = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {gateway_cpu})  # the client beside the gateway, off the upstream's core
    try:
        return _measure(streams, max_tokens, repeats, log_dir, tokenizer)
    finally:
        os.sched_setaffinity(0, everywhere)


def _measure(streams: list[int], max_tokens: int, repeats: int, log_dir: Path, tokenizer: Any) -> dict[str, Any]:
    rows = []
    for kind, label in UPSTREAMS.items():
        try:
            serving = _serving(kind, log_dir / kind)
            direct, via = serving.__enter__()
        except RuntimeError as exc:
            rows.append({"upstream": label, "status": f"not run: {exc}"})
            print(f"  {label}: not run: {exc}", flush=True)
            continue
        try:
            for n in streams:
                # warm both paths at this many streams: an upstream's first batch of a size allocates (llama-server's
                # first 16-stream run waits seconds for its first token), which would land on whichever path went first
                asyncio.run(_run(direct, n, 8, tokenizer))
                asyncio.run(_run(via, n, 8, tokenizer))
                runs: dict[str, list[dict[str, Any]]] = {"direct": [], "gateway": []}
                for rep in range(repeats):
                    for name in ("direct", "gateway") if rep % 2 == 0 else ("gateway", "direct"):
                        if name == "direct":
                            runs[name].append(asyncio.run(_run(direct, n, max_tokens, tokenizer)))
                        else:
                            runs[name].append(_through(via, n, max_tokens, tokenizer))
                med = {
                    name: {k: round(statistics.median(r[k] for r in rs), 1) for k in ("tok_s", "ttft_p50_ms", "ttft_mean_ms")}
                    | {"failed": sum(n - r["complete"] for r in rs)}
                    for name, rs in runs.items()
                }
                # each repetition's two runs side by side in time: their ratio, then the median ratio (this shared
                # host drifts between repetitions more than the gateway costs)
                paired = [g["tok_s"] / d["tok_s"] for d, g in zip(runs["direct"], runs["gateway"], strict=True)]
                hold = statistics.median(r["word_hold_mean_ms"] for r in runs["direct"])
                in_gateway = statistics.median(r["in_gateway_mean_ms"] for r in runs["gateway"])
                row = {
                    "upstream": label,
                    "streams": n,
                    **med,
                    "tok_s_overhead_pct": round(100 * (1 - statistics.median(paired)), 1),
                    "ttft_p50_added_ms": round(med["gateway"]["ttft_p50_ms"] - med["direct"]["ttft_p50_ms"], 1),
                    "in_gateway_ms": round(in_gateway, 1),  # client's TTFT less the upstream's, same requests (mean per run)
                    "word_hold_ms": round(hold, 1),  # of which the guard's hold: the direct streams' own wait for a whole word
                    "gateway_added_ms": round(in_gateway - hold, 1),  # the rest: the gateway's own work
                    "runs": runs,
                }
                rows.append(row)
                print(
                    f"  {label}, {n:>2} streams: direct {med['direct']['tok_s']:.1f} tok/s, TTFT p50 {med['direct']['ttft_p50_ms']:.0f} ms; "
                    f"through the gateway {med['gateway']['tok_s']:.1f} tok/s ({row['tok_s_overhead_pct']:+.1f}% fewer), "
                    f"TTFT p50 {med['gateway']['ttft_p50_ms']:.0f} ms ({row['ttft_p50_added_ms']:+.0f} ms); in the gateway "
                    f"{row['in_gateway_ms']:.0f} ms a request: the guard's whole-word hold {row['word_hold_ms']:.0f} ms, "
                    f"the gateway's own {row['gateway_added_ms']:+.0f} ms",
                    flush=True,
                )
        finally:
            serving.__exit__(None, None, None)
    upstream_cpu, gateway_cpu = _cores()
    placement = (
        f"Each upstream ran on core {upstream_cpu} (one thread), the gateway and the client on core {gateway_cpu}."
        if upstream_cpu is not None
        else "Upstream, gateway and client shared this machine's cores."
    )
    return {"max_tokens": max_tokens, "repeats": repeats, "placement": placement, "rows": rows}


UPSTREAMS = {
    "llama_server": f"llama.cpp server (llama-cpp-python {LLAMA_VERSION}'s, 16 slots, batched)",
    "tandem": "tandem serve (batched)",
    "llama_cpp": f"llama-cpp-python {LLAMA_VERSION} (one request at a time)",
}
