"""What every benchmark run records, and how it is summarised.

A run starts with all of its requests arriving at once (t0). Time to first token is measured
from t0, so a request that waits behind others pays for the wait, as a user would. Memory is the
process's resident set sampled every 5 ms during the run, above what it was just before it
(after handing freed heap back to the OS), so earlier runs do not hide later ones' allocations.
"""

from __future__ import annotations

import ctypes
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psutil

# bench.json's key for the engine's throughput over each peer's
RATIO_KEYS = {
    "sequential_generate": "ratio_vs_sequential",
    "static_batch_generate": "ratio_vs_static_batch",
    "cb_manager": "ratio_vs_cb_manager",
    "llama_cpp": "ratio_vs_llama_cpp",
}


@dataclass
class Run:
    tokens: int = 0
    seconds: float = 0.0
    ttft: list[float] = field(default_factory=list)  # per request, from t0
    itl: list[float] = field(default_factory=list)  # every gap between two tokens of one request
    peak_rss_delta: int = 0  # bytes above the pre-run resident set

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


@dataclass
class Summary:
    tok_s: float
    ttft_p50_ms: float
    ttft_p95_ms: float
    itl_p50_ms: float
    peak_mem_mib: float
    tokens: int
    runs: int

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 1) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def summarise(runs: list[Run]) -> Summary:
    """The median run by throughput for rates; latencies pooled over all runs; the worst memory."""
    ttft = [t for r in runs for t in r.ttft]
    itl = [t for r in runs for t in r.itl]
    return Summary(
        tok_s=statistics.median(r.rate for r in runs),
        ttft_p50_ms=percentile(ttft, 50) * 1000,
        ttft_p95_ms=percentile(ttft, 95) * 1000,
        itl_p50_ms=percentile(itl, 50) * 1000,
        peak_mem_mib=max(r.peak_rss_delta for r in runs) / 2**20,
        tokens=runs[0].tokens,
        runs=len(runs),
    )


def _trim_heap() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the baseline is a little higher, that is all
        pass


class MemorySampler:
    """Peak resident set above the starting one, sampled in a thread while the block runs."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak_delta = 0
        self._process = psutil.Process()
        self._stop = threading.Event()

    def __enter__(self) -> MemorySampler:
        _trim_heap()
        self._base = self._process.memory_info().rss
        self._peak = self._base
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, self._process.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, self._process.memory_info().rss)
        self.peak_delta = self._peak - self._base


class TokenClock:
    """Per-request token timestamps, turned into a Run's TTFT and inter-token gaps."""

    def __init__(self, n: int) -> None:
        self.t0 = time.perf_counter()
        self.times: list[list[float]] = [[] for _ in range(n)]

    def tick(self, i: int, count: int = 1, at: float | None = None) -> None:
        now = time.perf_counter() if at is None else at
        self.times[i].extend([now] * count)

    def run(self, tokens: int | None = None, memory: int = 0) -> Run:
        end = max((t[-1] for t in self.times if t), default=self.t0)
        ttft = [t[0] - self.t0 for t in self.times if t]
        itl = [b - a for t in self.times for a, b in zip(t, t[1:])]
        total = sum(len(t) for t in self.times) if tokens is None else tokens
        return Run(total, end - self.t0, ttft, itl, memory)
