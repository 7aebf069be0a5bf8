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
from .workload import chat_ids, code_prefixes, long_prompt_ids


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


@dataclass
class StallResult:
    """8 chat streams decoding when a long prompt arrives: how long they wait for a token while
    it is prefilled, in their own steps (the median gap between two of their tokens before it)."""

    chunked: bool
    prompt_tokens: int
    step_ms: float  # the chat streams' median inter-token gap before the arrival
    longest_gap_ms: float  # the longest gap of any chat stream from the arrival to the long prompt's first token
    stall_steps: float  # (longest gap - step) / step: the steps a stream lost to the prefill
    long_ttft_ms: float  # the long prompt's own time to first token
    step_after_ms: float  # the chat streams' median gap once the long prompt decodes beside them (attention over its columns)


async def _stall(engine: Engine, tokenizer: Any, chats: int, prompt_tokens: int) -> tuple[float, float, float, float]:
    stop = asyncio.Event()
    times: list[list[float]] = [[] for _ in range(chats)]

    async def chat(i: int, ids: list[int]) -> None:
        while not stop.is_set():
            async for delta in engine.stream(GenerationRequest(prompt=ids, max_tokens=512)):
                if delta.tokens:
                    times[i].append(time.perf_counter())
                if stop.is_set():
                    break

    tasks = [asyncio.create_task(chat(i, ids)) for i, ids in enumerate(chat_ids(tokenizer, chats))]
    while engine.running < chats or min(len(t) for t in times) < 12:  # every stream decoding, a steady stretch measured
        await asyncio.sleep(0.02)
    arrived = time.perf_counter()
    first = 0.0
    async for delta in engine.stream(GenerationRequest(prompt=long_prompt_ids(tokenizer, prompt_tokens), max_tokens=4)):
        if delta.tokens and not first:
            first = time.perf_counter()
    landed = len(times[0])
    while min(len(t) for t in times) < landed + 8:  # a few more tokens each after the long prompt joined
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.gather(*tasks)
    before = [b - a for t in times for a, b in zip(t, t[1:]) if b < arrived]
    during = [b - a for t in times for a, b in zip(t, t[1:]) if b > arrived and a < first]
    after = [b - a for t in times for a, b in zip(t, t[1:]) if a > first]
    return percentile(before, 50), max(during, default=0.0), first - arrived, percentile(after, 50)


def long_prompt_stall(engine: Engine, tokenizer: Any, chunked: bool, chats: int = 8, prompt_tokens: int = 4000) -> StallResult:
    step, gap, ttft, after = asyncio.run(_stall(engine, tokenizer, chats, prompt_tokens))
    return StallResult(chunked, prompt_tokens, step * 1000, gap * 1000, (gap - step) / step, ttft * 1000, after * 1000)
