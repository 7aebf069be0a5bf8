"""Choosing the next token for each row of a batch.

Rows differ in temperature, top-p and seed, so greedy rows are served with one vectorised
argmax and only the sampled rows go through transformers' own logits warpers, each with its
own seeded `torch.Generator` so that a seed reproduces the same text whatever else is batched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper


@dataclass
class SamplingParams:
    temperature: float
    top_p: float
    generator: torch.Generator | None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    @classmethod
    def build(cls, temperature: float, top_p: float, seed: int | None) -> SamplingParams:
        generator = None
        if temperature > 0.0:
            generator = torch.Generator()
            generator.manual_seed(seed if seed is not None else int(torch.randint(0, 2**62, (1,))))
        return cls(temperature, top_p, generator)


def sample_next(logits: torch.Tensor, params: list[SamplingParams]) -> list[int]:
    """logits: [B, V] for the last position of each row; returns one token id per row."""
    chosen = torch.argmax(logits, dim=-1)  # [B]
    for row, p in enumerate(params):
        if p.greedy:
            continue
        scores = logits[row : row + 1].float().cpu()  # [1, V]; on the CPU, where the row's generator lives
        scores = TemperatureLogitsWarper(p.temperature)(None, scores)  # type: ignore[arg-type]
        if p.top_p < 1.0:
            scores = TopPLogitsWarper(p.top_p)(None, scores)  # type: ignore[arg-type]
        probs = torch.softmax(scores, dim=-1)
        chosen[row] = torch.multinomial(probs, 1, generator=p.generator)[0, 0]
    return chosen.tolist()
