"""Chunked prefill: a long prompt prefilled a chunk at a time, each in a pass of the running
batch's decode steps, instead of in one forward pass that stops every running stream until it
ends.

Why: a 4,000-token prompt takes seconds to prefill on a CPU; in one pass, every chat stream in
the batch waits that long for its next token. In chunks that add at most CHUNK_STEPS of a
step's time to the step they ride (`ChunkBudget`), the streams keep decoding, and the long
prompt's own first token comes later than it would prefilled whole.

The chunk's keys and values are written in place into buffers allocated once for the whole
prompt, so a chunk copies nothing already written. While rows decode through the engine's own
step, a chunk goes into that step's pass (`fast_decode.forward_runs`: its positions in the
step's products, which then read each weight once for both, its attention over its own
buffers); with nothing decoding, it runs alone (`fast_decode.forward_chunk`), and a model the
engine's step does not run goes through transformers' forward.
"""

from __future__ import annotations

import time
import weakref

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from .fast_decode import Chunk, forward_chunk
from .kv import spare, spare_rows
from .packed import as_decode_steps
from .prefill import KV, Prefilled, device_of, kv_buffers

MIN_CHUNK = 8  # tokens: below this a chunk pays more in fixed cost (attention over its whole prefix) than it computes
MAX_CHUNK = 1024
FIRST_CHUNK = 32  # before anything is measured
CHUNK_STEPS = 1.0  # a chunk's time, in decode steps: a running stream waits at most this much longer for a token


class ChunkBudget:
    """How many prompt tokens one chunk may take: CHUNK_STEPS decode steps' time, from a running
    average of the step (the batch as it is now) and the prompt's last chunk's time per token
    (in a step's pass, what that step took beyond a plain one)."""

    def __init__(self) -> None:
        self.step_seconds: float | None = None
        # per prompt, its latest chunk alone: a chunk's cost per token grows with the prefix it
        # attends to, so a prompt's last one predicts its next better than an average of
        # earlier, cheaper ones, and another prompt's (a short one beside a long one) not at all
        self._token_seconds: weakref.WeakKeyDictionary[object, float] = weakref.WeakKeyDictionary()

    def stepped(self, seconds: float) -> None:
        self.step_seconds = seconds if self.step_seconds is None else 0.8 * self.step_seconds + 0.2 * seconds

    def prefilled(self, tokens: int, seconds: float, prompt: object) -> None:
        self._token_seconds[prompt] = seconds / max(tokens, 1)

    def tokens(self, decoding: bool, prompt: object) -> int:
        """The next chunk's size for `prompt`; with nothing decoding, the largest (no stream
        waits on it)."""
        if not decoding:
            return MAX_CHUNK
        token_seconds = self._token_seconds.get(prompt)
        if self.step_seconds is None or token_seconds is None:
            return FIRST_CHUNK
        return max(MIN_CHUNK, min(MAX_CHUNK, int(CHUNK_STEPS * self.step_seconds / token_seconds)))


class ChunkedPrefill:
    """One prompt's prefill in progress: `advance` runs its next chunk and, after the last,
    returns the prompt's `Prefilled` (as prefill.py's functions do). With `fast` (a model the
    engine's own step runs), each chunk goes through `fast_decode.forward_chunk`; otherwise
    through transformers' forward, on a cache whose layers write in place."""

    def __init__(self, model: torch.nn.Module, prompt: list[int], prefix_kv: KV | None = None, reused: int = 0, fast: bool = False) -> None:
        self.model, self.prompt, self.done, self.fast = model, prompt, reused, fast
        self.ready: Prefilled | None = None  # the whole prompt's, once its last chunk is in
        # per layer: every column the prompt needs, at once, in a buffer with the room a running
        # batch's cache keeps (spare columns and row slots), so that the batch holds it as it is
        prefix = (prefix_kv, reused) if prefix_kv is not None else None
        self._buffers = kv_buffers(model, 1 + spare_rows(1), len(prompt) + spare(len(prompt), device_of(model)), prefix)
        self.keys = [k[:1, :, : len(prompt)] for k in self._buffers[0]]
        self.values = [v[:1, :, : len(prompt)] for v in self._buffers[1]]
        self.cache = DynamicCache()
        self.cache.layers = [_InPlace(k, v, reused) for k, v in zip(self.keys, self.values)]

    @property
    def left(self) -> int:
        return len(self.prompt) - self.done

    @torch.inference_mode()
    def advance(self, tokens: int, budget: ChunkBudget | None = None) -> Prefilled | None:
        """Prefill the next `tokens` of the prompt (at least one) in a pass of its own; the whole
        prompt's Prefilled once its last token is in."""
        return self.run(self.next_chunk(tokens), budget)

    @torch.inference_mode()
    def run(self, chunk: Chunk, budget: ChunkBudget | None = None) -> Prefilled | None:
        """`chunk` (from `next_chunk`) in a pass of its own, then `ran`."""
        started = time.perf_counter()
        with as_decode_steps():  # (a chunk is a few rows; bf16's wide blocks would pad it to 128)
            logits = self._forward(chunk)
        return self.ran(chunk, logits, time.perf_counter() - started, budget)

    def next_chunk(self, tokens: int) -> Chunk:
        """The next `tokens` of the prompt (at least one), to run alone (`advance`) or beside a
        decode step (fast_decode.forward_runs), and then to hand to `ran`."""
        if self.left <= 0:
            raise RuntimeError("this prompt is prefilled already")
        start, end = self.done, min(len(self.prompt), self.done + max(tokens, 1))
        ids = torch.tensor([self.prompt[start:end]], dtype=torch.long, device=device_of(self.model))
        return Chunk(ids, start, self.keys, self.values)

    def ran(self, chunk: Chunk, logits: torch.Tensor, seconds: float, budget: ChunkBudget | None = None) -> Prefilled | None:
        """Count `chunk` in, with its last position's logits and what it cost; the whole prompt's
        Prefilled once its last token is in."""
        self.done = chunk.end
        if budget is not None:
            budget.prefilled(chunk.end - chunk.start, seconds, self)
        if self.done < len(self.prompt):
            return None
        device = logits.device
        kv = list(zip(self.keys, self.values))
        mask = torch.ones((1, len(self.prompt)), dtype=torch.long, device=device)
        self.ready = Prefilled(kv, mask, torch.tensor([len(self.prompt)], device=device), logits, buffers=list(zip(*self._buffers)))
        return self.ready

    def _forward(self, chunk: Chunk) -> torch.Tensor:
        """The chunk on the columns before it; its last position's logits."""
        if self.fast:
            return forward_chunk(self.model, chunk)
        return self.model(  # type: ignore[no-any-return]
            input_ids=chunk.tokens,
            attention_mask=torch.ones((1, chunk.end), dtype=torch.long, device=chunk.tokens.device),
            position_ids=torch.arange(chunk.start, chunk.end, dtype=torch.long, device=chunk.tokens.device)[None, :],
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=1,
        ).logits[:, -1, :]


class _InPlace(DynamicLayer):
    """A layer of transformers' cache over a buffer that already holds every column the prompt
    needs: `update` writes the chunk's columns in place and returns the columns so far."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, length: int) -> None:
        super().__init__()
        self.buffers, self.length = (keys, values), length
        self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True
        self.keys, self.values = keys[:, :, :length], values[:, :, :length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object):  # type: ignore[override]
        end = self.length + key_states.shape[-2]
        self.buffers[0][:, :, self.length : end] = key_states
        self.buffers[1][:, :, self.length : end] = value_states
        self.length = end
        self.keys, self.values = self.buffers[0][:, :, :end], self.buffers[1][:, :, :end]
        return self.keys, self.values
