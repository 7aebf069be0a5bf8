"""Prefill: run new prompts through the model once and hand their KV to the running batch.

Prompts with no cached prefix are prefilled together, left-padded into one forward pass.
A prompt whose beginning is in the prefix cache is prefilled alone, on top of that cached KV,
so only its new tokens are computed. With `fast` (a model the engine's own step runs) the pass
is the engine's (fast_decode.forward_prompts, forward_chunk), into KV buffers made for it;
otherwise transformers' forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import DynamicCache

from .fast_decode import Chunk, forward_chunk, forward_prompts
from .kv import zeroed

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [B, H, T, D]


@dataclass
class Prefilled:
    kv: KV
    mask: torch.Tensor  # [b, t]
    positions: torch.Tensor  # [b] next position id
    logits: torch.Tensor  # [b, V] at the last prompt token
    every_logits: torch.Tensor | None = None  # [b, t, V] at every position, when asked for (a prompt's own logprobs)
    buffers: KV | None = None  # buffers whose leading rows and columns `kv` is, with room beyond (a cache can hold them as they are)


def device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _kv_of(cache: DynamicCache) -> KV:
    return [(layer.keys, layer.values) for layer in cache.layers]


def kv_buffers(
    model: torch.nn.Module, rows: int, columns: int, prefix: tuple[KV, int] | None = None
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Zeroed keys and values for every layer of `model`, [rows, kv_heads, columns, head_dim]
    (fresh anonymous memory where large: `kv.zeroed`); with `prefix` (a cached prompt's KV and
    how many of its columns are reused), those columns copied into the first row."""
    config: Any = model.config
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    param = next(model.parameters())
    like = param.new_empty(
        0, dtype=next(p.dtype for p in model.parameters() if p.is_floating_point())
    )  # (a quantized model's first may be int8)
    layers = range(int(config.num_hidden_layers))
    shape = (rows, kv_heads, columns, head_dim)
    keys, values = [zeroed(shape, like) for _ in layers], [zeroed(shape, like) for _ in layers]
    if prefix is not None:
        kv, reused = prefix
        for k, v, (pk, pv) in zip(keys, values, kv):
            k[:1, :, :reused], v[:1, :, :reused] = pk[:, :, :reused], pv[:, :, :reused]
    return keys, values


@torch.inference_mode()
def prefill_batch(
    model: torch.nn.Module, prompts: list[list[int]], pad_id: int, every_position: bool = False, fast: bool = False
) -> Prefilled:
    """Prefill several prompts in one left-padded forward pass (keeping the logits of every
    position, not only the last, with `every_position`)."""
    t = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), t), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), t), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, t - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[row, t - len(p) :] = 1
    device = device_of(model)
    ids, mask = ids.to(device), mask.to(device)
    lengths = torch.tensor([len(p) for p in prompts], dtype=torch.long, device=device)
    if fast:
        return _prefill_fast(model, prompts, pad_id, mask, lengths, every_position)
    position_ids = (mask.cumsum(1) - 1).clamp(min=0)
    cache = DynamicCache()
    out = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=position_ids,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=0 if every_position else 1,
    )
    return Prefilled(_kv_of(cache), mask, lengths, out.logits[:, -1, :], out.logits if every_position else None)


def _prefill_fast(
    model: torch.nn.Module, prompts: list[list[int]], pad_id: int, mask: torch.Tensor, lengths: torch.Tensor, every_position: bool
) -> Prefilled:
    """`prefill_batch` through the engine's own pass, which takes its prompts padded on the right
    (fast_decode.forward_prompts): their keys and values (and logits) are then moved to the
    right, after their padding, as the running batch holds its rows."""
    rows, t = mask.shape
    device = mask.device
    ids = torch.full((rows, t), pad_id, dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, : len(p)] = torch.tensor(p, dtype=torch.long)
    keys, values = kv_buffers(model, rows, t)
    logits = forward_prompts(model, ids.to(device), lengths, keys, values, every_position)
    if bool((lengths == t).all()):
        kv = list(zip(keys, values))
    else:  # column c of a row left-padded by s holds what column c - s held (mod t: its padding comes from the end)
        source = (torch.arange(t, device=device)[None, :] - (t - lengths)[:, None]) % t  # [rows, t]
        index = source[:, None, :, None].expand_as(keys[0])
        kv = [(k.gather(2, index), v.gather(2, index)) for k, v in zip(keys, values)]
        if every_position:
            logits = logits.gather(1, source[:, :, None].expand_as(logits))
    last = logits[:, -1] if every_position else logits
    return Prefilled(kv, mask, lengths, last, logits if every_position else None)


@torch.inference_mode()
def prefill_on_prefix(model: torch.nn.Module, prompt: list[int], prefix_kv: KV, reused: int, fast: bool = False) -> Prefilled:
    """Prefill `prompt` whose first `reused` tokens already have KV in `prefix_kv`."""
    if fast:
        keys, values = kv_buffers(model, 1, len(prompt), (prefix_kv, reused))
        ids = torch.tensor([prompt[reused:]], dtype=torch.long, device=keys[0].device)
        logits = forward_chunk(model, Chunk(ids, reused, keys, values))
        mask = torch.ones((1, len(prompt)), dtype=torch.long, device=ids.device)
        return Prefilled(list(zip(keys, values)), mask, torch.tensor([len(prompt)], device=ids.device), logits)
    cache = DynamicCache(ddp_cache_data=[(k[:, :, :reused], v[:, :, :reused]) for k, v in prefix_kv])
    device = device_of(model)
    rest = torch.tensor([prompt[reused:]], dtype=torch.long, device=device)
    mask = torch.ones((1, len(prompt)), dtype=torch.long, device=device)
    out = model(
        input_ids=rest,
        attention_mask=mask,
        position_ids=torch.arange(reused, len(prompt), dtype=torch.long, device=device)[None, :],
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    return Prefilled(_kv_of(cache), mask, torch.tensor([len(prompt)], device=device), out.logits[:, -1, :])


def row_kv(pre: Prefilled, row: int) -> KV:
    """The unpadded KV of one row, detached from the batch's tensors (so they can be freed)."""
    start = int((pre.mask[row] == 0).sum())
    return [(k[row : row + 1, :, start:].clone(), v[row : row + 1, :, start:].clone()) for k, v in pre.kv]
