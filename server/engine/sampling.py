"""Choosing the next token for each row of a batch.

Rows differ in temperature, top-p and seed, so greedy rows are served with one vectorised
argmax and only the sampled rows go through transformers' own logits warpers, each with its
own seeded `torch.Generator` so that a seed reproduces the same text whatever else is batched.

A row whose logits or probabilities are not finite fails alone: `sample_next` gives `None` for
it, and the engine ends that one stream with an error while its neighbours go on unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

# Below this a temperature is greedy decoding in all but name, and dividing logits by it
# overflows fp32 into inf/nan (vLLM uses the same cut-off).
GREEDY_BELOW = 1e-5


@dataclass
class SamplingParams:
    temperature: float
    top_p: float
    generator: torch.Generator | None

    @property
    def greedy(self) -> bool:
        return self.generator is None

    @classmethod
    def build(cls, temperature: float, top_p: float, seed: int | None) -> SamplingParams:
        generator = None
        if temperature >= GREEDY_BELOW:
            generator = torch.Generator()
            generator.manual_seed(seed if seed is not None else int(torch.randint(0, 2**62, (1,))))
        return cls(temperature, top_p, generator)


def sample_next(logits: torch.Tensor, params: list[SamplingParams]) -> list[int | None]:
    """logits: [B, V] for the last position of each row; one token id per row, None for a row that failed."""
    chosen: list[int | None] = list(torch.argmax(logits, dim=-1).tolist())  # [B]
    finite = torch.isfinite(logits).all(dim=-1).tolist()
    for row, p in enumerate(params):
        if not finite[row]:
            chosen[row] = None
            continue
        if p.greedy:
            continue
        chosen[row] = _sample_row(logits[row : row + 1], p)
    return chosen


def _sample_row(logits: torch.Tensor, p: SamplingParams) -> int | None:
    scores = logits.float().cpu()  # [1, V]; on the CPU, where the row's generator lives
    scores = TemperatureLogitsWarper(p.temperature)(None, scores)  # type: ignore[arg-type]
    if p.top_p < 1.0:
        scores = TopPLogitsWarper(p.top_p)(None, scores)  # type: ignore[arg-type]
    probs = torch.softmax(scores, dim=-1)
    if not bool(torch.isfinite(probs).all()) or not float(probs.sum()) > 0.0:
        return None
    return int(torch.multinomial(probs, 1, generator=p.generator)[0, 0])
