"""Prompt-lookup speculation on and off, on code completion, at several batch sizes.

One engine (compiled step and all, as `tandem serve` runs it) whose speculation is
switched between rounds, on and off alternating, so both see the same weights, caches and
neighbours on the host; cells are medians over the rounds. The gate on the batch size is lifted
here so that every size is measured with speculation on; the sizes where it is not slower are
what `SPEC_MAX_ROWS` should allow.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from ..engine import Engine, EngineConfig, GenerationRequest, Priority
from ..engine.speculative import DRAFT_TOKENS, SPEC_MAX_ROWS
from .workload import CODE_SOURCES, code_completion_prompts


async def _round(engine: Engine, prompts: list[str], max_tokens: int) -> dict[str, float]:
    """All prompts arrive at once; tokens/s over the round, and each request's latency to its last token."""
    before = _counts(engine)
    t0 = time.perf_counter()
    latencies: list[float] = []
    tokens = [0]

    async def one(prompt: str) -> None:
        async for delta in engine.stream(GenerationRequest(prompt=prompt, max_tokens=max_tokens, priority=Priority.INTERACTIVE)):
            if delta.finish_reason is not None:
                tokens[0] += delta.tokens
                latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(one(p) for p in prompts))
    seconds = time.perf_counter() - t0
    after = _counts(engine)
    spec, drafted, accepted, steps = (int(a - b) for a, b in zip(after, before))
    return {
        "tok_s": tokens[0] / seconds,
        "latency_p50_ms": statistics.median(latencies) * 1000,
        "tokens": tokens[0],
        "steps": steps,
        "speculative_steps": spec,
        "drafted": drafted,
        "accepted": accepted,
    }


def _counts(engine: Engine) -> tuple[float, ...]:
    """Speculative steps, drafted and accepted tokens, and row-steps (decode steps times the rows
    in each: a row's tokens per row-step is 1 without speculation), from the engine's registry."""
    m = engine.metrics
    return (
        m.read("tandem_speculative_steps_total"),
        m.read("tandem_speculative_drafted_tokens_total"),
        m.read("tandem_speculative_accepted_tokens_total"),
        m.read("tandem_batch_size_sum"),
    )


def _median(runs: list[dict[str, float]]) -> dict[str, Any]:
    out: dict[str, Any] = {k: round(statistics.median(r[k] for r in runs), 1) for k in ("tok_s", "latency_p50_ms")}
    drafted = sum(r["drafted"] for r in runs)
    out["acceptance"] = round(sum(r["accepted"] for r in runs) / drafted, 3) if drafted else None
    out["tokens_per_step"] = round(sum(r["tokens"] for r in runs) / max(sum(r["steps"] for r in runs), 1), 2)  # per row and step
    out["rounds"] = len(runs)
    return out


def measure_speculative(
    served: Any, rows: list[int], max_tokens: int, rounds: int, compile_decode: bool, draft_sweep: list[int]
) -> dict[str, Any]:
    engine = Engine(
        served.model,
        served.tokenizer,
        EngineConfig(max_batch_size=64, max_waiting=256, prefix_cache_tokens=0, decode="compiled" if compile_decode else "eager"),
    ).start()
    engine.compiled.wait()  # as it serves once warm
    engine.spec_max_rows = max(rows)
    table: list[dict[str, Any]] = []
    try:
        asyncio.run(_round(engine, code_completion_prompts(2), 4))  # first calls allocate and pick kernels
        for n in rows:
            prompts = code_completion_prompts(n)
            runs: dict[bool, list[dict[str, float]]] = {True: [], False: []}
            for rep in range(rounds):
                for on in (True, False) if rep % 2 == 0 else (False, True):
                    engine.speculative = on
                    runs[on].append(asyncio.run(_round(engine, prompts, max_tokens)))
            on_run, off_run = _median(runs[True]), _median(runs[False])
            row = {"rows": n, "on": on_run, "off": off_run, "speedup": round(on_run["tok_s"] / off_run["tok_s"], 2)}
            table.append(row)
            print(
                f"  {n:>3} rows: on {on_run['tok_s']:.1f} tok/s (acceptance {on_run['acceptance']}), off {off_run['tok_s']:.1f} tok/s, "
                f"x{row['speedup']}",
                flush=True,
            )
        sweep = []
        if draft_sweep:  # the draft length at one row, speculation on throughout
            engine.speculative = True
            prompts = code_completion_prompts(4)
            runs_by_k: dict[int, list[dict[str, float]]] = {k: [] for k in draft_sweep}
            for rep in range(rounds):
                for k in draft_sweep[rep % len(draft_sweep) :] + draft_sweep[: rep % len(draft_sweep)]:
                    engine.draft_tokens = k
                    runs_by_k[k].append(_pooled([asyncio.run(_round(engine, [p], max_tokens)) for p in prompts]))
            engine.draft_tokens = DRAFT_TOKENS
            sweep = [{"draft_tokens": k, **_median(r)} for k, r in runs_by_k.items()]
            print("  draft length at 1 row: " + ", ".join(f"k={s['draft_tokens']} {s['tok_s']:.1f} tok/s" for s in sweep), flush=True)
    finally:
        engine.close()
    allowed = 0
    for row in table:  # the largest size up to which no measured size is slower with speculation
        if row["speedup"] < 1.0:
            break
        allowed = row["rows"]
    return {
        "prompts": "code completion, cut from " + ", ".join(f"{p}/{f}" for p, f in CODE_SOURCES),
        "max_tokens": max_tokens,
        "rounds": rounds,
        "draft_tokens": DRAFT_TOKENS,
        "spec_max_rows": SPEC_MAX_ROWS,
        "measured_max_rows": allowed,
        "decode_step": engine.decode_step,
        "rows": table,
        "draft_sweep": sweep,
    }


def _pooled(runs: list[dict[str, float]]) -> dict[str, float]:
    """Several one-row requests run one after another, as one run."""
    seconds = sum(r["tokens"] / r["tok_s"] for r in runs)
    out = {k: float(sum(r[k] for r in runs)) for k in ("tokens", "steps", "speculative_steps", "drafted", "accepted")}
    out["tok_s"] = out["tokens"] / seconds
    out["latency_p50_ms"] = statistics.median(r["latency_p50_ms"] for r in runs)
    return out
