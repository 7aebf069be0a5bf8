"""The benchmark's driver: runs the sections, prints progress, writes bench.md and bench.json."""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch
import transformers

from .. import models
from ..engine import Engine, EngineConfig, bf16
from .ceiling import read_bandwidth
from .gateway_overhead import measure_gateway_overhead
from .measure import RATIO_KEYS, Run, summarise
from .mixed import long_prompt_stall, mixed_load
from .peers import LlamaCpp, continuous_batching_manager, engine_streams, llama_cpp_problem, sequential_generate, static_batch_generate
from .profile import measure_kernels, measure_profile
from .quantization import PATHS, decode_paths, measure_quant, needs_unfused_copy, relative_to_none
from .report import markdown
from .sampling_costs import measure_sampling_costs
from .speculative import measure_speculative
from .workload import chat_ids


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    quick = args.quick
    return {
        "streams": [int(s) for s in (args.streams or ("1,16" if quick else "1,4,16,32")).split(",")],
        "max_tokens": args.max_tokens or (12 if quick else 64),
        "repeats": args.repeats or (1 if quick else 3),
        "mixed_completions": 6 if quick else 40,
        "long_prompt_tokens": 1000 if quick else 4000,
        "quant_modes": ["none", "nf4"] if quick else list(models.QUANT_MODES),
        "quant_tokens": 16 if quick else 48,
        "ppl_tokens": 192 if quick else 2048,
        "b1_rounds": 1 if quick else 5,
        "path_rounds": 1 if quick else 3,
        "sections": args.sections.split(","),
        "gateway_streams": [1, 16],
        "spec_rows": [1, 8] if quick else [1, 2, 4, 8, 16],
        "spec_tokens": 16 if quick else 64,
        "spec_rounds": 1 if quick else 3,
        "spec_draft_sweep": [] if quick else [4, 8, 16],
        "sampling_rows": [1, 16],
        "profile_rows": [4, 16] if quick else [4, 16, 32],
        "profile_rounds": 5 if quick else 20,
        # the weight formats profiled: MKL's fp32, and oneDNN's bf16 where this CPU multiplies bf16 in hardware
        "profile_formats": ["mkl", "bf16"] if bf16.native() else ["mkl"],
        "compile": not quick,  # the compiled step, as `tandem serve` runs it (--quick cannot wait a minute for it)
        # --quick: the first and the last eager path only (each path is an engine, and one needs a model copy)
        "decode_paths": ["transformers_forward", "fast_step_packed_fused"] if quick else list(PATHS),
    }


def throughput(loaded: Any, served: Any, s: dict[str, Any], llama: LlamaCpp | None) -> list[dict[str, Any]]:
    """`loaded` is the peers' model, as transformers loads it; `served` is the engine's own copy
    (the engine repacks its weights in place, which must not speed up the peers)."""
    engine = Engine(
        served.model,
        served.tokenizer,
        EngineConfig(max_batch_size=64, max_waiting=256, prefix_cache_tokens=0, decode="compiled" if s["compile"] else "eager"),
    ).start()
    engine.compiled.wait()  # measure the engine as it serves once warm
    eos = set(engine.eos_ids)
    pad = engine.pad_id
    model = loaded.model
    peers: dict[str, Callable[[list[list[int]], int], Run]] = {
        "tandem_engine": lambda p, t: engine_streams(engine, p, t),
        "sequential_generate": lambda p, t: sequential_generate(model, p, t, eos),
        "static_batch_generate": lambda p, t: static_batch_generate(model, p, t, eos, pad),
        "cb_manager": lambda p, t: continuous_batching_manager(model, p, t, eos),
    }
    if llama is not None:
        peers["llama_cpp"] = lambda p, t: llama.run(p, t)
    warm = chat_ids(loaded.tokenizer, 2)
    for run in peers.values():  # first calls allocate and pick kernels
        run(warm, 4)
    rows = []
    try:
        for n in s["streams"]:
            prompts = chat_ids(loaded.tokenizer, n)
            runs: dict[str, list[Run]] = {name: [] for name in peers}
            order = list(peers)
            for rep in range(s["repeats"]):
                for name in order[rep % len(order) :] + order[: rep % len(order)]:  # rotate who goes first
                    runs[name].append(peers[name](prompts, s["max_tokens"]))
            summaries = {name: summarise(r).as_dict() for name, r in runs.items()}
            row: dict[str, Any] = {"streams": n, "peers": summaries}
            engine_rate = summaries["tandem_engine"]["tok_s"]
            for name, key in RATIO_KEYS.items():
                row[key] = round(engine_rate / summaries[name]["tok_s"], 2) if name in summaries else None
            rows.append(row)
            print(f"  {n:>3} streams: " + ", ".join(f"{name} {v['tok_s']:.1f} tok/s" for name, v in summaries.items()), flush=True)
    finally:
        engine.close()
    return rows


def run_bench(args: argparse.Namespace) -> int:
    torch.manual_seed(0)
    started = time.perf_counter()
    s = _settings(args)
    result: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        "quick": args.quick,
        "settings": s,
    }
    # the peers' copy, as transformers runs the mode (bf16: the model in bf16; fp32 unpacked),
    # unless --peers-quant names another mode for them
    loaded = models.load(args.model, args.peers_quant or args.quant, repack=False)
    served = models.load(args.model, args.quant)  # the engine's copy: it repacks the weights it is given
    tokenizer = loaded.tokenizer  # (the model copies go before the quantization section)
    result["model"] = {"name": served.name, "quant": served.quant, "footprint_mib": round(served.footprint_bytes / 2**20, 1)}
    result["peers_quant"] = loaded.quant

    llama = None
    gguf = (
        models.default_gguf_path() if args.model in (None, "default") else (Path(args.model) if str(args.model).endswith(".gguf") else None)
    )
    if args.no_llama_cpp:
        result["llama_cpp"] = {"status": "left out (--no-llama-cpp)"}
    elif gguf is None:
        result["llama_cpp"] = {"status": "no GGUF file for this model"}
    elif (problem := llama_cpp_problem(gguf)) is not None:
        result["llama_cpp"] = {"status": problem}
    else:
        llama = LlamaCpp(gguf, torch.get_num_threads())
        result["llama_cpp"] = {"status": "ran", "version": llama.version, "gguf": gguf.name}

    if "throughput" in s["sections"]:
        print(f"throughput: {s['max_tokens']} new tokens per stream, {s['repeats']} run(s) per cell", flush=True)
        rows = throughput(loaded, served, s, llama)
        result["throughput"] = rows
        at16 = next((r for r in rows if r["streams"] == 16), None)
        if at16 is not None:
            result["at_16_streams"] = {k: v for k, v in at16.items() if k.startswith("ratio_vs_")}
            result["ratio_vs_sequential"] = at16["ratio_vs_sequential"]
            result["ratio_vs_cb_manager"] = at16["ratio_vs_cb_manager"]
    del llama

    if "mixed" in s["sections"]:
        print("mixed load: completions at typing pace, idle and under 8 chat streams", flush=True)

        # the server's configuration (its step compiled once, by the warm-up's engine, unless --quick),
        # and a prefix cache that no earlier run has warmed
        decode = "compiled" if s["compile"] else "eager"
        warm = Engine(served.model, served.tokenizer, EngineConfig(max_batch_size=32, decode=decode)).start()
        warm.compiled.wait()
        mixed_load(warm, loaded.tokenizer, 8, 3)  # first calls allocate and pick kernels
        warm.close()
        result["mixed_decode"] = warm.decode_step

        def fresh(**config: Any) -> Engine:
            settings = EngineConfig(max_batch_size=32, decode=decode, **config)
            return Engine(served.model, served.tokenizer, settings, compiled_step=warm.compiled_step).start()

        runs: dict[int, list[Any]] = {0: [], 8: []}
        for rep in range(s["repeats"]):
            for chats in (0, 8) if rep % 2 == 0 else (8, 0):
                engine = fresh()
                try:
                    runs[chats].append(mixed_load(engine, loaded.tokenizer, chats, s["mixed_completions"]))
                finally:
                    engine.close()
        idle, busy = (sorted(runs[c], key=lambda r: r.ttft_p95_ms)[len(runs[c]) // 2] for c in (0, 8))  # the median run
        result["mixed"] = {"idle": asdict(idle), "under_8_chats": asdict(busy), "p95_ratio": round(busy.ttft_p95_ms / idle.ttft_p95_ms, 2)}
        print(f"  completion TTFT p95: idle {idle.ttft_p95_ms:.0f} ms, under 8 chats {busy.ttft_p95_ms:.0f} ms", flush=True)
        stalls: dict[bool, list[Any]] = {True: [], False: []}
        for rep in range(s["repeats"]):
            for chunked in (True, False) if rep % 2 == 0 else (False, True):
                engine = fresh() if chunked else fresh(chunk_prefill_above=0)
                try:
                    stalls[chunked].append(long_prompt_stall(engine, loaded.tokenizer, chunked, prompt_tokens=s["long_prompt_tokens"]))
                finally:
                    engine.close()
        median = {c: sorted(r, key=lambda x: x.stall_steps)[len(r) // 2] for c, r in stalls.items()}
        result["mixed"]["long_prompt"] = {"chunked": asdict(median[True]), "whole": asdict(median[False])}
        for c in (False, True):
            m = median[c]
            print(
                f"  a {m.prompt_tokens}-token prompt during 8 chats, {'chunked' if c else 'whole'}: longest gap {m.longest_gap_ms:.0f} ms "
                f"({m.stall_steps:.1f} steps lost at {m.step_ms:.0f} ms a step), its TTFT {m.long_ttft_ms:.0f} ms",
                flush=True,
            )

    if "profile" in s["sections"]:
        print(f"profile: the batched step's parts at {s['profile_rows']} rows, weights {s['profile_formats']}", flush=True)
        result["profile"] = measure_profile(args.model, s["profile_formats"], s["profile_rows"], s["profile_rounds"], s["compile"])
        print(f"kernels: the model's products at {[1, *s['profile_rows'][1:]]} rows in each kernel", flush=True)
        result["kernels"] = measure_kernels(args.model, [1, *s["profile_rows"][1:]], s["profile_rounds"])

    if "speculative" in s["sections"]:
        print(f"speculative: code completion at {s['spec_rows']} rows, on and off alternating, {s['spec_rounds']} round(s)", flush=True)
        result["speculative"] = measure_speculative(
            served, s["spec_rows"], s["spec_tokens"], s["spec_rounds"], s["compile"], s["spec_draft_sweep"]
        )

    if "sampling" in s["sections"]:
        print(f"sampling controls: their cost per token at {s['sampling_rows']} rows, {s['spec_rounds']} round(s)", flush=True)
        result["sampling"] = measure_sampling_costs(served, s["sampling_rows"], s["spec_tokens"], s["spec_rounds"], s["compile"])

    quant_rows = []
    if "ceiling" in s["sections"]:
        print("decode at 1 and 16 rows: " + ", ".join(s["decode_paths"]), flush=True)
        unfused = models.load(args.model, args.quant) if needs_unfused_copy(s["decode_paths"]) else None  # packed without fusing
        paths = decode_paths(loaded, served, unfused, s["quant_tokens"], s["path_rounds"], s["decode_paths"])
        del unfused
        result["decode_paths"] = paths
        print(f"  {paths}", flush=True)
    if "quantization" in s["sections"] or "ceiling" in s["sections"]:
        print("quantization: " + ", ".join(s["quant_modes"]), flush=True)
        del loaded, served
        quant_rows = [
            measure_quant(args.model, q, s["quant_tokens"], s["ppl_tokens"], s["b1_rounds"], s["compile"]) for q in s["quant_modes"]
        ]
        relative_to_none(quant_rows)
        result["quantization"] = [asdict(r) for r in quant_rows]

    if "ceiling" in s["sections"]:
        bw = read_bandwidth()
        rows = [
            {
                "quant": r.quant,
                "weight_bytes_per_token": r.weight_bytes_per_token,
                "decode_b1_tok_s": round(r.decode_b1_tok_s, 1),
                "bandwidth_gb_s": round(r.bandwidth_bytes_per_s / 1e9, 1),
                "ceiling_tok_s": round(r.bandwidth_bytes_per_s / r.weight_bytes_per_token, 1),
                "fraction_of_ceiling": round(r.fraction_of_ceiling, 3),
            }
            for r in quant_rows
        ]
        fastest = max(rows, key=lambda r: r["decode_b1_tok_s"])
        result["ceiling"] = {
            "bandwidth": {k: round(v / 1e9, 2) if k.endswith("per_s") else v for k, v in bw.items()},
            "modes": rows,
            "fastest_mode": fastest["quant"],
            "fastest_fraction_of_ceiling": fastest["fraction_of_ceiling"],
            "best_fraction_of_ceiling": max(r["fraction_of_ceiling"] for r in rows),
        }
        print(
            f"  read bandwidth {bw['bytes_per_s'] / 1e9:.1f} GB/s; fastest batch-1 mode {fastest['quant']}: "
            f"{fastest['fraction_of_ceiling']:.0%} of its ceiling",
            flush=True,
        )

    if "gateway" in s["sections"]:
        print(
            f"gateway overhead: {s['gateway_streams']} streams straight to an upstream and through tandem serve --upstream to it",
            flush=True,
        )
        try:
            result["gateway_overhead"] = measure_gateway_overhead(
                s["gateway_streams"], s["max_tokens"], s["repeats"], Path(args.out) / "gateway", tokenizer
            )
        except RuntimeError as exc:
            result["gateway_overhead"] = {"status": f"not run: {exc}"}
            print(f"  not run: {exc}", flush=True)

    result["bars"] = bars(result)
    result["seconds"] = round(time.perf_counter() - started, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(result)
    (out / "bench.md").write_text(text)
    (out / "bench.json").write_text(json.dumps(result, indent=2))
    print(text)
    print(f"wrote {out / 'bench.md'} and {out / 'bench.json'} in {result['seconds']} s")
    return 0


def bars(result: dict[str, Any]) -> dict[str, Any]:
    """The issue's bars, each with the measured value and whether it holds."""
    out: dict[str, Any] = {}
    if "at_16_streams" in result:
        r = result["at_16_streams"]
        out["engine_vs_sequential_at_16_ge_5x"] = {"value": r["ratio_vs_sequential"], "pass": r["ratio_vs_sequential"] >= 5}
        out["engine_vs_cb_manager_at_16_ge_1.5x"] = {"value": r["ratio_vs_cb_manager"], "pass": r["ratio_vs_cb_manager"] >= 1.5}
    by_streams = {r["streams"]: r for r in result.get("throughput", [])}
    for n in (16, 32):
        for key in ("ratio_vs_static_batch", "ratio_vs_cb_manager"):
            if n in by_streams:
                ratio = by_streams[n][key]
                out[f"engine_{key.removeprefix('ratio_')}_at_{n}_ge_2x"] = {"value": ratio, "pass": ratio >= 2}
    if 16 in by_streams:
        rate = by_streams[16]["peers"]["tandem_engine"]["tok_s"]
        out["engine_at_16_ge_250_tok_s"] = {"value": rate, "pass": rate >= 250}
    if 1 in by_streams:
        rate = by_streams[1]["peers"]["tandem_engine"]["tok_s"]
        llama = by_streams[1]["peers"].get("llama_cpp")
        out["engine_at_1_ge_30_tok_s_or_0.75x_llama_cpp"] = {
            "value": rate,
            "pass": rate >= 30 or (llama is not None and rate >= 0.75 * llama["tok_s"]),
        }
    if "long_prompt" in result.get("mixed", {}):
        lost = result["mixed"]["long_prompt"]["chunked"]["stall_steps"]
        out["long_prompt_during_8_chats_stalls_le_2_steps"] = {"value": round(lost, 2), "pass": lost <= 2}
    if "mixed" in result:
        out["completion_p95_ttft_under_8_chats_le_2x_idle"] = {
            "value": result["mixed"]["p95_ratio"],
            "pass": result["mixed"]["p95_ratio"] <= 2,
        }
    for at16 in (r for r in result.get("gateway_overhead", {}).get("rows", []) if r.get("streams") == 16 and "batched" in r["upstream"]):
        which = at16["upstream"].split(" (")[0]
        out[f"gateway_overhead_at_16_le_5pct_tok_s [{which}]"] = {
            "value": at16["tok_s_overhead_pct"],
            "pass": at16["tok_s_overhead_pct"] <= 5,
        }
        out[f"gateway_own_ttft_added_at_16_le_20ms [{which}]"] = {
            "value": at16["gateway_added_ms"],
            "pass": at16["gateway_added_ms"] <= 20,
            "note": f"in the gateway {at16['in_gateway_ms']:.0f} ms a request, of which the output guard's whole-word hold "
            f"{at16['word_hold_ms']:.0f} ms; TTFT p50 {at16['ttft_p50_added_ms']:+.0f} ms against the direct runs",
        }
    if "ceiling" in result:
        f = result["ceiling"]["fastest_fraction_of_ceiling"]
        out["batch1_decode_ge_60pct_of_ceiling"] = {"value": f, "mode": result["ceiling"]["fastest_mode"], "pass": f >= 0.6}
    return out
