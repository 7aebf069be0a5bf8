"""What the gateway costs in front of an upstream: the same streams sent straight to a llama.cpp
server and through `tandem serve --upstream` to it, in one run, alternating which goes first.

Each stream asks for a count that never ends by itself, so every answer is exactly `max_tokens`
long and throughput is streams x max_tokens over the wall time; time to first token is to the
first byte of text the client sees (the gateway's output guard included). The llama.cpp server is
llama-cpp-python's (`make llama-server`), one thread, so the gateway has the other core.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
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


@contextlib.contextmanager
def _serving(log_dir: Path) -> Iterator[tuple[str, str]]:
    """A llama.cpp server on the default model and a Tandem gateway in front of it: (direct, gateway) URLs."""
    python = llama_server_venv() / "bin" / "python"
    if not python.exists():
        raise RuntimeError(f"no llama-cpp-python server in {python.parent.parent}: `make llama-server` builds it")
    log_dir.mkdir(parents=True, exist_ok=True)
    lport, gport = _free_port(), _free_port()
    llama = subprocess.Popen(
        [str(python), "-m", "llama_cpp.server", "--model", str(models.default_gguf_path()), "--model_alias", models.DEFAULT_MODEL_NAME,
         "--host", "127.0.0.1", "--port", str(lport), "--n_ctx", "4096", "--n_threads", "1", "--n_threads_batch", "1",
         "--interrupt_requests", "False", "--verbose", "False"],
        stdout=open(log_dir / "llama-server.log", "wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    gateway = None
    try:
        direct = f"http://127.0.0.1:{lport}"
        _wait(f"{direct}/v1/models", llama, "llama.cpp server")
        gateway = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve", "--port", str(gport), "--upstream", direct, "--upstream-tokenizer", "default",
             "--context-length", "4096", "--upstream-max-concurrency", "32", "--audit-dir", str(log_dir / "audit"),
             "--dialog-dir", str(log_dir / "dialog"), "--log-level", "warning"],
            stdout=open(log_dir / "gateway.log", "wb"), stderr=subprocess.STDOUT, cwd=ROOT,
        )  # fmt: skip
        via = f"http://127.0.0.1:{gport}"
        _wait(f"{via}/healthz", gateway, "tandem serve --upstream")
        yield direct, via
    finally:
        for proc in (gateway, llama):
            if proc is not None:
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=30)
                if proc.poll() is None:
                    proc.kill()


async def _stream(client: httpx.AsyncClient, url: str, i: int, max_tokens: int, start: float) -> dict[str, Any]:
    body = {
        "model": models.DEFAULT_MODEL_NAME,
        "messages": [{"role": "user", "content": f"Count from {i * 1000} upwards, one number per line, and never stop."}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    }
    first, finish = None, None
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
            if first is None and (choice.get("delta") or {}).get("content"):
                first = time.perf_counter() - start
            finish = choice.get("finish_reason") or finish
    return {"ttft_s": first, "finish": finish, "end_s": time.perf_counter() - start}


async def _run(url: str, streams: int, max_tokens: int) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=600, trust_env=False) as client:
        start = time.perf_counter()
        done = await asyncio.gather(*(_stream(client, url, i, max_tokens, start) for i in range(streams)))
    wall = max(d["end_s"] for d in done)
    complete = sum(d["finish"] == "length" for d in done)
    ttfts = sorted(d["ttft_s"] * 1000 for d in done if d["ttft_s"] is not None)
    return {
        "tok_s": streams * max_tokens / wall,
        "ttft_p50_ms": statistics.median(ttfts),
        "ttft_mean_ms": statistics.fmean(ttfts),
        "complete": complete,
    }


def measure_gateway_overhead(streams: list[int], max_tokens: int, repeats: int, log_dir: Path) -> dict[str, Any]:
    rows = []
    with _serving(log_dir) as (direct, via):
        asyncio.run(_run(direct, 2, 4))  # warm both paths
        asyncio.run(_run(via, 2, 4))
        for n in streams:
            runs: dict[str, list[dict[str, Any]]] = {"direct": [], "gateway": []}
            for rep in range(repeats):
                for name in ("direct", "gateway") if rep % 2 == 0 else ("gateway", "direct"):
                    runs[name].append(asyncio.run(_run(direct if name == "direct" else via, n, max_tokens)))
            med = {
                name: {k: round(statistics.median(r[k] for r in rs), 1) for k in ("tok_s", "ttft_p50_ms", "ttft_mean_ms")}
                | {"incomplete": sum(n - r["complete"] for r in rs)}
                for name, rs in runs.items()
            }
            row = {
                "streams": n,
                **med,
                "tok_s_overhead_pct": round(100 * (1 - med["gateway"]["tok_s"] / med["direct"]["tok_s"]), 1),
                "ttft_p50_added_ms": round(med["gateway"]["ttft_p50_ms"] - med["direct"]["ttft_p50_ms"], 1),
                # per stream, paired by position in its run: the gateway's share of each stream's wait
                "runs": runs,
            }
            rows.append(row)
            print(
                f"  {n:>3} streams: direct {med['direct']['tok_s']:.1f} tok/s, TTFT p50 {med['direct']['ttft_p50_ms']:.0f} ms; "
                f"through the gateway {med['gateway']['tok_s']:.1f} tok/s ({row['tok_s_overhead_pct']:+.1f}% fewer), "
                f"TTFT p50 {med['gateway']['ttft_p50_ms']:.0f} ms ({row['ttft_p50_added_ms']:+.0f} ms)",
                flush=True,
            )
    return {"upstream": f"llama-cpp-python {LLAMA_VERSION}, 1 thread", "max_tokens": max_tokens, "repeats": repeats, "rows": rows}
