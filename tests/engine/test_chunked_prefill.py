"""Chunked prefill (server/engine/chunked.py): a long prompt is prefilled a chunk at a time,
in the decode steps' passes. Its answer is token for token `model.generate`'s; the rows already
decoding go on producing tokens while it is prefilled; a cancelled one frees its place; the
prefix cache serves it as it serves any prompt."""

from __future__ import annotations

import asyncio
import time

import pytest

from server.engine import Engine, GenerationRequest, LogitControls, Priority
from server.engine.chunked import MAX_CHUNK, MIN_CHUNK, ChunkBudget
from tests.conftest import tiny_llama
from tests.waiting import eventually_async

from .test_engine import PROMPTS, collect, reference

LONG = " ".join(f"item {i} is {i * 7 % 13};" for i in range(22))  # about 170 tokens (the tiny model holds 256)


@pytest.fixture(scope="module")
def plain_model(tokenizer):  # type: ignore[no-untyped-def]
    return tiny_llama(len(tokenizer))


async def test_a_chunked_prompt_answers_as_generate_does_alone_and_beside_running_rows(engine_factory, plain_model, tokenizer) -> None:
    engine = engine_factory(prefix_cache_tokens=0, chunk_prefill_above=16)
    assert len(tokenizer(LONG)["input_ids"]) > 150
    want = reference(plain_model, tokenizer, LONG, 24)
    assert (await collect(engine, GenerationRequest(prompt=LONG, max_tokens=24)))[0] == want
    before = engine.metrics.read("tandem_prefill_tokens_total")
    results = await asyncio.gather(
        *(collect(engine, GenerationRequest(prompt=p, max_tokens=40)) for p in PROMPTS[:3]),
        collect(engine, GenerationRequest(prompt=LONG, max_tokens=24)),
    )
    assert results[-1][0] == want
    for prompt, (text, _, _) in zip(PROMPTS[:3], results[:3]):
        assert text == reference(plain_model, tokenizer, prompt, 40)
    assert engine.metrics.read("tandem_prefill_tokens_total") - before == sum(len(tokenizer(p)["input_ids"]) for p in [*PROMPTS[:3], LONG])


async def test_running_rows_keep_decoding_while_a_long_prompt_is_prefilled_in_chunks(engine_factory, tokenizer) -> None:
    """Every row already decoding gets a token after (nearly) every chunk between the long
    prompt's arrival and its first token; prefilled whole, it would get none."""
    engine = engine_factory(prefix_cache_tokens=0, chunk_prefill_above=16)
    engine._chunks.tokens = lambda decoding, prompt: MIN_CHUNK  # type: ignore[method-assign]
    stamps: list[list[float]] = [[] for _ in range(3)]

    async def chat(i: int) -> None:
        req = GenerationRequest(prompt=PROMPTS[i], max_tokens=200, controls=LogitControls(min_tokens=200))  # no early end
        async for delta in engine.stream(req):
            if delta.tokens:
                stamps[i].append(time.perf_counter())

    chats = [asyncio.create_task(chat(i)) for i in range(3)]
    await eventually_async(lambda: engine.running == 3 and all(stamps), "three rows decoding")
    arrived = time.perf_counter()
    first = 0.0
    async for delta in engine.stream(GenerationRequest(prompt=LONG, max_tokens=2)):
        if delta.tokens and not first:
            first = time.perf_counter()
    await asyncio.gather(*chats)
    chunks = -(-len(tokenizer(LONG)["input_ids"]) // MIN_CHUNK)
    for row in stamps:
        assert sum(arrived < t < first for t in row) >= chunks - 2, (chunks, [sum(arrived < t < first for t in r) for r in stamps])


@pytest.mark.parametrize("priority", [Priority.CHAT, Priority.INTERACTIVE], ids=["chat", "interactive"])
async def test_a_prompt_prefilled_at_once_during_a_chunked_prefill_is_admitted_after_a_plain_step_unless_interactive(
    engine_factory, plain_model, tokenizer, monkeypatch, priority
) -> None:
    """A step that carries a chunk already costs the running streams about a step more; a chat
    prompt arriving then to be prefilled at once (here: more chat tokens than ride the steps) is
    prefilled after one plain step, never in the same gap as a chunk. An interactive one is not
    held back (its developer is waiting). Either way no chunk runs beside the prefill, and the
    long prompt's chunks go on after it. Both answers are generate's."""
    from server.engine import engine as engine_module

    monkeypatch.setattr(engine_module, "RIDE_TOKENS", 0)
    engine = engine_factory(prefix_cache_tokens=0, chunk_prefill_above=16)
    engine._chunks.tokens = lambda decoding, prompt: MIN_CHUNK  # type: ignore[method-assign]
    events: list[tuple[str, bool]] = []  # on the worker thread, in order: ("decode", carried a chunk) or ("admit", False)
    decode, admit = engine._decode, engine._admit

    def logged_decode() -> None:
        events.append(("decode", engine._beside is not None))
        decode()

    def logged_admit(new: list) -> bool:  # type: ignore[type-arg]
        events.append(("admit", False))
        return admit(new)

    engine._decode, engine._admit = logged_decode, logged_admit  # type: ignore[method-assign]
    chat = asyncio.create_task(
        collect(engine, GenerationRequest(prompt=PROMPTS[0], max_tokens=120, controls=LogitControls(min_tokens=120)))
    )
    await eventually_async(lambda: engine.running == 1, "a row decoding")
    long_answer = asyncio.create_task(collect(engine, GenerationRequest(prompt=LONG, max_tokens=8)))
    await eventually_async(lambda: bool(engine._chunking) and engine._chunking[0][1].done >= 2 * MIN_CHUNK, "the long prompt part-way")
    arrived = len(events)
    short = await collect(engine, GenerationRequest(prompt=PROMPTS[1], max_tokens=6, priority=priority))
    assert (await long_answer)[0] == reference(plain_model, tokenizer, LONG, 8)
    await chat
    assert short[0] == reference(plain_model, tokenizer, PROMPTS[1], 6)
    [at] = [
        i for i, (kind, _) in enumerate(events) if kind == "admit" and i >= arrived
    ]  # the short prompt (the long one joins without one)
    if priority == Priority.CHAT:
        assert events[at - 2 : at] == [("decode", True), ("decode", False)], events[at - 4 : at + 2]  # a chunk's step, then a plain one
    else:
        assert events[at - 1] == ("decode", True), events[at - 4 : at + 2]  # straight after a chunk's step
    assert events[at + 1] == ("decode", False), events[at : at + 3]  # the prefill's iteration runs no chunk
    assert any(carried for _, carried in events[at:]), "the chunks went on after the short prompt"


async def test_a_chat_prompt_arriving_while_rows_decode_rides_their_steps_ahead_of_a_long_one(
    engine_factory, plain_model, tokenizer
) -> None:
    """Prefilled at once, a short chat prompt arriving while rows decode stops every stream for a
    pass of the whole model. It goes into the running steps' passes in chunks instead (no pass
    of its own), ahead of a long prompt being chunked, and joins after its last chunk. Every
    answer is generate's."""
    engine = engine_factory(prefix_cache_tokens=0, chunk_prefill_above=64)
    engine._chunks.tokens = lambda decoding, prompt: 3  # type: ignore[method-assign]  # (several chunks each)
    events: list[tuple[str, int]] = []  # on the worker thread: ("admit", prefilled at once) or ("decode", the chunk's prompt length or 0)
    decode, admit = engine._decode, engine._admit

    def logged_decode() -> None:
        events.append(("decode", len(engine._beside[0].prompt) if engine._beside else 0))
        decode()

    def logged_admit(new: list) -> bool:  # type: ignore[type-arg]
        prefilled = admit(new)
        events.append(("admit", int(prefilled)))
        return prefilled

    engine._decode, engine._admit = logged_decode, logged_admit  # type: ignore[method-assign]
    chat = asyncio.create_task(
        collect(engine, GenerationRequest(prompt=PROMPTS[0], max_tokens=150, controls=LogitControls(min_tokens=150)))
    )
    await eventually_async(lambda: engine.running == 1, "a row decoding")
    long_answer = asyncio.create_task(collect(engine, GenerationRequest(prompt=LONG, max_tokens=8)))
    await eventually_async(lambda: bool(engine._chunking) and engine._chunking[0][1].done >= 6, "the long prompt part-way")
    arrived = len(events)
    short = await collect(engine, GenerationRequest(prompt=PROMPTS[3], max_tokens=6))
    long_text = (await long_answer)[0]
    await chat
    assert short[0] == reference(plain_model, tokenizer, PROMPTS[3], 6)
    assert long_text == reference(plain_model, tokenizer, LONG, 8)
    short_len, long_len = len(tokenizer(PROMPTS[3])["input_ids"]), len(tokenizer(LONG)["input_ids"])
    # queued for chunks, no pass of its own
    assert ("admit", 0) in events[arrived:] and ("admit", 1) not in events[arrived:], events[arrived:]
    carried = [n for kind, n in events[arrived:] if kind == "decode" and n]
    first, last = carried.index(short_len), len(carried) - 1 - carried[::-1].index(short_len)
    # its chunks one after another, none of the long one's between
    assert carried[first : last + 1] == [short_len] * -(-short_len // 3), carried
    assert long_len in carried[last:], "the long prompt's chunks went on after it"


async def test_a_long_prompt_cancelled_while_prefilling_stops_there_and_frees_its_place(engine_factory, tokenizer) -> None:
    engine = engine_factory(prefix_cache_tokens=0, chunk_prefill_above=16, max_batch_size=2)
    engine._chunks.tokens = lambda decoding, prompt: 1  # type: ignore[method-assign]  # (a token a chunk: it is still part-way when cancelled)
    runner = asyncio.create_task(
        collect(engine, GenerationRequest(prompt=PROMPTS[0], max_tokens=200, controls=LogitControls(min_tokens=200)))
    )
    await eventually_async(lambda: engine.running == 1, "a row decoding")
    stream = engine.stream(GenerationRequest(prompt=LONG, max_tokens=50))
    task = asyncio.create_task(stream.__anext__())
    await eventually_async(lambda: bool(engine._chunking) and engine._chunking[0][1].done > 0, "the long prompt part-way")
    task.cancel()  # its caller leaves
    with pytest.raises(asyncio.CancelledError):
        await task
    await eventually_async(lambda: not engine._chunking, "the cancelled prompt dropped")
    assert engine.metrics.read("tandem_requests_finished_total", reason="cancelled") == 1
    assert engine.metrics.read("tandem_prefill_tokens_total") < len(tokenizer(PROMPTS[0])["input_ids"]) + len(tokenizer(LONG)["input_ids"])
    assert (await collect(engine, GenerationRequest(prompt=PROMPTS[1], max_tokens=3)))[2] == 3  # its place is free again
    await runner


async def test_the_prefix_cache_serves_a_chunked_prompt_and_a_prompt_that_extends_it(engine_factory, plain_model, tokenizer) -> None:
    engine = engine_factory(prefix_cache_tokens=4096, chunk_prefill_above=16)
    await collect(engine, GenerationRequest(prompt=LONG, max_tokens=4))
    longer = LONG + " and then item 41 is"
    text = (await collect(engine, GenerationRequest(prompt=longer, max_tokens=12)))[0]
    assert engine.metrics.read("tandem_prefix_cache_hits_total") == 1
    assert text == reference(plain_model, tokenizer, longer, 12)


class _Prompt:  # (a ChunkedPrefill's stand-in: the budget holds it weakly)
    pass


def test_each_prompt_s_chunks_are_sized_by_its_own_last_chunk() -> None:
    """A short prompt's chunks attend to a few columns: sized by a long prompt's last chunk
    (thousands of columns), they would be a fraction of what a step's time allows."""

    budget, long_prompt, short_prompt = ChunkBudget(), _Prompt(), _Prompt()
    budget.stepped(0.020)
    budget.prefilled(8, 0.040, long_prompt)  # 5 ms a token, over a long prefix
    assert budget.tokens(True, long_prompt) == MIN_CHUNK
    assert budget.tokens(True, short_prompt) > MIN_CHUNK  # nothing measured for it yet: the first chunk's size
    budget.prefilled(24, 0.006, short_prompt)
    assert budget.tokens(True, short_prompt) == 80 and budget.tokens(True, long_prompt) == MIN_CHUNK


def test_a_chunk_takes_a_steps_time_and_the_largest_with_nothing_decoding() -> None:
    budget, prompt = ChunkBudget(), _Prompt()
    assert budget.tokens(False, prompt) == MAX_CHUNK
    first = budget.tokens(True, prompt)
    budget.stepped(0.020)
    budget.prefilled(100, 0.100, prompt)  # 1 ms a token
    assert first > 0 and budget.tokens(True, prompt) == 20  # a step's time
    budget.stepped(10.0)
    assert budget.tokens(True, prompt) <= MAX_CHUNK
    budget.prefilled(1, 100.0, prompt)
    assert budget.tokens(True, prompt) == MIN_CHUNK


def test_an_engine_over_a_model_without_chunking_still_prefills_long_prompts(tiny_model, tokenizer) -> None:  # type: ignore[no-untyped-def]
    from server.engine import EngineConfig

    engine = Engine(tiny_model, tokenizer, EngineConfig(chunk_prefill_above=0, prefix_cache_tokens=0)).start()
    try:
        assert asyncio.run(collect(engine, GenerationRequest(prompt=LONG, max_tokens=5)))[2] == 5
        assert not engine._chunking
    finally:
        engine.close()


async def test_an_interactive_prompt_is_prefilled_at_once_however_long(engine_factory, plain_model, tokenizer) -> None:
    """A completion request goes ahead of chat and its developer is waiting: it is not chunked."""
    engine = engine_factory(prefix_cache_tokens=0, chunk_prefill_above=16)
    chunks: list[int] = []
    engine._chunks.prefilled = lambda tokens, seconds, prompt: chunks.append(tokens)  # type: ignore[method-assign]
    chat = asyncio.create_task(
        collect(engine, GenerationRequest(prompt=PROMPTS[0], max_tokens=100, controls=LogitControls(min_tokens=100)))
    )
    await eventually_async(lambda: engine.running == 1, "a chat row decoding")
    text = (await collect(engine, GenerationRequest(prompt=LONG, max_tokens=12, priority=Priority.INTERACTIVE)))[0]
    assert text == reference(plain_model, tokenizer, LONG, 12) and chunks == []
    await chat
    await collect(engine, GenerationRequest(prompt=LONG, max_tokens=2))  # the same prompt at chat priority is chunked
    assert chunks


def test_a_large_cache_buffer_is_zero_and_takes_memory_only_where_written() -> None:
    """The padding of short rows beside a long one is never written, so it never becomes
    resident memory (torch.zeros would write all of it first)."""
    import psutil
    import torch

    from server.engine.kv import LAZY_BYTES, zeroed

    process = psutil.Process()
    before = process.memory_info().rss
    buf = zeroed((8, 3, 8192, 1024), torch.empty(0))  # 768 MiB of fp32
    assert buf.shape == (8, 3, 8192, 1024) and buf.dtype == torch.float32
    buf[:, :, -16:] = 1.0  # each row's last 16 columns: its real tokens
    assert process.memory_info().rss - before < 128 * 2**20
    assert not buf[:, :, :-16:97].any() and bool((buf[:, :, -16:] == 1.0).all())  # (a sample of the padding: reading it all would copy it)
    small = zeroed((4, 4), torch.empty(0, dtype=torch.bfloat16))
    assert small.dtype == torch.bfloat16 and not small.any() and 32 < LAZY_BYTES


async def test_a_model_on_transformers_forward_is_chunked_through_it_and_answers_the_same(engine_factory, plain_model, tokenizer) -> None:
    engine = engine_factory(prefix_cache_tokens=0, chunk_prefill_above=16, decode="transformers")
    engine._chunks.tokens = lambda decoding, prompt: MIN_CHUNK  # type: ignore[method-assign]
    assert not engine.fast_decode
    assert (await collect(engine, GenerationRequest(prompt=LONG, max_tokens=16)))[0] == reference(plain_model, tokenizer, LONG, 16)


@pytest.mark.parametrize("fmt", ["mkl", "bf16"])
def test_a_chunk_in_a_decode_steps_pass_computes_what_it_and_the_step_compute_apart(tokenizer, fmt: str) -> None:  # type: ignore[no-untyped-def]
    """A chunk of a long prompt run in a decode step's pass (its positions in the step's
    products, its attention over its own buffers) gives the step's rows and the chunk the bits
    each gets in a pass of its own: logits, and every key and value written."""
    import torch

    from server.engine import bf16
    from server.engine.chunked import ChunkedPrefill
    from server.engine.fast_decode import forward_chunk
    from server.engine.kv import RunningBatch
    from server.engine.packed import as_decode_steps, pack_linears
    from server.engine.prefill import prefill_batch

    if fmt == "bf16" and not bf16.available():
        pytest.skip("oneDNN's bf16 products are not in this torch build")
    model = tiny_llama(len(tokenizer))
    pack_linears(model, fmt=fmt)
    prompts = [tokenizer(p)["input_ids"] for p in PROMPTS[:3]]
    long_prompt = tokenizer(LONG)["input_ids"]
    with torch.inference_mode():
        pairs = []
        for _ in range(2):  # the same batch and the same half-prefilled prompt, twice
            batch = RunningBatch(fast_decode=True)
            pre = prefill_batch(model, prompts, pad_id=2, fast=True)
            batch.join(pre.kv, pre.mask, pre.positions, pre.logits.argmax(-1))
            job = ChunkedPrefill(model, long_prompt, fast=True)
            job.advance(40)
            pairs.append((batch, job))
        (together, job_a), (apart, job_b) = pairs
        for size in (16, 3, 40):  # a chunk beside a step: then each alone
            chunk = job_a.next_chunk(size)
            got = together.step(model, None, chunk)
            assert chunk.logits is not None
            job_a.ran(chunk, chunk.logits, 0.0)
            want = apart.step(model)
            alone = job_b.next_chunk(size)
            with as_decode_steps():
                chunk_logits = forward_chunk(model, alone)
            job_b.ran(alone, chunk_logits, 0.0)
            assert torch.equal(got, want) and torch.equal(chunk.logits, chunk_logits)
            together.next_tokens = apart.next_tokens = want.argmax(-1)
        assert job_a.done == job_b.done == 40 + 16 + 3 + 40
        for (k1, v1), (k2, v2) in zip(together.kv(), apart.kv()):
            assert torch.equal(k1, k2) and torch.equal(v1, v2)
        for k1, k2 in zip(job_a.keys + job_a.values, job_b.keys + job_b.values):
            assert torch.equal(k1[:, :, : job_a.done], k2[:, :, : job_b.done])


def test_a_long_chunked_prompt_joins_over_the_buffers_it_was_prefilled_into(tokenizer, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A chunked prompt long enough for a lane of its own joins the batch over the buffers its
    chunks were written into (nothing copied) and decodes as the same prompt copied into a
    cache would; the rows' moves when one leaves never write over the prompt's columns, which
    the prefix cache may hold."""
    import torch

    from server.engine import kv as kv_module
    from server.engine.chunked import ChunkedPrefill
    from server.engine.kv import RunningBatch
    from server.engine.packed import pack_linears
    from server.engine.prefill import prefill_batch

    monkeypatch.setattr(kv_module, "LANE_COLUMNS", 64)  # (the tiny model holds 256 tokens; the rule is the same)
    model = tiny_llama(len(tokenizer))
    pack_linears(model)
    short = [tokenizer(p)["input_ids"] for p in PROMPTS[:2]]
    long_prompt = tokenizer(LONG)["input_ids"]
    with torch.inference_mode():
        batches = []
        for adopt in (True, False):
            batch = RunningBatch(fast_decode=True)
            pre = prefill_batch(model, short, pad_id=2, fast=True)
            batch.join(pre.kv, pre.mask, pre.positions, pre.logits.argmax(-1))
            job = ChunkedPrefill(model, long_prompt, fast=True)
            while (done := job.advance(50)) is None:
                pass
            assert done.buffers is not None
            assert batch.join(done.kv, done.mask, done.positions, done.logits.argmax(-1), done.buffers if adopt else None) == 2
            assert len(batch.lanes) == 2
            held = batch.lanes[1].layers[0].buffers[0].data_ptr() == done.buffers[0][0].data_ptr()
            assert held == adopt
            batches.append((batch, done))
        for _ in range(3):
            got, want = (batch.step(model) for batch, _ in batches)
            assert torch.equal(got, want)
            for batch, _ in batches:
                batch.next_tokens = want.argmax(-1)
        (batch, done), _ = batches
        prompt_keys = done.kv[0][0].clone()
        near = [tokenizer(LONG[: len(LONG) * d // 10])["input_ids"] for d in (9, 8)]  # long enough to share the long prompt's lane
        pre = prefill_batch(model, near, pad_id=2, fast=True)
        assert batch.join(pre.kv, pre.mask, pre.positions, pre.logits.argmax(-1)) == 3 and [lane.size for lane in batch.lanes] == [2, 3]
        batch.keep([0, 1, 3, 4])  # the long prompt leaves; the rows after it stay
        assert torch.equal(done.kv[0][0], prompt_keys)
        batch.step(model)
