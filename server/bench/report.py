"""bench.md: the run's figures as Markdown tables, peers side by side."""

from __future__ import annotations

from typing import Any

from .measure import RATIO_KEYS

LABELS = {
    "tandem_engine": "Tandem engine",
    "sequential_generate": "sequential `generate`",
    "static_batch_generate": "static-batched `generate`",
    "cb_manager": "transformers CB manager",
    "llama_cpp": "llama.cpp (llama-cpp-python)",
}


def _f(value: Any, digits: int = 1) -> str:
    return "–" if value is None or value != value else f"{value:.{digits}f}"


def markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [
        f"# tandem bench{' --quick' if r['quick'] else ''}",
        "",
        f"{r['model']['name']} ({r['model']['quant']}, {r['model']['footprint_mib']} MiB; the peers in "
        f"{r.get('peers_quant', r['model']['quant'])}, as transformers runs it), {m['cpus']} CPUs, "
        f"torch {m['torch']} ({m['torch_threads']} threads), transformers {m['transformers']}; {r['settings']['max_tokens']} new tokens "
        f"per stream, greedy, median of {r['settings']['repeats']} run(s) per cell. llama.cpp: {r['llama_cpp']['status']}"
        + (f" ({r['llama_cpp']['version']}, {r['llama_cpp']['gguf']})" if r["llama_cpp"].get("version") else "")
        + ".",
        "",
    ]
    if "throughput" in r:
        lines += [
            "## Throughput: concurrent chat streams",
            "",
            "Time to first token counts from the moment all streams arrive; memory is the peak resident set above the loaded "
            "model during the run (llama.cpp holds its own copy of the weights, mapped from the GGUF file).",
            "",
            "| streams | peer | tok/s | TTFT p50 ms | TTFT p95 ms | ITL p50 ms | peak mem MiB | engine ÷ peer |",
            "|---:|---|---:|---:|---:|---:|---:|---:|",
        ]
        for row in r["throughput"]:
            for name, v in row["peers"].items():
                ratio = "" if name == "tandem_engine" else f"{row[RATIO_KEYS[name]]:.2f}x"
                lines.append(
                    f"| {row['streams']} | {LABELS[name]} | {_f(v['tok_s'])} | {_f(v['ttft_p50_ms'], 0)} | {_f(v['ttft_p95_ms'], 0)} | "
                    f"{_f(v['itl_p50_ms'])} | {_f(v['peak_mem_mib'], 0)} | {ratio} |"
                )
        lines.append("")
    if "mixed" in r:
        idle, busy = r["mixed"]["idle"], r["mixed"]["under_8_chats"]
        lines += [
            "## Mixed load: completions while the support chat runs",
            "",
            "A completion request every 0.8 s at interactive priority (a developer pausing while typing textwrap.py), "
            "with and without 8 chat streams decoding; each condition on a fresh engine (cold prefix cache), median of the runs. "
            "The first request of a session prefills the whole window and is shown apart; the percentiles are over the rest. "
            f"Decode step: {r.get('mixed_decode', 'eager')}.",
            "",
            "| chat streams | completions | TTFT p50 ms | TTFT p95 ms | first request ms |",
            "|---:|---:|---:|---:|---:|",
            f"| 0 | {idle['completions']} | {_f(idle['ttft_p50_ms'], 0)} | {_f(idle['ttft_p95_ms'], 0)} | {_f(idle['first_ttft_ms'], 0)} |",
            f"| 8 | {busy['completions']} | {_f(busy['ttft_p50_ms'], 0)} | {_f(busy['ttft_p95_ms'], 0)} | {_f(busy['first_ttft_ms'], 0)} |",
            "",
            f"p95 under load ÷ idle: **{r['mixed']['p95_ratio']:.2f}x**",
            "",
        ]
    if "speculative" in r:
        sp = r["speculative"]
        lines += [
            "## Speculative decoding: prompt lookup on code completion",
            "",
            f"{sp['prompts']}; each request {sp['max_tokens']} new tokens, greedy, interactive priority, all rows arriving at once; "
            f"up to {sp['draft_tokens']} drafts per row and step; speculation on and off alternating over {sp['rounds']} round(s), medians "
            f"(decode step: {sp['decode_step']}). Acceptance = drafts accepted ÷ drafted; tokens per step = a row's tokens per decode step it was in (1 without speculation).",
            "",
            "| rows | on tok/s | off tok/s | on ÷ off | latency p50 ms on | off | acceptance | tokens/step on |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in sp["rows"]:
            on, off = row["on"], row["off"]
            lines.append(
                f"| {row['rows']} | {_f(on['tok_s'])} | {_f(off['tok_s'])} | {row['speedup']:.2f}x | {_f(on['latency_p50_ms'], 0)} | "
                f"{_f(off['latency_p50_ms'], 0)} | {_f(on['acceptance'], 3)} | {_f(on['tokens_per_step'], 2)} |"
            )
        lines.append("")
        if sp["draft_sweep"]:
            lines += [
                "Draft length at one row (speculation on):",
                "",
                "| drafts per step | tok/s | acceptance | tokens/step |",
                "|---:|---:|---:|---:|",
            ]
            lines += [
                f"| {d['draft_tokens']} | {_f(d['tok_s'])} | {_f(d['acceptance'], 3)} | {_f(d['tokens_per_step'], 2)} |"
                for d in sp["draft_sweep"]
            ]
            lines.append("")
        lines += [
            f"Speculation was not slower at any measured size up to **{sp['measured_max_rows']}** rows; the engine speculates up to "
            f"`SPEC_MAX_ROWS` = **{sp['spec_max_rows']}** rows (`server/engine/speculative.py`).",
            "",
        ]
    if "sampling" in r:
        sm = r["sampling"]
        lines += [
            "## Sampling controls: cost per token",
            "",
            f"Every row greedy, {sm['max_tokens']} new tokens, all at once; penalties = presence 0.5, frequency 0.5, repetition 1.1; "
            f"logit bias = 64 tokens; logprobs = the 5 likeliest alternatives; json_schema = a list of 40 or more records, "
            f"each token masked by llguidance's grammar; cases in rotating order over {sm['rounds']} round(s), "
            f"medians (decode step: {sm['decode_step']}). Cost = plain tok/s ÷ the case's tok/s; for one controlled row among plain "
            "ones, the plain rows' cost is what the plain path pays for such a neighbour.",
            "",
            "| rows | case | tok/s | cost per token vs plain | plain rows' cost |",
            "|---:|---|---:|---:|---:|",
        ]
        lines += [
            f"| {row['rows']} | {row['case']} | {_f(row['tok_s'])} | {row['cost_vs_plain']:.2f}x | "
            f"{_f(row.get('plain_rows_vs_plain'), 2)} |"
            for row in sm["rows"]
        ]
        lines.append("")
    if "long_prompt" in r.get("mixed", {}):
        lp = r["mixed"]["long_prompt"]
        lines += [
            f"A {lp['chunked']['prompt_tokens']}-token prompt arriving while 8 chat streams decode, prefilled whole or in chunks "
            "between decode steps (median run): the longest wait of any chat stream for its next token until the long prompt's "
            "first token, and the steps that wait lost against the streams' own median step before it.",
            "",
            "| prefill | chat step ms | longest gap ms | steps lost | long prompt's TTFT ms | chat step ms beside it after |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for key in ("whole", "chunked"):
            m = lp[key]
            lines.append(
                f"| {key} | {m['step_ms']:.0f} | {m['longest_gap_ms']:.0f} | {m['stall_steps']:.1f} | {m['long_ttft_ms']:.0f} | "
                f"{m['step_after_ms']:.0f} |"
            )
        lines.append("")
    if "profile" in r:
        lines += [
            "## Profile: where a batched decode step's time goes",
            "",
            "Each part timed alone on a real batch's shapes (the chat prompts, prefilled and decoded 24 steps, left-padded as "
            "in the engine), median ms per step. *Attention* runs over the padded cache as the step does; *unpadded* over each "
            "row's own columns only. *Rest* is the eager step less products, attention, rotary and norms: Python, dispatch and "
            "the small ops between them. Sampling follows the step (greedy rows; rows at temperature 0.8, top-p 0.95).",
            "",
            "| weights | rows | columns (longest row) | products | attention | attention, unpadded | rotary | norms | rest "
            "| eager step | compiled step | sampling, greedy | sampling, top-p |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for p in r["profile"]:
            lines.append(
                f"| {p['weights']} | {p['rows']} | {p['padded_columns']:.0f} ({p['longest_row']:.0f}) | {_f(p['products'])} | "
                f"{_f(p['attention'])} | {_f(p['attention_unpadded'])} | {_f(p['rotary'])} | {_f(p['norms'])} | {_f(p['rest'])} | "
                f"{_f(p['step_eager'])} | {_f(p['step_compiled'])} | {_f(p['sampling_greedy'])} | {_f(p['sampling_top_p'])} |"
            )
        lines.append("")
    if "kernels" in r:
        counts = [k for k in next((k for k in r["kernels"] if "error" not in k), {}) if k.startswith("rows_")]
        lines += [
            "Every weight matrix of the model (unfused) multiplied by a step's rows in each kernel, ms per step (median); "
            "the engine's modes are marked. bitsandbytes' kernels are measured end to end in the quantization section.",
            "",
            "| kernel | " + " | ".join(f"{c[5:]} row(s)" for c in counts) + " |",
            "|---|" + "---:|" * len(counts),
        ]
        for k in r["kernels"]:
            cells = [k.get("error", "–")] + [""] * (len(counts) - 1) if "error" in k else [_f(k[c]) for c in counts]
            lines.append(f"| {k['kernel']} | " + " | ".join(cells) + " |")
        lines.append("")
    if "quantization" in r:
        texts = list(r["quantization"][0]["perplexity"])
        lines += [
            "## Quantization",
            "",
            "| mode | weights MiB | decode step | decode tok/s, batch 1 | decode tok/s, batch 16 | "
            + " | ".join(f"perplexity: {t}" for t in texts)
            + " |",
            "|---|---:|---|---:|---:|" + "---:|" * len(texts),
        ]
        for q in r["quantization"]:
            ppl = " | ".join(f"{q['perplexity'][t]:.2f} ({q['perplexity_vs_none'].get(t, float('nan')):.3f}x)" for t in texts)
            lines.append(
                f"| {q['quant']} | {q['footprint_mib']:.0f} | {q.get('decode_step', '')} | {q['decode_b1_tok_s']:.1f} | {q['decode_b16_tok_s']:.1f} | {ppl} |"
            )
        lines.append("")
    if "gateway_overhead" in r:
        g = r["gateway_overhead"]
        lines += ["## The gateway in front of an upstream", ""]
        if "rows" not in g:
            lines += [f"Not run: {g['status']}", ""]
        else:
            lines += [
                f"The same chat streams (up to {g['max_tokens']} tokens each, greedy) sent straight to an upstream and through "
                f"`tandem serve --upstream` (guard, audit, routing) to it, alternating which goes first; median of {g['repeats']} run(s). "
                f"{g.get('placement', '')} TTFT is to the first visible text; *fewer tok/s* is the median over repetitions of each "
                "pair of runs side by side in time. An upstream's own TTFT moves by a hundred milliseconds and more from run to run "
                "here, so the gateway's share is also measured inside each run: *in the gateway* is the client's TTFT less the "
                "upstream's first text as the gateway timed it, for the same requests (mean per run, median of runs). The output "
                "guard sends a word only once it is whole (a secret can be split across tokens): *whole-word hold* is how long the "
                "direct streams themselves took from their first text to their first whole word, and *gateway's own* is the rest.",
                "",
                "| upstream | streams | direct tok/s | gateway tok/s | fewer tok/s | direct TTFT p50 ms | gateway TTFT p50 ms "
                "| in the gateway ms | of which whole-word hold ms | gateway's own ms |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for row in g["rows"]:
                if "status" in row:
                    lines.append(f"| {row['upstream']} | | {row['status']} | | | | | | | |")
                    continue
                d, w = row["direct"], row["gateway"]
                lines.append(
                    f"| {row['upstream']} | {row['streams']} | {d['tok_s']:.1f} | {w['tok_s']:.1f} | {row['tok_s_overhead_pct']:+.1f}% | "
                    f"{d['ttft_p50_ms']:.0f} | {w['ttft_p50_ms']:.0f} | {row['in_gateway_ms']:.0f} | {row['word_hold_ms']:.0f} | "
                    f"{row['gateway_added_ms']:+.0f} |"
                )
            lines.append("")
    if "ceiling" in r:
        c = r["ceiling"]
        bw = c["bandwidth"]
        lines += [
            "## The ceiling: batch-1 decode against memory bandwidth",
            "",
            f"Read bandwidth {bw['bytes_per_s']:.1f} GB/s (best of torch sum {bw['torch_sum_bytes_per_s']:.1f}, NumPy sum "
            f"{bw['numpy_sum_bytes_per_s']:.1f}; {bw['buffer_mib']} MiB buffer, {bw['threads']} threads). Ceiling = bandwidth ÷ weight bytes "
            "read per token. Each batch-1 run is paired with a bandwidth reading taken just before it (neighbours on a shared host "
            "move both), and the fraction is the median over the pairs.",
            "",
            "| mode | weight MB per token | bandwidth GB/s | ceiling tok/s | decode tok/s | fraction of ceiling |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for row in c["modes"]:
            lines.append(
                f"| {row['quant']} | {row['weight_bytes_per_token'] / 1e6:.0f} | {row['bandwidth_gb_s']:.1f} | {row['ceiling_tok_s']:.1f} | "
                f"{row['decode_b1_tok_s']:.1f} | {row['fraction_of_ceiling']:.0%} |"
            )
        lines.append("")
        if "decode_paths" in r:
            p = r["decode_paths"]
            lines += [
                f"Before and after the engine's decode step (`server/engine/fast_decode.py`) and its packed weights "
                f"(`server/engine/packed.py`), {r['model']['quant']}; medians of paired rounds:",
                "",
                "| decode path | batch-1 tok/s | fraction of ceiling | batch-16 tok/s |",
                "|---|---:|---:|---:|",
            ]
            for key, label in (
                ("transformers_forward", "transformers' forward"),
                ("fast_step", "engine's step"),
                ("fast_step_packed", "engine's step, packed weights"),
                ("fast_step_packed_fused", "engine's step, packed weights, q/k/v and gate/up fused"),
                ("fast_step_packed_fused_compiled", "engine's step, packed and fused, compiled (`tandem serve`)"),
            ):
                if key in p:
                    lines.append(
                        f"| {label} | {p[key]['decode_b1_tok_s']:.1f} | {p[key]['fraction_of_ceiling']:.0%} | {p[key]['decode_b16_tok_s']:.1f} |"
                    )
            lines.append("")
    if r.get("bars"):
        lines += ["## Bars", "", "| bar | value | holds |", "|---|---:|---|"]
        for name, b in r["bars"].items():
            lines.append(f"| {name} | {b['value']} | {'yes' if b['pass'] else '**no**'} |")
        lines.append("")
    return "\n".join(lines)
