"""The sampler (server/engine/sampling.py) against transformers' own warpers: every token it
draws lies in the nucleus TopPLogitsWarper keeps, it draws them as often as their share of the
nucleus says, a seed gives the same token whatever rows run beside it, and a row that is not
finite fails alone."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

from server.engine.sampling import SamplingParams, sample_next


def nucleus(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """The probabilities transformers samples from ([V]): zero outside the nucleus."""
    scores = TemperatureLogitsWarper(temperature)(None, logits[None].clone())  # type: ignore[arg-type]
    if top_p < 1.0:
        scores = TopPLogitsWarper(top_p)(None, scores)  # type: ignore[arg-type]
    return torch.softmax(scores, dim=-1)[0]


def peaked(vocab: int, seed: int, spread: float) -> torch.Tensor:
    """Logits shaped like a language model's: a few likely tokens and a long tail."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(vocab, generator=g) * spread - torch.arange(vocab).float().log1p() * torch.rand(1, generator=g) * 2


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    vocab=st.sampled_from([7, 500, 49_152]),
    spread=st.sampled_from([0.1, 1.0, 4.0]),
    temperature=st.floats(0.05, 2.0),
    top_p=st.sampled_from([0.05, 0.5, 0.9, 0.95, 0.999, 1.0]),
)
def test_every_drawn_token_is_in_transformers_nucleus(seed: int, vocab: int, spread: float, temperature: float, top_p: float) -> None:
    logits = peaked(vocab, seed, spread)
    kept = nucleus(logits, temperature, top_p) > 0
    rows = [SamplingParams.build(temperature, top_p, seed * 100 + i) for i in range(8)]
    for token in sample_next(logits.expand(8, vocab), rows):
        assert token is not None and bool(kept[token]), (token, int(kept.sum()))


def test_tokens_are_drawn_as_often_as_their_share_of_the_nucleus() -> None:
    logits = peaked(300, 3, 1.5)
    want = nucleus(logits, 0.8, 0.9)
    draws = 6000
    tokens = sample_next(logits.expand(draws, 300), [SamplingParams.build(0.8, 0.9, i) for i in range(draws)])
    counts = torch.bincount(torch.tensor(tokens), minlength=300).float()
    assert counts[want == 0].sum() == 0
    likely = want > 0.02
    for token in likely.nonzero()[:, 0].tolist():  # each within four standard deviations of its expected count
        p = float(want[token])
        assert abs(float(counts[token]) - p * draws) <= 4 * math.sqrt(draws * p * (1 - p)), (token, p, float(counts[token]))


def test_a_seed_draws_the_same_tokens_alone_or_beside_any_rows() -> None:
    vocab = 49_152
    logits = torch.stack([peaked(vocab, s, 0.5) for s in range(6)])
    for top_p in (0.9, 1.0):
        alone = [sample_next(logits[r : r + 1], [SamplingParams.build(1.0, top_p, 42)])[0] for r in range(6)]
        beside = sample_next(
            logits,
            [
                SamplingParams.build(1.0, top_p, 42) if r % 2 == 0 else SamplingParams.build(0.0 if r == 1 else 0.7, 0.5, 7)
                for r in range(6)
            ],
        )
        assert [beside[r] for r in (0, 2, 4)] == [alone[r] for r in (0, 2, 4)]
        assert beside[1] == int(logits[1].argmax())  # the greedy row among them


def test_a_row_that_is_not_finite_fails_alone() -> None:
    logits = torch.stack([peaked(500, s, 1.0) for s in range(4)])
    logits[1, 17] = float("nan")
    logits[2, :] = float("-inf")
    params = [SamplingParams.build(0.7, 0.9, r) for r in range(4)]
    params[3] = SamplingParams.build(0.0, 1.0, None)
    got = sample_next(logits, params)
    assert got[1] is None and got[2] is None
    assert got[0] is not None and got[3] == int(logits[3].argmax())
