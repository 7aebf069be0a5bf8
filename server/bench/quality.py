"""Perplexity on held-out text: the quality cost of each quantization, relative to full precision."""

from __future__ import annotations

import math
from typing import Any

import torch


def perplexity(model: Any, tokenizer: Any, text: str, max_tokens: int, window: int = 512) -> float:
    """exp(mean next-token negative log-likelihood) over the first max_tokens tokens of text,
    in non-overlapping windows."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]
    nll, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(ids) - 1, window):
            chunk = torch.tensor([ids[start : start + window]])
            if chunk.shape[1] < 2:
                break
            loss = model(chunk, labels=chunk).loss.float().item()
            nll += loss * (chunk.shape[1] - 1)
            count += chunk.shape[1] - 1
    return math.exp(nll / count)
