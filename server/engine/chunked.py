"""Chunked prefill: a long prompt prefilled a chunk at a time, between the running batch's
decode steps, instead of in one forward pass that stops every running stream until it ends.

Why: a 4,000-token prompt takes seconds to prefill on a CPU; in one pass, every chat stream in
the batch waits that long for its next token. In chunks sized to take about one decode step
each (`ChunkBudget`), the streams keep decoding with at most one chunk between two of their
tokens, and the long prompt's first token comes a little later than it would alone.

The chunk's keys and values are written in place into buffers allocated once for the whole
prompt (`SlottedLayer`), so a chunk copies nothing already written; transformers' forward runs
each chunk over them, as it runs a prompt on top of a cached prefix (prefill.py).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from transformers.cache_utils import DynamicCache

from .kv import SlottedLayer
from .prefill import KV, Prefilled, device_of

MIN_CHUNK = 16  # tokens: below this a chunk pays more in fixed cost (transformers' forward) than it computes
MAX_CHUNK = 1024
FIRST_CHUNK = 64  # before anything is measured


class ChunkBudget:
    """How many prompt tokens one chunk may take: about one decode step's time, from running
    averages of both (a step of the batch as it is now, a chunk's time per token)."""

    def __init__(self) -> None:
        self.step_seconds: float | None = None
        self.token_seconds: float | None = None

    def stepped(self, seconds: float) -> None:
        self.step_seconds = seconds if self.step_seconds is None else 0.8 * self.step_seconds + 0.2 * seconds

    def prefilled(self, tokens: int, seconds: float) -> None:
        per = seconds / max(tokens, 1)
        self.token_seconds = per if self.token_seconds is None else 0.8 * self.token_seconds + 0.2 * per

    def tokens(self, decoding: bool) -> int:
        """The next chunk's size; with nothing decoding, the largest (no stream waits on it)."""
        if not decoding:
            return MAX_CHUNK
        if self.step_seconds is None or self.token_seconds is None:
            return FIRST_CHUNK
        return max(MIN_CHUNK, min(MAX_CHUNK, int(self.step_seconds / self.token_seconds)))


class ChunkedPrefill:
    """One prompt's prefill in progress: `advance` runs its next chunk and, after the last,
    returns the prompt's `Prefilled` (as prefill.py's functions do)."""

    def __init__(self, model: torch.nn.Module, prompt: list[int], prefix_kv: KV | None = None, reused: int = 0) -> None:
        self.model, self.prompt, self.done = model, prompt, reused
        config: Any = model.config
        kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        param = next(model.parameters())
        dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())  # (a quantized model's first may be int8)
        layers: list[SlottedLayer] = []
        for i in range(int(config.num_hidden_layers)):
            if prefix_kv is not None:
                keys, values = prefix_kv[i][0][:, :, :reused], prefix_kv[i][1][:, :, :reused]
            else:
                keys = values = param.new_zeros((1, kv_heads, 0, head_dim), dtype=dtype)
            layer = SlottedLayer(keys, values)
            layer.reserve(len(prompt) - reused)  # every column the prompt needs, at once
            layers.append(layer)
        self.layers = layers
        self.cache = DynamicCache()
        self.cache.layers = list[Any](layers)

    @property
    def left(self) -> int:
        return len(self.prompt) - self.done

    @torch.inference_mode()
    def advance(self, tokens: int, budget: ChunkBudget | None = None) -> Prefilled | None:
        """Prefill the next `tokens` of the prompt (at least one); the whole prompt's Prefilled
        once its last token is in."""
        started = time.perf_counter()
        device = device_of(self.model)
        start, end = self.done, min(len(self.prompt), self.done + max(tokens, 1))
        out = self.model(
            input_ids=torch.tensor([self.prompt[start:end]], dtype=torch.long, device=device),
            attention_mask=torch.ones((1, end), dtype=torch.long, device=device),
            position_ids=torch.arange(start, end, dtype=torch.long, device=device)[None, :],
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self.done = end
        if budget is not None:
            budget.prefilled(end - start, time.perf_counter() - started)
        if self.done < len(self.prompt):
            return None
        kv = [(layer.keys, layer.values) for layer in self.layers]
        mask = torch.ones((1, len(self.prompt)), dtype=torch.long, device=device)
        return Prefilled(kv, mask, torch.tensor([len(self.prompt)], device=device), out.logits[:, -1, :])
