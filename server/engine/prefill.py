"""Prefill: run new prompts through the model once and hand their KV to the running batch.

Prompts with no cached prefix are prefilled together, left-padded into one forward pass.
A prompt whose beginning is in the prefix cache is prefilled alone, on top of that cached KV,
so only its new tokens are computed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicCache

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [B, H, T, D]


@dataclass
class Prefilled:
    kv: KV
    mask: torch.Tensor  # [b, t]
    positions: torch.Tensor  # [b] next position id
    logits: torch.Tensor  # [b, V] at the last prompt token
    every_logits: torch.Tensor | None = None  # [b, t, V] at every position, when asked for (a prompt's own logprobs)


def device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _kv_of(cache: DynamicCache) -> KV:
    return [(layer.keys, layer.values) for layer in cache.layers]


@torch.inference_mode()
def prefill_batch(model: torch.nn.Module, prompts: list[list[int]], pad_id: int, every_position: bool = False) -> Prefilled:
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
    lengths = torch.tensor([len(p) for p in prompts], dtype=torch.long, device=device)
    return Prefilled(_kv_of(cache), mask, lengths, out.logits[:, -1, :], out.logits if every_position else None)


@torch.inference_mode()
def prefill_on_prefix(model: torch.nn.Module, prompt: list[int], prefix_kv: KV, reused: int) -> Prefilled:
    """Prefill `prompt` whose first `reused` tokens already have KV in `prefix_kv`."""
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
