"""What the per-row sampling controls cost: decode speed with penalties, a logit bias, logprobs and
a JSON schema (constrained decoding) against plain decoding, at 1 and 16 rows, on one engine as
`tandem serve` runs it.

Every row of a round asks for the same thing (its cost per token), and one more case puts one
controlled row among plain ones: the plain rows' speed there is what the plain path pays for a
neighbour with controls (nothing, if the controls are truly per row). Cases alternate in
rotating order over the rounds; cells are medians.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import statistics
import time
from typing import Any

from ..engine import Engine, EngineConfig, GenerationRequest, Grammar, LogitControls
from .workload import chat_ids

PENALTIES = LogitControls(presence_penalty=0.5, frequency_penalty=0.5, repetition_penalty=1.1)
BIAS = LogitControls(logit_bias=tuple((t, -5.0) for t in range(1000, 1064)))
# a list of records long enough that no answer is complete before its last token (minItems)
PEOPLE = {
    "type": "array",
    "minItems": 40,
    "items": {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer", "minimum": 0, "maximum": 120}},
        "required": ["name", "age"],
        "additionalProperties": False,
    },
}
CASES: dict[str, dict[str, Any]] = {
    "plain": {},
    "penalties": {"controls": PENALTIES},
    "logit_bias": {"controls": BIAS},
    "logprobs_5": {"logprobs": 5},
    "json_schema": {"grammar": Grammar("json_schema", json.dumps(PEOPLE))},
    "all_of_them": {"controls": dataclasses.replace(PENALTIES, logit_bias=BIAS.logit_bias), "logprobs": 5},
}


async def _round(engine: Engine, prompts: list[list[int]], max_tokens: int, kinds: list[dict[str, Any]]) -> dict[str, float]:
    """All rows at once, greedy; tokens/s over the round for all rows and for the plain ones."""
    done: list[tuple[bool, int]] = []
    t0 = time.perf_counter()

    async def one(prompt: list[int], kind: dict[str, Any]) -> None:
        req = GenerationRequest(prompt=prompt, max_tokens=max_tokens, temperature=0.0, **kind)
        async for delta in engine.stream(req):
            if delta.finish_reason is not None:
                done.append((not kind, delta.tokens))

    await asyncio.gather(*(one(p, k) for p, k in zip(prompts, kinds)))
    seconds = time.perf_counter() - t0
    plain = [t for is_plain, t in done if is_plain]
    return {"tok_s": sum(t for _, t in done) / seconds, "plain_tok_s": sum(plain) / seconds if plain else 0.0}


def measure_sampling_costs(served: Any, rows: list[int], max_tokens: int, rounds: int, compile_decode: bool) -> dict[str, Any]:
    engine = Engine(
        served.model,
        served.tokenizer,
        EngineConfig(max_batch_size=64, prefix_cache_tokens=0, speculative=False, decode="compiled" if compile_decode else "eager"),
    ).start()
    engine.compiled.wait()
    table: list[dict[str, Any]] = []
    try:
        # first calls allocate and pick kernels, and build the grammars' tokenizer
        asyncio.run(_round(engine, chat_ids(served.tokenizer, 2), 4, [{}, CASES["json_schema"]]))
        for n in rows:
            prompts = chat_ids(served.tokenizer, n)
            cases = {name: [kind] * n for name, kind in CASES.items()}
            if n > 1:
                cases["one_of_them_controlled"] = [CASES["all_of_them"]] + [{}] * (n - 1)
            runs: dict[str, list[dict[str, float]]] = {name: [] for name in cases}
            names = list(cases)
            for rep in range(rounds):
                for name in names[rep % len(names) :] + names[: rep % len(names)]:  # a rotating order
                    runs[name].append(asyncio.run(_round(engine, prompts, max_tokens, cases[name])))
            plain = statistics.median(r["tok_s"] for r in runs["plain"])
            for name, found in runs.items():
                tok_s = statistics.median(r["tok_s"] for r in found)
                row = {"rows": n, "case": name, "tok_s": round(tok_s, 1), "cost_vs_plain": round(plain / tok_s, 3)}
                if name == "one_of_them_controlled":
                    plain_rows = statistics.median(r["plain_tok_s"] for r in found) * n / (n - 1)  # per row, scaled to the batch
                    row["plain_rows_vs_plain"] = round(plain / plain_rows, 3)
                table.append(row)
                print(f"  {n:>3} rows, {name}: {tok_s:.1f} tok/s, x{row['cost_vs_plain']} per token vs plain", flush=True)
    finally:
        engine.close()
    return {"max_tokens": max_tokens, "rounds": rounds, "decode_step": engine.decode_step, "rows": table}
