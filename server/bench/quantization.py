"""Each quantization mode side by side: memory, batch-1 and batch-16 decode speed through the
engine, and perplexity on held-out text relative to full precision."""

from __future__ import annotations

import gc
import statistics
from dataclasses import dataclass, field
from typing import Any

from .. import models
from ..engine import Engine, EngineConfig
from .baselines import UnfusedEngine, UnpackedEngine
from .ceiling import read_bandwidth, weight_bytes_per_token
from .measure import percentile
from .peers import engine_streams
from .quality import perplexity
from .workload import chat_ids, heldout_text


@dataclass
class QuantRow:
    quant: str
    footprint_mib: float
    weight_bytes_per_token: int
    decode_b1_tok_s: float
    decode_b16_tok_s: float
    bandwidth_bytes_per_s: float  # measured next to each batch-1 run (the neighbours' load moves both)
    fraction_of_ceiling: float  # median over rounds of decode x bytes per token / bandwidth
    perplexity: dict[str, float] = field(default_factory=dict)
    perplexity_vs_none: dict[str, float] = field(default_factory=dict)
    decode_step: str = ""  # which step served (Engine.decode_step)


def decode_rate(engine: Engine, tokenizer: Any, streams: int, max_tokens: int) -> float:
    """Decode tokens/s at a batch of `streams`: rows per step over the median step time."""
    run = engine_streams(engine, chat_ids(tokenizer, streams), max_tokens)
    return streams / percentile(run.itl, 50)


def measure_quant(
    spec: str | None, quant: str, max_tokens: int, ppl_tokens: int, rounds_b1: int = 3, compile_decode: bool = False, log: Any = print
) -> QuantRow:
    """The engine as `tandem serve` runs it in each mode (compiling its step where it can,
    unless told not to)."""
    loaded = models.load(spec, quant)
    per_token = weight_bytes_per_token(loaded.model, loaded.footprint_bytes)  # before the engine repacks the weights
    engine = Engine(
        loaded.model,
        loaded.tokenizer,
        EngineConfig(max_batch_size=64, max_waiting=256, prefix_cache_tokens=0, decode="compiled" if compile_decode else "eager"),
    ).start()
    engine.compiled.wait()
    try:
        decode_rate(engine, loaded.tokenizer, 1, 4)  # warm-up: first calls allocate and pick kernels
        b1, bw, fraction = _medians([_paired_b1(engine, loaded.tokenizer, max_tokens) for _ in range(rounds_b1)], per_token)
        b16 = decode_rate(engine, loaded.tokenizer, 16, max_tokens)
        decode_step = engine.decode_step
    finally:
        engine.close()
    ppl = {name: round(perplexity(loaded.model, loaded.tokenizer, text, ppl_tokens), 3) for name, text in heldout_text()}
    row = QuantRow(quant, loaded.footprint_bytes / 2**20, per_token, b1, b16, bw, fraction, ppl, decode_step=decode_step)
    log(
        f"  {quant:>5}: {row.footprint_mib:6.1f} MiB, decode {b1:6.1f} tok/s at batch 1 ({decode_step} step), {b16:6.1f} at 16, perplexity {ppl}"
    )
    del engine, loaded
    gc.collect()
    return row


def _paired_b1(engine: Engine, tokenizer: Any, max_tokens: int) -> tuple[float, float]:
    """(batch-1 decode tok/s, read bandwidth just before it): paired, so that a noisy neighbour on
    the host moves both sides of the ratio."""
    bandwidth = read_bandwidth(repeats=3)["bytes_per_s"]
    return decode_rate(engine, tokenizer, 1, max_tokens), bandwidth


def _medians(pairs: list[tuple[float, float]], per_token: int) -> tuple[float, float, float]:
    """Median decode rate, bandwidth and fraction of the ceiling over paired rounds."""
    return (
        statistics.median(r for r, _ in pairs),
        statistics.median(b for _, b in pairs),
        statistics.median(r * per_token / b for r, b in pairs),
    )


def relative_to_none(rows: list[QuantRow]) -> None:
    base = next((r for r in rows if r.quant == "none"), None)
    if base is None:
        return
    for row in rows:
        row.perplexity_vs_none = {k: round(v / base.perplexity[k], 3) for k, v in row.perplexity.items()}


PATHS: dict[str, tuple[type[Engine], str]] = {  # name: (the engine, EngineConfig.decode)
    "transformers_forward": (Engine, "transformers"),
    "fast_step": (UnpackedEngine, "eager"),
    "fast_step_packed": (UnfusedEngine, "eager"),
    "fast_step_packed_fused": (Engine, "eager"),
    "fast_step_packed_fused_compiled": (Engine, "compiled"),  # `tandem serve`'s default
}


def needs_unfused_copy(names: list[str]) -> bool:
    """Whether any of these paths packs weights without fusing them (it needs a model copy of its own)."""
    return any(PATHS[name][0] is UnfusedEngine for name in names)


def decode_paths(plain: Any, served: Any, unfused: Any, max_tokens: int, rounds: int, names: list[str]) -> dict[str, Any]:
    """Decode at 1 and 16 rows through transformers' forward, through the engine's own step
    (`server/engine/fast_decode.py`), through that step on MKL-packed weights, with q/k/v and
    gate/up fused into one packed matrix each (`server/engine/packed.py`), and with its
    step compiled: the before and after of each. `plain` is a model as transformers loads it,
    `unfused` and `served` copies that the engines pack in place (without and with fusing;
    `unfused` may be None where `needs_unfused_copy(names)` is false); `names` picks the paths
    (keys of PATHS), which must include "fast_step_packed_fused". Batch-1 rounds are paired
    with a bandwidth reading; the paths take turns going first."""
    per_token = weight_bytes_per_token(plain.model, plain.footprint_bytes)
    paths = {name: PATHS[name] for name in names}
    copies = {Engine: served, UnfusedEngine: unfused, UnpackedEngine: plain}
    engines = {
        name: kind(
            (plain if decode == "transformers" else copies[kind]).model, plain.tokenizer, EngineConfig(prefix_cache_tokens=0, decode=decode)
        ).start()
        for name, (kind, decode) in paths.items()
    }
    for engine in engines.values():
        engine.compiled.wait()
    b1: dict[str, list[tuple[float, float]]] = {name: [] for name in engines}
    b16: dict[str, list[float]] = {name: [] for name in engines}
    try:
        for engine in engines.values():
            decode_rate(engine, plain.tokenizer, 1, 4)  # warm-up
        for i in range(rounds):
            order = list(engines)[i % len(engines) :] + list(engines)[: i % len(engines)]
            for name in order:
                b1[name].append(_paired_b1(engines[name], plain.tokenizer, max_tokens))
            for name in order:
                b16[name].append(decode_rate(engines[name], plain.tokenizer, 16, max_tokens))
    finally:
        for engine in engines.values():
            engine.close()
    out: dict[str, Any] = {
        "fast_step_active": engines["fast_step_packed_fused"].fast_decode,
        "packed_linears": engines["fast_step_packed_fused"].packed_linears,
    }
    if "fast_step_packed_fused_compiled" in engines:  # "engine" here: the compile failed or fell back (the log says why)
        out["compiled_path_step"] = engines["fast_step_packed_fused_compiled"].decode_step
    for name in engines:
        rate, _, fraction = _medians(b1[name], per_token)
        out[name] = {
            "decode_b1_tok_s": round(rate, 1),
            "fraction_of_ceiling": round(fraction, 3),
            "decode_b16_tok_s": round(statistics.median(b16[name]), 1),
        }
    return out
