"""`tandem bench`: Tandem's engine side by side with what a user would otherwise run, on the
same model, the same prompts and the same machine, in one run.

1. throughput at several concurrent chat streams against sequential `model.generate`, static
   batched `model.generate`, transformers' continuous-batching manager and (when installed)
   llama.cpp through llama-cpp-python on the same GGUF file;
2. mixed load: completion time to first token while chat streams run, against idle;
3. quantization: memory, decode speed and perplexity for each mode;
4. the ceiling: batch-1 decode against memory bandwidth / weight bytes per token;
5. speculative: prompt-lookup speculation on and off on code completion, by batch size;
6. sampling: what penalties, a logit bias and logprobs cost per token against plain decoding;
7. profile: where a batched decode step's time goes (products, attention, rotary, norms, the
   rest, sampling) at 4, 16 and 32 rows, eager and compiled, per weight format.

Machines here are noisy: peers run interleaved, in rotating order, and cells report medians.
"""

from __future__ import annotations

import argparse

__all__ = ["run_bench", "add_arguments"]


def run_bench(args: argparse.Namespace) -> int:
    from .run import run_bench as run  # torch and transformers load here, not when the CLI starts

    return run(args)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="default: the embedded default model")
    p.add_argument("--quant", default="none", help="the mode for the throughput and mixed-load sections")
    p.add_argument(
        "--peers-quant",
        default=None,
        help="the mode the peers run in (default: --quant's, as transformers runs it: bf16 is the model in bf16)",
    )
    p.add_argument("--quick", action="store_true", help="fewer tokens, runs and modes: under two minutes on 2 cores")
    p.add_argument("--streams", default=None, help="comma-separated concurrency levels (default 1,4,16,32)")
    p.add_argument("--max-tokens", type=int, default=None, help="new tokens per stream (default 64; quick 16)")
    p.add_argument("--repeats", type=int, default=None, help="runs per cell, median reported (default 3; quick 1)")
    p.add_argument(
        "--sections",
        default="throughput,mixed,profile,speculative,sampling,quantization,ceiling,gateway",
        help="which sections to run (gateway: the gateway's cost in front of a llama.cpp server)",
    )
    p.add_argument("--no-llama-cpp", action="store_true", help="leave llama.cpp out even when installed")
    p.add_argument("--out", default="bench-out", help="directory for bench.md and bench.json")
