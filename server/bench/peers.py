"""The ways a user could run the same model on the same machine, each timed the same way.

Every function takes token-id prompts that all arrive at t0 and returns a `Run`. Greedy decoding
and the same token limit everywhere; each stops at the model's end-of-sequence tokens.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..engine import Engine, GenerationRequest
from .measure import MemorySampler, Run, TokenClock


def engine_streams(engine: Engine, prompts: list[list[int]], max_tokens: int) -> Run:
    """Tandem's engine: every prompt as its own concurrent stream."""

    async def main(clock: TokenClock) -> None:
        async def one(i: int, ids: list[int]) -> None:
            seen = 0
            async for delta in engine.stream(GenerationRequest(prompt=ids, max_tokens=max_tokens)):
                clock.tick(i, delta.tokens - seen)
                seen = delta.tokens

        await asyncio.gather(*(one(i, ids) for i, ids in enumerate(prompts)))

    with MemorySampler() as memory:
        clock = TokenClock(len(prompts))
        asyncio.run(main(clock))
    return clock.run(memory=memory.peak_delta)


class _StepStreamer:
    """A transformers streamer that timestamps each generation step for each row until its end."""

    def __init__(self, clock: TokenClock, eos: set[int], rows: list[int]) -> None:
        self.clock, self.eos, self.rows = clock, eos, rows  # batch row -> the clock's request index
        self.done = [False] * len(rows)
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # the first call hands over the prompt
            self.prompt_seen = True
            return
        now = time.perf_counter()
        for row, token in enumerate(value.reshape(-1).tolist()):
            if not self.done[row]:
                self.clock.tick(self.rows[row], at=now)
                self.done[row] = token in self.eos

    def end(self) -> None:
        pass


def sequential_generate(model: Any, prompts: list[list[int]], max_tokens: int, eos: set[int]) -> Run:
    """`model.generate` on one prompt after another: what a simple server does."""
    clock = TokenClock(len(prompts))
    with MemorySampler() as memory, torch.inference_mode():
        for i, ids in enumerate(prompts):
            model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
                max_new_tokens=max_tokens,
                do_sample=False,
                pad_token_id=min(eos),
                streamer=_StepStreamer(clock, eos, [i]),
            )
    return clock.run(memory=memory.peak_delta)


def static_batch_generate(model: Any, prompts: list[list[int]], max_tokens: int, eos: set[int], pad_id: int) -> Run:
    """One `model.generate` call on the whole left-padded batch: fast steps, but everyone waits
    for the longest answer and nobody can join once it has started."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    clock = TokenClock(len(prompts))
    with MemorySampler() as memory, torch.inference_mode():
        model.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=max_tokens,
            do_sample=False,
            pad_token_id=pad_id,
            streamer=_StepStreamer(clock, eos, list(range(len(prompts)))),
        )
    return clock.run(memory=memory.peak_delta)


def continuous_batching_manager(model: Any, prompts: list[list[int]], max_tokens: int, eos: set[int]) -> Run:
    """transformers' own continuous batching (`init_continuous_batching`, paged attention)."""
    from transformers import ContinuousBatchingConfig, GenerationConfig
    from transformers.generation.continuous_batching.utils import WorkloadHints

    config = GenerationConfig(max_new_tokens=max_tokens, do_sample=False, eos_token_id=sorted(eos), pad_token_id=min(eos))
    attention = model.config._attn_implementation
    # Its paged cache sized for this workload: left to itself it claims most of the machine's RAM
    # (13 GB here), which takes seconds to allocate and would be charged to its first tokens.
    longest = max(len(p) for p in prompts) + max_tokens
    cb = ContinuousBatchingConfig(num_blocks=len(prompts) * -(-longest // 256) + 2, max_batch_tokens=4096)
    hints = WorkloadHints(max_prompt_length=longest - max_tokens, max_generated_length=max_tokens, num_requests=len(prompts))
    manager = model.init_continuous_batching(generation_config=config, continuous_batching_config=cb, workload_hints=hints)
    manager.start()
    try:
        with MemorySampler() as memory:
            clock = TokenClock(len(prompts))
            ids = manager.add_requests(prompts, max_new_tokens=max_tokens, record_timestamps=True)
            row = {rid: i for i, rid in enumerate(ids)}
            pending = set(ids)
            while pending:
                result = manager.get_result(timeout=60)
                if result is None:
                    raise RuntimeError("transformers' continuous batching manager stopped answering")
                if result.is_finished() and result.request_id in pending:
                    pending.discard(result.request_id)
                    for at in result.timestamps or []:
                        clock.tick(row[result.request_id], at=at)
        return clock.run(memory=memory.peak_delta)
    finally:
        manager.stop(block=True, timeout=10)
        model.destroy_cached_continuous_batching_manager()
        if model.config._attn_implementation != attention:
            model.set_attn_implementation(attention)


_PROBE = """
import sys
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_ctx=256, n_threads=1, verbose=False)
llm.create_completion("Hello there, how are you?", max_tokens=2, temperature=0.0)
"""


def llama_cpp_problem(gguf: Path) -> str | None:
    """Why the llama.cpp peer cannot run here, or None when it can. The probe runs in a child
    process: a build for instructions this CPU lacks dies of SIGILL, which must not take the
    benchmark down with it."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return "not installed (pip install llama-cpp-python; `make bench` builds it)"
    probe = subprocess.run([sys.executable, "-c", _PROBE, str(gguf)], capture_output=True, text=True, timeout=300)
    if probe.returncode < 0:
        name = signal.Signals(-probe.returncode).name
        return f"installed, but it died of {name} on a short prompt (built for instructions this machine cannot run; `make bench` builds it without them)"
    if probe.returncode != 0:
        return f"installed, but it failed on a short prompt: {probe.stderr.strip().splitlines()[-1:]}"
    return None


class LlamaCpp:
    """llama.cpp through llama-cpp-python, on the GGUF file itself (its own quantized weights).
    Its `Llama` object decodes one sequence at a time, so concurrent streams are served in turn."""

    def __init__(self, gguf: Path, threads: int) -> None:
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(gguf), n_ctx=2048, n_threads=threads, n_threads_batch=threads, n_batch=512, verbose=False)
        self.version = __import__("llama_cpp").__version__

    def run(self, prompts: list[list[int]], max_tokens: int) -> Run:
        clock = TokenClock(len(prompts))
        with MemorySampler() as memory:
            for i, ids in enumerate(prompts):
                self.llm.reset()
                for chunk in self.llm.create_completion(ids, max_tokens=max_tokens, temperature=0.0, top_k=1, stream=True):
                    if chunk["choices"][0]["finish_reason"] is None:  # its last chunk only says why it ended: no token
                        clock.tick(i)
        return clock.run(memory=memory.peak_delta)
