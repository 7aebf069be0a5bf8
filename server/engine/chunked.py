"""Chunked prefill: a long prompt prefilled a chunk at a time, between the running batch's
decode steps, instead of in one forward pass that stops every running stream until it ends.

Why: a 4,000-token prompt takes seconds to prefill on a CPU; in one pass, every chat stream in
the batch waits that long for its next token. In chunks sized to take a step and a half
each (`ChunkBudget`, CHUNK_STEPS), the streams keep decoding with at most one chunk between two of their
tokens, and the long prompt's own first token comes later than it would prefilled whole.

The chunk's keys and values are written in place into buffers allocated once for the whole
prompt, so a chunk copies nothing already written. The engine's own step runs each chunk
(`fast_decode.forward_chunk`: one attention call per layer over the prefix, its grouped-query
heads read as they are); a model it does not run goes through transformers' forward.
"""

from __future__ import annotations

import time

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from .fast_decode import forward_chunk
from .packed import as_decode_steps
from .prefill import KV, Prefilled, device_of, kv_buffers

MIN_CHUNK = 8  # tokens: below this a chunk pays more in fixed cost (a forward over every layer) than it computes
MAX_CHUNK = 1024
FIRST_CHUNK = 32  # before anything is measured
CHUNK_STEPS = 1.5  # a chunk's time, in decode steps: a running stream waits at most this much longer for a token


class ChunkBudget:
    """How many prompt tokens one chunk may take: CHUNK_STEPS decode steps' time, from running
    averages of both (a step of the batch as it is now, a chunk's time per token)."""

    def __init__(self) -> None:
        self.step_seconds: float | None = None
        self.token_seconds: float | None = None

    def stepped(self, seconds: float) -> None:
        self.step_seconds = seconds if self.step_seconds is None else 0.8 * self.step_seconds + 0.2 * seconds

    def prefilled(self, tokens: int, seconds: float) -> None:
        # the latest chunk alone: a chunk's cost per token grows with the prefix it attends to, so
        # the last one predicts the next better than an average of earlier, cheaper ones
        self.token_seconds = seconds / max(tokens, 1)

    def tokens(self, decoding: bool) -> int:
        """The next chunk's size; with nothing decoding, the largest (no stream waits on it)."""
        if not decoding:
            return MAX_CHUNK
        if self.step_seconds is None or self.token_seconds is None:
            return FIRST_CHUNK
        return max(MIN_CHUNK, min(MAX_CHUNK, int(CHUNK_STEPS * self.step_seconds / self.token_seconds)))


class ChunkedPrefill:
    """One prompt's prefill in progress: `advance` runs its next chunk and, after the last,
    returns the prompt's `Prefilled` (as prefill.py's functions do). With `fast` (a model the
    engine's own step runs), each chunk goes through `fast_decode.forward_chunk`; otherwise
    through transformers' forward, on a cache whose layers write in place."""

    def __init__(self, model: torch.nn.Module, prompt: list[int], prefix_kv: KV | None = None, reused: int = 0, fast: bool = False) -> None:
        self.model, self.prompt, self.done, self.fast = model, prompt, reused, fast
        self.ready: Prefilled | None = None  # the whole prompt's, once its last chunk is in
        self.keys, self.values = kv_buffers(model, 1, len(prompt))  # per layer: every column the prompt needs, at once
        if prefix_kv is not None:
            for (k, v), (pk, pv) in zip(zip(self.keys, self.values), prefix_kv):
                k[:, :, :reused], v[:, :, :reused] = pk[:, :, :reused], pv[:, :, :reused]
        self.cache = DynamicCache()
        self.cache.layers = [_InPlace(k, v, reused) for k, v in zip(self.keys, self.values)]

    @property
    def left(self) -> int:
        return len(self.prompt) - self.done

    @torch.inference_mode()
    def advance(self, tokens: int, budget: ChunkBudget | None = None) -> Prefilled | None:
        """Prefill the next `tokens` of the prompt (at least one); the whole prompt's Prefilled
        once its last token is in."""
        if self.left <= 0:
            raise RuntimeError("this prompt is prefilled already")
        started = time.perf_counter()
        device = device_of(self.model)
        start, end = self.done, min(len(self.prompt), self.done + max(tokens, 1))
        ids = torch.tensor([self.prompt[start:end]], dtype=torch.long, device=device)
        with as_decode_steps():  # (a chunk is a few rows; bf16's wide blocks would pad it to 128)
            logits = self._forward(ids, start, end)
        self.done = end
        if budget is not None:
            budget.prefilled(end - start, time.perf_counter() - started)
        if self.done < len(self.prompt):
            return None
        kv = list(zip(self.keys, self.values))
        mask = torch.ones((1, len(self.prompt)), dtype=torch.long, device=device)
        self.ready = Prefilled(kv, mask, torch.tensor([len(self.prompt)], device=device), logits)
        return self.ready

    def _forward(self, ids: torch.Tensor, start: int, end: int) -> torch.Tensor:
        """The chunk ids = prompt[start:end] on the columns before it; its last position's logits."""
        if self.fast:
            return forward_chunk(self.model, ids, self.keys, self.values, start)
        return self.model(  # type: ignore[no-any-return]
            input_ids=ids,
            attention_mask=torch.ones((1, end), dtype=torch.long, device=ids.device),
            position_ids=torch.arange(start, end, dtype=torch.long, device=ids.device)[None, :],
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
