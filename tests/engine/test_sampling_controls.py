"""The engine's per-row sampling controls, logprobs, echo and n, on the tiny random-weight model,
compared token for token with transformers' `generate` given the same processors (or, for
OpenAI's presence and frequency penalties, which transformers lacks, the formula written here
as a logits processor), and logprobs against one teacher-forced forward pass."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from server.engine import Delta, Engine, GenerationRequest, InvalidRequest
from server.engine.types import LogitControls
from tests.conftest import tiny_llama
from tests.waiting import eventually_async

PROMPTS = ["def add(a, b):", "Once upon a time", "The quick brown fox jumps over the lazy dog, and then"]
EOS = [0, 2]


@pytest.fixture(scope="module")
def plain_model(tokenizer):  # type: ignore[no-untyped-def]
    return tiny_llama(len(tokenizer))


async def deltas(engine: Engine, req: GenerationRequest) -> list[Delta]:
    return [d async for d in engine.stream(req)]


def ids_of(tokenizer: Any, prompt: str) -> list[int]:
    return list(tokenizer(prompt)["input_ids"])


def generate(model: Any, tokenizer: Any, prompt: str, max_tokens: int, **kwargs: Any) -> list[int]:
    """Greedy `model.generate`'s new token ids, ending where the engine ends (eos included)."""
    ids = tokenizer(prompt, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=max_tokens, do_sample=False, eos_token_id=EOS, pad_token_id=2, **kwargs)
    return [int(t) for t in out[0, ids["input_ids"].shape[1] :]]


def text_of(tokenizer: Any, ids: list[int]) -> str:
    return str(tokenizer.decode([t for t in ids if t not in EOS], skip_special_tokens=True))


class OpenAIPenalties(LogitsProcessor):
    """OpenAI's presence and frequency penalties, by the counts of the tokens generated so far."""

    def __init__(self, prompt_length: int, presence: float, frequency: float) -> None:
        self.prompt_length, self.presence, self.frequency = prompt_length, presence, frequency

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        out = input_ids[0, self.prompt_length :]
        if not len(out):
            return scores
        counts = torch.bincount(out, minlength=scores.shape[-1]).to(scores.dtype)
        return scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)  # type: ignore[return-value]


async def test_controlled_rows_decode_as_generate_does_beside_plain_ones(engine_factory, plain_model, tokenizer) -> None:
    engine = engine_factory(prefix_cache_tokens=0)
    n = 24
    cases: list[tuple[LogitControls, dict[str, Any]]] = [
        (LogitControls(repetition_penalty=1.5), {"repetition_penalty": 1.5}),
        (
            LogitControls(presence_penalty=1.5, frequency_penalty=0.7),
            {"logits_processor": LogitsProcessorList([OpenAIPenalties(len(ids_of(tokenizer, PROMPTS[1])), 1.5, 0.7)])},
        ),
        (LogitControls(logit_bias=((100, 5.0), (200, -100.0))), {"sequence_bias": {(100,): 5.0, (200,): -100.0}}),
        (LogitControls(), {}),
    ]
    prompts = [PROMPTS[0], PROMPTS[1], PROMPTS[2], PROMPTS[2]]
    results = await asyncio.gather(
        *(deltas(engine, GenerationRequest(prompt=p, max_tokens=n, controls=c)) for p, (c, _) in zip(prompts, cases))
    )
    assert engine.metrics.read("tandem_batch_size_peak") == 4  # all four in one batch
    for prompt, (_, kwargs), out in zip(prompts, cases, results):
        assert "".join(d.text for d in out) == text_of(tokenizer, generate(plain_model, tokenizer, prompt, n, **kwargs))
    # the penalties changed what the model wrote (the tiny model repeats itself without them)
    plain = text_of(tokenizer, generate(plain_model, tokenizer, PROMPTS[0], n))
    assert "".join(d.text for d in results[0]) != plain


async def test_a_banned_token_never_appears_and_a_favoured_one_always_does(engine_factory, plain_model, tokenizer) -> None:
    engine = engine_factory()
    greedy = generate(plain_model, tokenizer, PROMPTS[0], 12)
    banned = [t for t in set(greedy) if t not in EOS]
    out = await deltas(
        engine,
        GenerationRequest(
            prompt=PROMPTS[0], max_tokens=12, controls=LogitControls(logit_bias=tuple((t, -100.0) for t in banned)), logprobs=0
        ),
    )
    chosen = [e.chosen.token_id for d in out for e in d.logprobs]
    assert chosen and not set(chosen) & set(banned)
    favoured = await deltas(
        engine, GenerationRequest(prompt=PROMPTS[0], max_tokens=6, controls=LogitControls(logit_bias=((4242, 100.0),)), logprobs=0)
    )
    assert [e.chosen.token_id for d in favoured for e in d.logprobs] == [4242] * 6


async def test_min_tokens_holds_back_the_end_and_stop_token_ids_end_it(engine_factory, plain_model, tokenizer) -> None:
    engine = engine_factory()
    eager_end = LogitControls(logit_bias=((2, 100.0),))  # the model wants to end at once
    ended = await deltas(engine, GenerationRequest(prompt=PROMPTS[0], max_tokens=20, controls=eager_end))
    assert ended[-1].tokens == 1 and ended[-1].finish_reason == "stop"
    held = await deltas(
        engine, GenerationRequest(prompt=PROMPTS[0], max_tokens=20, controls=LogitControls(logit_bias=((2, 100.0),), min_tokens=5))
    )
    assert held[-1].tokens == 6 and held[-1].finish_reason == "stop"  # five tokens, then the end it wanted
    # (the penalty keeps the tiny model from repeating one token, so the answer has several to stop at)
    greedy = generate(plain_model, tokenizer, PROMPTS[1], 16, repetition_penalty=2.0)
    stop_at = max(i for i, t in enumerate(greedy) if t not in greedy[:i] and t not in EOS)  # the last token new to the answer
    assert stop_at >= 3
    controls = LogitControls(repetition_penalty=2.0, stop_token_ids=(greedy[stop_at],))
    stopped = await deltas(engine, GenerationRequest(prompt=PROMPTS[1], max_tokens=16, controls=controls))
    assert stopped[-1].finish_reason == "stop" and stopped[-1].tokens == stop_at + 1
    assert "".join(d.text for d in stopped) == text_of(tokenizer, greedy[:stop_at])


def teacher_forced(model: Any, ids: list[int]) -> torch.Tensor:
    """log-softmax of the plain model's logits at every position of `ids` [T, V]."""
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)


async def test_logprobs_are_the_models_and_agree_with_the_greedy_choice(engine_factory, plain_model, tokenizer) -> None:
    engine = engine_factory()
    out = await deltas(engine, GenerationRequest(prompt=PROMPTS[1], max_tokens=10, logprobs=5))
    entries = [e for d in out for e in d.logprobs]
    assert len(entries) == out[-1].tokens == 10  # one per token, text or not
    prompt = ids_of(tokenizer, PROMPTS[1])
    chosen = [e.chosen.token_id for e in entries]
    reference = teacher_forced(plain_model, prompt + chosen)
    for i, e in enumerate(entries):
        row = reference[len(prompt) - 1 + i]
        assert e.chosen.logprob == pytest.approx(float(row[e.chosen.token_id]), abs=1e-4)
        assert len(e.top) == 5 and e.top[0].token_id == e.chosen.token_id  # greedy: the choice is the likeliest
        ranked = [c.logprob or 0.0 for c in e.top]
        assert ranked == sorted(ranked, reverse=True)
        assert e.chosen.bytes.decode("utf-8", "replace") == e.chosen.token or "\ufffd" in e.chosen.token
    total = sum(e.chosen.logprob or 0.0 for e in entries)
    assert total == pytest.approx(sum(float(reference[len(prompt) - 1 + i, t]) for i, t in enumerate(chosen)), abs=1e-3)
    assert math.isfinite(total) and total < 0


async def test_echo_gives_the_prompts_own_logprobs_without_generating(engine_factory, plain_model, tokenizer) -> None:
    engine = engine_factory()
    prompt = ids_of(tokenizer, PROMPTS[2])
    out = await deltas(engine, GenerationRequest(prompt=prompt, max_tokens=0, echo=True, logprobs=1))
    assert len(out) == 1 and out[0].finish_reason == "length" and out[0].tokens == 0
    echo = out[0].prompt
    assert echo is not None and echo.logprobs is not None and echo.text == tokenizer.decode(prompt)
    assert [e.chosen.token_id for e in echo.logprobs] == prompt and echo.logprobs[0].chosen.logprob is None
    reference = teacher_forced(plain_model, prompt)
    for i, e in enumerate(echo.logprobs[1:], start=1):
        assert e.chosen.logprob == pytest.approx(float(reference[i - 1, prompt[i]]), abs=1e-4)
    # echo and an answer: the prompt first, then the tokens
    both = await deltas(engine, GenerationRequest(prompt=PROMPTS[2], max_tokens=4, echo=True))
    assert both[0].prompt is not None and both[0].prompt.text == PROMPTS[2] and both[-1].tokens == 4


async def test_n_answers_fork_from_one_prefill(engine_factory, plain_model, tokenizer) -> None:
    engine = engine_factory(prefix_cache_tokens=0)
    prompt = ids_of(tokenizer, PROMPTS[2])
    before = engine.metrics.read("tandem_prefill_tokens_total")
    out = await deltas(engine, GenerationRequest(prompt=prompt, max_tokens=8, temperature=1.0, seed=7, n=3))
    assert engine.metrics.read("tandem_prefill_tokens_total") - before == len(prompt)  # prefilled once, not three times
    texts = {i: "".join(d.text for d in out if d.index == i) for i in range(3)}
    assert sorted({d.index for d in out if d.finish_reason}) == [0, 1, 2]
    # each answer is what one request with the seed for its index gives (seed + index, as vLLM seeds them)
    for i in range(3):
        alone = await deltas(engine, GenerationRequest(prompt=prompt, max_tokens=8, temperature=1.0, seed=7 + i))
        assert texts[i] == "".join(d.text for d in alone)
    assert len(set(texts.values())) > 1


async def test_a_cancelled_request_for_n_answers_frees_every_row(engine_factory, tokenizer) -> None:
    engine = engine_factory()
    stream = engine.stream(GenerationRequest(prompt=PROMPTS[0], max_tokens=200, n=4))
    await stream.__anext__()
    await eventually_async(lambda: engine.running == 4, "four rows running")
    await stream.aclose()  # type: ignore[attr-defined]
    await eventually_async(lambda: engine.running == 0, "the four rows gone")


@pytest.mark.parametrize(
    ("req", "param"),
    [
        (GenerationRequest(prompt="x", n=0), "n"),
        (GenerationRequest(prompt="x", n=33), "n"),
        (GenerationRequest(prompt="x", logprobs=21), "logprobs"),
        (GenerationRequest(prompt="x", controls=LogitControls(logit_bias=((10**9, 1.0),))), "logit_bias"),
        (GenerationRequest(prompt="x", controls=LogitControls(logit_bias=((5, 101.0),))), "logit_bias"),
        (GenerationRequest(prompt="x", controls=LogitControls(stop_token_ids=(-1,))), "stop_token_ids"),
        (GenerationRequest(prompt="x", controls=LogitControls(presence_penalty=2.5)), "presence_penalty"),
        (GenerationRequest(prompt="x", controls=LogitControls(repetition_penalty=0.0)), "repetition_penalty"),
        (GenerationRequest(prompt="x", max_tokens=4, controls=LogitControls(min_tokens=5)), "min_tokens"),
        (GenerationRequest(prompt="x", max_tokens=0), "max_tokens"),
        (GenerationRequest(prompt="x", max_tokens=0, echo=True, n=2), "max_tokens"),
    ],
)
async def test_a_request_the_engine_cannot_honour_is_refused_by_name(engine_factory, req: GenerationRequest, param: str) -> None:
    engine = engine_factory()
    with pytest.raises(InvalidRequest) as refused:
        await deltas(engine, req)
    assert refused.value.param == param
    assert "".join(d.text for d in await deltas(engine, GenerationRequest(prompt="x", max_tokens=2))) is not None  # still serving
