"""What the gateway costs in front of an upstream: the same streams sent straight to an upstream
and through `tandem serve --upstream` to it, in one run, alternating which goes first.

Two upstreams: llama.cpp's server through llama-cpp-python (`make llama-server`; one request at a
time, one thread, so the gateway has the other core), and another `tandem serve` (continuous
batching: the case where many streams are in flight at once; it shares this machine's two cores
with the gateway, so its figures include the gateway's CPU taken from it). Each stream asks for
a short story; tokens are counted with the model's tokenizer in the text the client received
(the same text both ways at temperature 0); time to first token is to the first text the client
sees (from that stream's own start), so it includes the output guard holding a word back until it
is whole. Streams arrive 50 ms apart, the same both ways.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
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


def _gateway(log_dir: Path, upstream: str) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    gateway = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--port", str(port), "--upstream", upstream, "--upstream-tokenizer", "default",
         "--context-length", "4096", "--upstream-max-concurrency", "32", "--audit-dir", str(log_dir / "gateway-audit"),
         "--dialog-dir", str(log_dir / "gateway-dialog"), "--log-level", "warning"],
        stdout=open(log_dir / "gateway.log", "wb"), stderr=subprocess.STDOUT, cwd=ROOT,
    )  # fmt: skip
    return gateway, f"http://127.0.0.1:{port}"


def _upstream(kind: str, log_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    if kind == "llama_cpp":
        python = llama_server_venv() / "bin" / "python"
        if not python.exists():
            raise RuntimeError(f"no llama-cpp-python server in {python.parent.parent}: `make llama-server` builds it")
        args = [str(python), "-m", "llama_cpp.server", "--model", str(models.default_gguf_path()), "--model_alias", models.DEFAULT_MODEL_NAME,
                "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096", "--n_threads", "1", "--n_threads_batch", "1",
                "--interrupt_requests", "False", "--verbose", "False"]  # fmt: skip
    else:
        # --no-compile: the compile of the one-row step takes a minute of CPU in the background, which would
        # land on whichever side of the comparison runs first
        args = [sys.executable, "-m", "server.cli", "serve", "--port", str(port), "--audit-dir", str(log_dir / "upstream-audit"),
                "--dialog-dir", str(log_dir / "upstream-dialog"), "--log-level", "warning", "--no-compile"]  # fmt: skip
    proc = subprocess.Popen(args, stdout=open(log_dir / f"{kind}.log", "wb"), stderr=subprocess.STDOUT, cwd=ROOT)
    return proc, f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def _serving(kind: str, log_dir: Path) -> Iterator[tuple[str, str]]:
    """An upstream on the default model and a Tandem gateway in front of it: (direct, gateway) URLs."""
    log_dir.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        upstream, direct = _upstream(kind, log_dir)
        procs.append(upstream)
        _wait(f"{direct}/v1/models", upstream, kind)
        gateway, via = _gateway(log_dir, direct)
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
    first, finish, text = None, None, []
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
                first = first if first is not None else time.perf_counter() - start
            finish = choice.get("finish_reason") or finish
    return {"ttft_s": first, "finish": finish, "end_s": time.perf_counter() - start, "text": "".join(text)}


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
        "complete": sum(d["finish"] in ("stop", "length") for d in done),
    }


def measure_gateway_overhead(streams: list[int], max_tokens: int, repeats: int, log_dir: Path, tokenizer: Any) -> dict[str, Any]:
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
            asyncio.run(_run(direct, 2, 4, tokenizer))  # warm both paths
            asyncio.run(_run(via, 2, 4, tokenizer))
            for n in streams:
                runs: dict[str, list[dict[str, Any]]] = {"direct": [], "gateway": []}
                for rep in range(repeats):
                    for name in ("direct", "gateway") if rep % 2 == 0 else ("gateway", "direct"):
                        runs[name].append(asyncio.run(_run(direct if name == "direct" else via, n, max_tokens, tokenizer)))
                med = {
                    name: {k: round(statistics.median(r[k] for r in rs), 1) for k in ("tok_s", "ttft_p50_ms", "ttft_mean_ms")}
                    | {"failed": sum(n - r["complete"] for r in rs)}
                    for name, rs in runs.items()
                }
                row = {
                    "upstream": label,
                    "streams": n,
                    **med,
                    "tok_s_overhead_pct": round(100 * (1 - med["gateway"]["tok_s"] / med["direct"]["tok_s"]), 1),
                    "ttft_p50_added_ms": round(med["gateway"]["ttft_p50_ms"] - med["direct"]["ttft_p50_ms"], 1),
                    "runs": runs,
                }
                rows.append(row)
                print(
                    f"  {label}, {n:>2} streams: direct {med['direct']['tok_s']:.1f} tok/s, TTFT p50 {med['direct']['ttft_p50_ms']:.0f} ms; "
                    f"through the gateway {med['gateway']['tok_s']:.1f} tok/s ({row['tok_s_overhead_pct']:+.1f}% fewer), "
                    f"TTFT p50 {med['gateway']['ttft_p50_ms']:.0f} ms ({row['ttft_p50_added_ms']:+.0f} ms)",
                    flush=True,
                )
        finally:
            serving.__exit__(None, None, None)
    return {"max_tokens": max_tokens, "repeats": repeats, "rows": rows}


UPSTREAMS = {"tandem": "tandem serve (batched)", "llama_cpp": f"llama-cpp-python {LLAMA_VERSION} (one request at a time, 1 thread)"}
