"""Mixed load: one developer typing (a completion request at each pause) while support-chat
streams run, against the same requests with no chat running. What matters to the developer is
the time to the first token of each suggestion."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from ..engine import Engine, GenerationRequest
from ..engine.types import Priority
from .measure import percentile
from .workload import chat_ids, code_prefixes


@dataclass
class MixedResult:
    chat_streams: int
    completions: int  # timed in the steady state: after the first, which prefills the whole window
    ttft_p50_ms: float
    ttft_p95_ms: float
    first_ttft_ms: float  # the first request of the session (nothing of the file in the prefix cache yet)
    chat_tokens: int


async def _typing(engine: Engine, prefixes: list[str], interval: float, max_tokens: int) -> list[float]:
    """A completion request every `interval` seconds (a developer's pauses while typing), each
    at interactive priority, as the language server sends them; every one is timed to its first token."""
    ttfts: list[float] = [0.0] * len(prefixes)

    async def complete(i: int, prefix: str) -> None:
        started, first = time.perf_counter(), True
        async for delta in engine.stream(
            GenerationRequest(prompt=prefix, max_tokens=max_tokens, stop=("\n\n",), priority=Priority.INTERACTIVE)
        ):
            if first and delta.tokens >= 1:
                ttfts[i] = time.perf_counter() - started
                first = False

    tasks = []
    for i, prefix in enumerate(prefixes):
        tasks.append(asyncio.create_task(complete(i, prefix)))
        await asyncio.sleep(interval)
    await asyncio.gather(*tasks)
    return ttfts


async def _chat_until(engine: Engine, prompt: list[int], stop: asyncio.Event, counter: list[int]) -> None:
    while not stop.is_set():
        async for delta in engine.stream(GenerationRequest(prompt=prompt, max_tokens=256)):
            counter[0] += 1 if delta.tokens else 0
            if stop.is_set():
                break


async def _measure(engine: Engine, tokenizer: Any, chats: int, completions: int, interval: float, max_tokens: int) -> MixedResult:
    stop, counter = asyncio.Event(), [0]
    chat_tasks = [asyncio.create_task(_chat_until(engine, ids, stop, counter)) for ids in chat_ids(tokenizer, chats)]
    if chats:
        while engine.running < chats:  # every chat stream is decoding before the typing starts
            await asyncio.sleep(0.02)
    ttfts = await _typing(engine, code_prefixes(completions), interval, max_tokens)
    stop.set()
    await asyncio.gather(*chat_tasks)
    steady = ttfts[1:]
    return MixedResult(chats, len(steady), percentile(steady, 50) * 1000, percentile(steady, 95) * 1000, ttfts[0] * 1000, counter[0])


def mixed_load(engine: Engine, tokenizer: Any, chats: int, completions: int, interval: float = 0.8, max_tokens: int = 16) -> MixedResult:
    return asyncio.run(_measure(engine, tokenizer, chats, completions, interval, max_tokens))
