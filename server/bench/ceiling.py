"""The roofline for batch-1 decoding: each new token reads every weight once, so tokens/s can
be at most (memory read bandwidth) / (bytes of weights read per token)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch


def read_bandwidth(size_mib: int = 512, repeats: int = 7) -> dict[str, float]:
    """The best of several full reads of a buffer much larger than the caches, in bytes/s,
    by two independent readers (torch's threaded sum, NumPy's single-threaded one)."""
    x = torch.ones(size_mib * 2**20 // 4, dtype=torch.float32)
    a = x.numpy()
    best_torch = best_numpy = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        x.sum().item()
        best_torch = max(best_torch, x.nbytes / (time.perf_counter() - t))
        t = time.perf_counter()
        float(np.add.reduce(a))
        best_numpy = max(best_numpy, a.nbytes / (time.perf_counter() - t))
    return {
        "torch_sum_bytes_per_s": best_torch,
        "numpy_sum_bytes_per_s": best_numpy,
        "bytes_per_s": max(best_torch, best_numpy),
        "buffer_mib": size_mib,
        "threads": torch.get_num_threads(),
    }


def weight_bytes_per_token(model: Any, footprint_bytes: int) -> int:
    """Every weight is read for each token except an untied input embedding, of which one row is."""
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    head_weight = getattr(head, "weight", None)  # None once packed: the head then holds its own copy
    tied = head_weight is not None and head_weight.data_ptr() == embed.data_ptr()
    if tied:
        return footprint_bytes
    return footprint_bytes - embed.numel() * embed.element_size() + embed.shape[1] * embed.element_size()
