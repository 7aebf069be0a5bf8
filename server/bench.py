"""`tandem bench`: the engine's aggregate throughput against sequential `model.generate`.

Same model, same prompts, same greedy decoding and token limits, in one run, on one machine.
Each cell is the median of `--repeats` runs (machines here are noisy; compare ratios).
The prefix cache is off so the comparison measures batching alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from . import models
from .engine import Engine, EngineConfig, GenerationRequest

# Open-ended requests, so that answers run to the token limit rather than stopping early.
PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a refrigerator works.",
    "Describe the water cycle in detail.",
    "Write a letter to a friend about your holiday.",
    "Explain why the sky is blue.",
    "Describe how to bake bread at home.",
    "Write a poem about the sea.",
    "Explain how vaccines work.",
    "Describe a day in the life of a farmer.",
    "Explain the rules of chess.",
    "Write a short story about a robot learning to paint.",
    "Describe the history of the bicycle.",
    "Explain how a computer processor works.",
    "Describe your favourite city and why.",
    "Explain photosynthesis to a child.",
    "Write a product description for a backpack.",
]


def chat_ids(tokenizer: Any, n: int) -> list[list[int]]:
    prompts = [PROMPTS[i % len(PROMPTS)] + ("" if i < len(PROMPTS) else f" (version {i // len(PROMPTS)})") for i in range(n)]
    return [
        list(tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])
        for p in prompts
    ]


def sequential_generate(model: Any, prompts: list[list[int]], max_tokens: int, eos: set[int]) -> tuple[int, float]:
    """(tokens generated, seconds) for the prompts one after another through `model.generate`."""
    tokens, started = 0, time.perf_counter()
    with torch.inference_mode():
        for ids in prompts:
            out = model.generate(torch.tensor([ids]), attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
                                 max_new_tokens=max_tokens, do_sample=False, pad_token_id=min(eos))
            new = out[0, len(ids):].tolist()
            tokens += next((i + 1 for i, t in enumerate(new) if t in eos), len(new))
    return tokens, time.perf_counter() - started


async def _engine_run(engine: Engine, prompts: list[list[int]], max_tokens: int) -> int:
    async def one(ids: list[int]) -> int:
        count = 0
        async for delta in engine.stream(GenerationRequest(prompt=ids, max_tokens=max_tokens)):
            count = delta.tokens
        return count

    return sum(await asyncio.gather(*(one(ids) for ids in prompts)))


def engine_concurrent(engine: Engine, prompts: list[list[int]], max_tokens: int) -> tuple[int, float]:
    started = time.perf_counter()
    tokens = asyncio.run(_engine_run(engine, prompts, max_tokens))
    return tokens, time.perf_counter() - started


def _median_rate(runs: list[tuple[int, float]]) -> float:
    return statistics.median(t / s for t, s in runs)


def run_bench(args: argparse.Namespace) -> int:
    torch.manual_seed(0)
    loaded = models.load(args.model, args.quant)
    engine = Engine(loaded.model, loaded.tokenizer, EngineConfig(max_batch_size=64, max_waiting=256, prefix_cache_tokens=0)).start()
    eos = set(engine.eos_ids)
    levels = [int(s) for s in args.streams.split(",")]
    # warm-up: first calls allocate and pick kernels
    sequential_generate(loaded.model, chat_ids(loaded.tokenizer, 1), 8, eos)
    engine_concurrent(engine, chat_ids(loaded.tokenizer, 2), 8)

    rows = []
    for n in levels:
        prompts = chat_ids(loaded.tokenizer, n)
        seq_runs, eng_runs = [], []
        # Interleaved, in alternating order, so drifts in machine load hit both alike; cheap
        # cells get more runs (at one stream, run-to-run noise here exceeds 10 %).
        for rep in range(args.repeats if n > 4 else max(args.repeats, 7)):
            pair = [lambda: seq_runs.append(sequential_generate(loaded.model, prompts, args.max_tokens, eos)),
                    lambda: eng_runs.append(engine_concurrent(engine, prompts, args.max_tokens))]
            for run in pair if rep % 2 == 0 else reversed(pair):
                run()
        seq, eng = _median_rate(seq_runs), _median_rate(eng_runs)
        rows.append({"streams": n, "engine_tok_s": round(eng, 1), "sequential_generate_tok_s": round(seq, 1),
                     "ratio_vs_sequential": round(eng / seq, 2), "engine_tokens": eng_runs[0][0], "generate_tokens": seq_runs[0][0]})
        print(f"  {n:>3} streams: engine {eng:7.1f} tok/s, sequential generate {seq:6.1f} tok/s, ratio {eng / seq:5.2f}", flush=True)
    engine.close()

    kv_rows = []
    if args.kv_compare:  # the hand-written in-place KV layout against transformers' concatenating one
        n = max(levels)
        prompts = chat_ids(loaded.tokenizer, n)
        for preallocate in (True, False):
            eng2 = Engine(loaded.model, loaded.tokenizer, EngineConfig(max_batch_size=64, max_waiting=256, prefix_cache_tokens=0, preallocate_kv=preallocate)).start()
            rate = _median_rate([engine_concurrent(eng2, prompts, args.max_tokens) for _ in range(args.repeats)])
            eng2.close()
            kv_rows.append({"streams": n, "kv": "in-place (SlottedLayer)" if preallocate else "concatenating (DynamicLayer)", "tok_s": round(rate, 1)})
            print(f"  kv {kv_rows[-1]['kv']}: {rate:.1f} tok/s at {n} streams", flush=True)

    table = [
        f"Model {loaded.name} ({loaded.quant}), {args.max_tokens} new tokens per stream, greedy, median of {args.repeats} runs "
        f"(at least 7 at 1 and 4 streams), torch threads {torch.get_num_threads()}",
        "",
        "| streams | Tandem engine tok/s | sequential generate tok/s | ratio |",
        "|---:|---:|---:|---:|",
        *[f"| {r['streams']} | {r['engine_tok_s']} | {r['sequential_generate_tok_s']} | {r['ratio_vs_sequential']}x |" for r in rows],
    ]
    if kv_rows:
        table += ["", "| KV layout | streams | tok/s |", "|---|---:|---:|", *[f"| {r['kv']} | {r['streams']} | {r['tok_s']} |" for r in kv_rows]]
    print("\n".join(table))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench.md").write_text("\n".join(table) + "\n")
        (out / "bench.json").write_text(json.dumps({"model": loaded.name, "quant": loaded.quant, "max_tokens": args.max_tokens,
                                                     "repeats": args.repeats, "rows": rows, "kv_layout": kv_rows}, indent=2))
    return 0
