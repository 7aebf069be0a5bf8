"""Choosing the next token for each row of a batch.

Rows differ in temperature, top-p and seed, so greedy rows are served with one vectorised
argmax and each sampled row draws one uniform number from its own seeded `torch.Generator`,
so that a seed reproduces the same text whatever else is batched.

Why not transformers' warpers and `torch.multinomial`, as before: top-p sorts the whole
vocabulary, which made 16 sampled rows cost several times their decode step (`tandem bench
--sections profile`). The nucleus is found among the tokens above the largest of CUTOFFS whose
tokens still hold top-p of the mass (a few hundred tokens, not the whole vocabulary, for a real
model's logits), and only those are sorted; the draw is the inverse of the nucleus' cumulative
distribution at the row's uniform number. It keeps TopPLogitsWarper's nucleus: the likeliest
tokens until their mass reaches top-p (tests/engine/test_sampling.py checks it).
A row with logit controls (penalties, a logit bias, min_tokens) has them applied to a copy of
its own scores first, in vLLM's order; the rows without any pay nothing for them.

A row whose logits or probabilities are not finite fails alone: `sample_next` gives `None` for
it, and the engine ends that one stream with an error while its neighbours go on unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

from .types import NO_CONTROLS, LogitControls

if TYPE_CHECKING:
    from .grammar import Constraint

# Below this a temperature is greedy decoding in all but name, and dividing logits by it
# overflows fp32 into inf/nan (vLLM uses the same cut-off).
GREEDY_BELOW = 1e-5
CUTOFFS = (1e-3, 1e-4, 1e-5, 1e-6, 0.0)  # probabilities above which a row's nucleus is looked for, largest first (0: everywhere)


@dataclass
class SamplingParams:
    temperature: float
    top_p: float
    generator: torch.Generator | None
    controls: LogitControls = NO_CONTROLS
    # what the controls read, kept up to date by the engine: the prompt and the tokens generated so far
    prompt_ids: list[int] = field(default_factory=list)
    output_ids: list[int] = field(default_factory=list)
    ends: frozenset[int] = frozenset()  # the tokens min_tokens holds back (end-of-text and stop_token_ids)
    controlled: bool = False  # whether the controls change anything (worked out once, not per step)
    grammar: Constraint | None = None  # the row's grammar, when it must follow one (a control too)

    @property
    def greedy(self) -> bool:
        return self.generator is None

    @classmethod
    def build(
        cls,
        temperature: float,
        top_p: float,
        seed: int | None,
        controls: LogitControls = NO_CONTROLS,
        prompt_ids: list[int] | None = None,
        ends: frozenset[int] = frozenset(),
        grammar: Constraint | None = None,
    ) -> SamplingParams:
        generator = None
        if temperature >= GREEDY_BELOW:
            generator = torch.Generator()
            generator.manual_seed(seed if seed is not None else int(torch.randint(0, 2**62, (1,))))
        return cls(temperature, top_p, generator, controls, prompt_ids or [], [], ends, controls.active or grammar is not None, grammar)


def sample_next(logits: torch.Tensor, params: list[SamplingParams]) -> list[int | None]:
    """logits: [B, V] for the last position of each row (left unchanged); one token id per row,
    None for a row that failed."""
    chosen: list[int | None] = list(torch.argmax(logits, dim=-1).tolist())  # [B]
    low, high = torch.aminmax(logits, dim=-1)  # (NaN propagates through both: one pass instead of isfinite's mask)
    finite = (torch.isfinite(low) & torch.isfinite(high)).tolist()
    for row, p in enumerate(params):
        if not finite[row]:
            chosen[row] = None
        elif not p.controlled:
            if not p.greedy:
                chosen[row] = _sample_row(logits[row : row + 1], p)
        else:
            scores = apply_controls(logits[row : row + 1].float().clone(), p)
            chosen[row] = int(torch.argmax(scores, dim=-1)[0]) if p.greedy else _sample_row(scores, p)
    return chosen


def apply_controls(scores: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    """One row's scores [1, V] with its controls applied in vLLM's order: the grammar's mask,
    min_tokens, the logit bias, then the repetition, frequency and presence penalties. In place;
    returns `scores`."""
    c = p.controls
    if p.grammar is not None:
        p.grammar.mask(scores)
    if len(p.output_ids) < c.min_tokens and p.ends:
        scores[0, list(p.ends)] = float("-inf")
    if c.logit_bias:
        ids = torch.tensor([i for i, _ in c.logit_bias], dtype=torch.long)
        scores[0].index_add_(0, ids, torch.tensor([b for _, b in c.logit_bias], dtype=scores.dtype))
    if c.repetition_penalty != 1.0:
        seen = torch.tensor([p.prompt_ids + p.output_ids], dtype=torch.long)
        scores = RepetitionPenaltyLogitsProcessor(c.repetition_penalty)(seen, scores)  # type: ignore[arg-type]
    if (c.frequency_penalty or c.presence_penalty) and p.output_ids:
        # OpenAI's penalties (not in transformers): by the output's own counts, never the prompt's
        counts = torch.bincount(torch.tensor(p.output_ids, dtype=torch.long), minlength=scores.shape[-1])[: scores.shape[-1]]
        scores[0] -= c.frequency_penalty * counts.to(scores.dtype) + c.presence_penalty * (counts > 0).to(scores.dtype)
    return scores


def _sample_row(logits: torch.Tensor, p: SamplingParams) -> int | None:
    """One token drawn from a row's logits [1, V] at its temperature, from its top-p nucleus,
    with its own generator; None where its probabilities are not finite. On [1, V] alone: a
    reduction over several rows splits a row's sums differently with their count, and a seed
    must give the same text whatever the batch."""
    probs = torch.softmax(logits.float().cpu()[0] / p.temperature, dim=-1)  # on the CPU, where the generator lives
    u = float(torch.rand(1, generator=p.generator))
    if p.top_p >= 1.0:  # no nucleus: the whole vocabulary, in any order
        return _draw(probs, torch.arange(probs.shape[-1]), float("inf"), u)
    # The smallest of the CUTOFFS' top sets {p >= cutoff} that still holds top-p of the mass:
    # the nucleus (the likeliest tokens up to top-p) lies inside it, so only it is sorted.
    for cutoff in CUTOFFS:
        ids = (probs >= cutoff).nonzero()[:, 0]
        if float(probs[ids].sum()) >= p.top_p or cutoff == CUTOFFS[-1]:
            break
    held, order = probs[ids].sort(descending=True)
    return _draw(held, ids[order], p.top_p, u)


def _draw(probs: torch.Tensor, ids: torch.Tensor, top_p: float, u: float) -> int | None:
    """Of probabilities sorted likeliest first [K] (of tokens `ids`), the token where the
    nucleus' cumulative distribution reaches u times its mass. The nucleus is TopPLogitsWarper's:
    each token whose preceding mass is below top-p (the likeliest always, and the token that
    crosses top-p too)."""
    keep = (probs.cumsum(-1) - probs) < top_p
    running = torch.where(keep, probs, torch.zeros_like(probs)).cumsum(-1)
    total = float(running[-1])
    if not math.isfinite(total) or total <= 0.0:
        return None
    index = int(torch.searchsorted(running, torch.tensor([u * total]), right=True)[0])
    return int(ids[max(0, min(index, int(keep.sum()) - 1))])  # (never past the nucleus, whatever the rounding)


def logprobs_of(logits: torch.Tensor, chosen: list[int], top: list[int]) -> list[tuple[float, list[tuple[int, float]]]]:
    """For rows [R, V] of raw scores: each row's chosen token's log-probability and its `top[r]`
    likeliest tokens with theirs (vLLM reports the model's raw distribution, before any control)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    picked = logp.gather(1, torch.tensor(chosen, dtype=torch.long, device=logp.device)[:, None])[:, 0].tolist()
    k = max(top, default=0)
    best_vals, best_ids = logp.topk(k, dim=-1) if k else (logp[:, :0], logp[:, :0].long())
    out = []
    for r, n in enumerate(top):
        out.append((picked[r], list(zip(best_ids[r, :n].tolist(), best_vals[r, :n].tolist()))))
    return out
