"""The engine on a tiny random-weight Llama: batching, cancellation, priorities, limits, sampling."""

from __future__ import annotations

import asyncio
import statistics
from typing import Any

import pytest
import torch

from server.engine import Engine, EngineConfig, EngineOverloaded, GenerationRequest, InvalidRequest, Messages, Priority, bf16
from server.engine.packed import FusedPart, PackedLinear, fused_outputs, pack_linears
from tests.conftest import tiny_llama
from tests.waiting import eventually_async

PROMPTS = [
    "def add(a, b):",
    "The quick brown fox jumps over the lazy dog, and then",
    "Once upon a time",
    "import numpy as np\nimport torch\n\nclass Model:",
    "héllo 你好 🎉",
]


async def collect(engine: Engine, req: GenerationRequest) -> tuple[str, str | None, int]:
    text, finish, tokens = [], None, 0
    async for delta in engine.stream(req):
        text.append(delta.text)
        finish, tokens = delta.finish_reason, delta.tokens
    return "".join(text), finish, tokens


@pytest.fixture(scope="module")
def plain_model(tokenizer):  # type: ignore[no-untyped-def]
    """The tiny model's twin (same seed, same weights) that no engine ever gets: engines repack
    the weights of the model they are given, and the reference must come from transformers alone."""
    return tiny_llama(len(tokenizer))


def reference(model, tokenizer, prompt: str, max_tokens: int) -> str:  # type: ignore[no-untyped-def]
    """What plain `model.generate` produces greedily, stopping where the engine stops (eos)."""
    assert all(type(m) is not PackedLinear for m in model.modules())
    ids = tokenizer(prompt, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=max_tokens, do_sample=False, eos_token_id=[0, 2], pad_token_id=2)
    return str(tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True))


async def wait_until(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    await eventually_async(predicate, "the engine's state", timeout)


async def test_batched_output_equals_plain_generate(engine_factory, plain_model, tokenizer) -> None:
    engine = engine_factory(prefix_cache_tokens=0)
    results = await asyncio.gather(*(collect(engine, GenerationRequest(prompt=p, max_tokens=24)) for p in PROMPTS))
    assert engine.metrics.read("tandem_batch_size_peak") == len(PROMPTS)
    for prompt, (text, finish, tokens) in zip(PROMPTS, results):
        assert text == reference(plain_model, tokenizer, prompt, 24)
        assert finish in ("stop", "length")


async def test_requests_join_and_leave_mid_flight(engine_factory, plain_model, tokenizer) -> None:
    engine = engine_factory(prefix_cache_tokens=0)
    long_task = asyncio.create_task(collect(engine, GenerationRequest(prompt=PROMPTS[1], max_tokens=120)))
    await wait_until(lambda: engine.running == 1)
    short = await asyncio.gather(*(collect(engine, GenerationRequest(prompt=p, max_tokens=8)) for p in PROMPTS[2:4]))
    # the short ones left (their last delta can reach us a moment before the worker drops their rows)
    await wait_until(lambda: engine.running == 1)
    assert not long_task.done()
    long_text = (await long_task)[0]
    assert long_text == reference(plain_model, tokenizer, PROMPTS[1], 120)
    assert [s[0] for s in short] == [reference(plain_model, tokenizer, p, 8) for p in PROMPTS[2:4]]
    assert engine.metrics.read("tandem_batch_size_peak") == 3


async def test_closing_the_stream_frees_the_slot(engine_factory) -> None:
    engine = engine_factory(max_batch_size=1)
    gauge = engine.metrics.registry.get_sample_value
    cancelled = lambda: gauge("tandem_requests_finished_total", {"reason": "cancelled"})  # noqa: E731
    stream = engine.stream(GenerationRequest(prompt=PROMPTS[0], max_tokens=200))
    await stream.__anext__()
    await stream.__anext__()
    assert engine.running == 1 and gauge("tandem_requests_running") == 1
    queued = engine.stream(GenerationRequest(prompt=PROMPTS[1], max_tokens=200))  # no slot: it waits
    waiting = asyncio.ensure_future(queued.__anext__())
    await wait_until(lambda: gauge("tandem_requests_waiting") == 1)
    waiting.cancel()  # its caller leaves while it waits
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await stream.aclose()
    await wait_until(lambda: engine.running == 0 and engine.waiting == 0)
    assert (
        engine.metrics.read("tandem_requests_finished_total", reason="cancelled") == 2 and cancelled() == 2
    )  # the one that never ran counts too
    assert gauge("tandem_requests_running") == gauge("tandem_requests_waiting") == gauge("tandem_requests_prefilling") == 0
    # the engine keeps serving
    assert (await collect(engine, GenerationRequest(prompt=PROMPTS[2], max_tokens=4)))[2] == 4


async def test_interactive_requests_are_admitted_before_chat(engine_factory) -> None:
    engine = engine_factory(max_batch_size=1)
    order: list[str] = []

    async def run(name: str, priority: Priority, max_tokens: int) -> None:
        async for delta in engine.stream(GenerationRequest(prompt=PROMPTS[0], max_tokens=max_tokens, priority=priority)):
            if delta.finish_reason:
                order.append(name)

    blocker = asyncio.create_task(run("blocker", Priority.CHAT, 40))
    await wait_until(lambda: engine.running == 1)
    chat = asyncio.create_task(run("chat", Priority.CHAT, 4))
    await wait_until(lambda: engine.waiting == 1)
    completion = asyncio.create_task(run("completion", Priority.INTERACTIVE, 4))
    await asyncio.gather(blocker, chat, completion)
    assert order == ["blocker", "completion", "chat"]


async def test_full_queue_refuses_with_retry_after(engine_factory) -> None:
    engine = engine_factory(max_batch_size=1, max_waiting=1)
    first = asyncio.create_task(collect(engine, GenerationRequest(prompt=PROMPTS[0], max_tokens=60)))
    await wait_until(lambda: engine.running == 1)
    second = asyncio.create_task(collect(engine, GenerationRequest(prompt=PROMPTS[0], max_tokens=4)))
    await wait_until(lambda: engine.waiting == 1)
    with pytest.raises(EngineOverloaded) as refused:
        await collect(engine, GenerationRequest(prompt=PROMPTS[0], max_tokens=4))
    assert refused.value.retry_after >= 1
    assert "retry after" in str(refused.value)
    assert (await first)[2] == 60 and (await second)[2] == 4  # nothing lost


async def test_stop_string_across_token_boundaries(engine_factory, tokenizer) -> None:
    engine = engine_factory()
    pieces: list[str] = []
    async for delta in engine.stream(GenerationRequest(prompt=PROMPTS[2], max_tokens=30)):
        pieces.append(delta.text)
    # a stop string made of the end of one token's text and the start of the next one's
    i = next(i for i in range(3, len(pieces) - 1) if len(pieces[i]) >= 2 and len(pieces[i + 1]) >= 2)
    stop = pieces[i][-2:] + pieces[i + 1][:2]
    full = "".join(pieces)
    text, finish, _ = await collect(engine, GenerationRequest(prompt=PROMPTS[2], max_tokens=30, stop=(stop,)))
    assert finish == "stop"
    assert text == full[: full.index(stop)]


async def test_max_tokens_and_length_finish(engine_factory) -> None:
    engine = engine_factory()
    text, finish, tokens = await collect(engine, GenerationRequest(prompt=PROMPTS[3], max_tokens=5))
    assert (finish, tokens) == ("length", 5)


async def test_seeded_sampling_is_reproducible_whatever_the_batch(engine_factory) -> None:
    engine = engine_factory()
    req = GenerationRequest(prompt=PROMPTS[0], max_tokens=20, temperature=1.0, top_p=0.9, seed=1234)
    alone = await collect(engine, req)
    together = await asyncio.gather(
        collect(engine, req), collect(engine, GenerationRequest(prompt=PROMPTS[1], max_tokens=20, temperature=1.0))
    )
    assert together[0][0] == alone[0]
    other_seed = await collect(engine, GenerationRequest(prompt=PROMPTS[0], max_tokens=20, temperature=1.0, top_p=0.9, seed=99))
    assert other_seed[0] != alone[0]


@pytest.mark.parametrize(
    ("req", "param"),
    [
        (GenerationRequest(prompt="x", max_tokens=0), "max_tokens"),
        (GenerationRequest(prompt="x", max_tokens=10_000), "max_tokens"),
        (GenerationRequest(prompt="hello " * 400, max_tokens=1), "prompt"),
        (GenerationRequest(prompt="", max_tokens=1), "prompt"),
        (GenerationRequest(prompt=[1, 2, 10**9], max_tokens=1), "prompt"),
        (GenerationRequest(prompt="x", temperature=-1), "temperature"),
        (GenerationRequest(prompt="x", top_p=0), "top_p"),
        (GenerationRequest(prompt=Messages((("user", "hi"),)), max_tokens=1), "prompt"),  # an upstream's prompt, not the engine's
        (GenerationRequest(prompt="def f(", suffix="\n", max_tokens=1), "prompt"),
    ],
)
async def test_invalid_requests_are_refused_and_the_engine_keeps_serving(engine_factory, req, param) -> None:
    engine = engine_factory()
    with pytest.raises(InvalidRequest) as err:
        await collect(engine, req)
    assert err.value.param == param
    assert (await collect(engine, GenerationRequest(prompt="ok", max_tokens=3)))[2] == 3


async def test_prefix_cache_reuses_a_previous_prompt(engine_factory, plain_model, tokenizer) -> None:
    engine = engine_factory(prefix_cache_tokens=4096)
    base = "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n"
    await collect(engine, GenerationRequest(prompt=base, max_tokens=4))
    assert engine.metrics.read("tandem_prefix_cache_hits_total") == 0
    typed = base + "\nprint(fib"  # the next keystrokes
    text = (await collect(engine, GenerationRequest(prompt=typed, max_tokens=12)))[0]
    assert engine.metrics.read("tandem_prefix_cache_hits_total") == 1
    assert engine.metrics.read("tandem_prefix_cache_reused_tokens_total") >= len(tokenizer.encode(base)) - 2
    assert text == reference(plain_model, tokenizer, typed, 12)  # reuse changes nothing in the output


async def test_a_failing_step_fails_its_requests_not_the_engine(engine_factory, monkeypatch) -> None:
    engine = engine_factory()
    from server.engine import engine as engine_module

    real = engine_module.prefill_batch

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(engine_module, "prefill_batch", broken)
    with pytest.raises(Exception, match="out of memory"):
        await collect(engine, GenerationRequest(prompt="x", max_tokens=3))
    monkeypatch.setattr(engine_module, "prefill_batch", real)
    assert (await collect(engine, GenerationRequest(prompt="x", max_tokens=3)))[2] == 3


def test_every_decode_choice_gives_the_same_greedy_output(tiny_model, tokenizer) -> None:
    """transformers' forward and the engine's own step (on its repacked weights) decode the same
    tokens for a batch whose rows join together; the step each reports is the one it uses."""
    outs = {}
    for decode in ("transformers", "eager"):
        engine = Engine(tiny_model, tokenizer, EngineConfig(decode=decode)).start()
        try:

            async def run() -> list[str]:
                return [r[0] for r in await asyncio.gather(*(collect(engine, GenerationRequest(prompt=p, max_tokens=80)) for p in PROMPTS))]

            outs[decode] = asyncio.run(run())
            assert engine.decode_step == decode
            assert engine.metrics.read("tandem_decode_step_info", step=decode) == 1
        finally:
            engine.close()
    assert outs["transformers"] == outs["eager"]


def test_the_bench_baselines_prepare_their_weights_less_and_decode_the_same(tokenizer) -> None:  # type: ignore[no-untyped-def]
    """The bench's before-and-after engines: the eager step on transformers' own Linear weights,
    on packed unfused ones, and the served engine's packed and fused ones."""
    from server.bench.baselines import UnfusedEngine, UnpackedEngine
    from server.engine.packed import FusedPackedLinear, PackedLinear

    outs, kinds = {}, {}
    for engine_class in (UnpackedEngine, UnfusedEngine, Engine):
        model = tiny_llama(len(tokenizer))
        engine = engine_class(model, tokenizer, EngineConfig(prefix_cache_tokens=0)).start()
        try:

            async def run() -> list[str]:
                return [r[0] for r in await asyncio.gather(*(collect(engine, GenerationRequest(prompt=p, max_tokens=40)) for p in PROMPTS))]

            outs[engine_class.__name__] = asyncio.run(run())
            assert engine.decode_step == "eager"
        finally:
            engine.close()
        kinds[engine_class.__name__] = {type(m).__name__ for m in model.modules() if isinstance(m, (PackedLinear, FusedPackedLinear))}
    assert kinds == {"UnpackedEngine": set(), "UnfusedEngine": {"PackedLinear"}, "Engine": {"FusedPackedLinear", "PackedLinear"}}
    assert outs["UnpackedEngine"] == outs["UnfusedEngine"] == outs["Engine"]


def test_an_unknown_decode_choice_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="transformers, eager, compiled.*'fast'"):
        EngineConfig(decode="fast")


def test_the_scheduler_never_mixes_priorities_in_one_prefill() -> None:
    from dataclasses import dataclass

    from server.engine.scheduler import Scheduler

    @dataclass
    class Item:
        name: str
        priority: Priority
        prompt_ids: list[int]
        max_tokens: int = 8
        cancelled: bool = False
        rows: int = 1

    scheduler = Scheduler(max_waiting=8)
    for item in (
        Item("chat-1", Priority.CHAT, [1] * 40),
        Item("completion", Priority.INTERACTIVE, [1] * 450),
        Item("chat-2", Priority.CHAT, [1] * 40),
    ):
        scheduler.submit(item)
    assert [i.name for i in scheduler.take(8, 4096, block=False)] == ["completion"]  # alone: not padded out with chats
    assert [i.name for i in scheduler.take(8, 4096, block=False)] == ["chat-1", "chat-2"]
    assert scheduler.take(8, 4096, block=False) == []


@pytest.mark.parametrize("bias", [False, True])
def test_a_packed_linear_computes_what_the_plain_one_does_for_any_row_count(bias: bool) -> None:
    torch.manual_seed(0)
    plain = torch.nn.Linear(96, 160, bias=bias)
    parent = torch.nn.Sequential(torch.nn.Linear(96, 160, bias=bias))
    parent[0].load_state_dict(plain.state_dict())
    assert pack_linears(parent) == 1
    packed = parent[0]
    assert isinstance(packed, PackedLinear) and not any(p.dim() == 2 for p in packed.parameters())  # the plain weight is gone
    with torch.inference_mode():
        for rows in (1, 2, 7, 16, 33, 600):
            x = torch.randn(rows, 96)
            torch.testing.assert_close(packed(x), plain(x), rtol=1e-5, atol=1e-5)
        x = torch.randn(3, 5, 96)  # batch x sequence, as transformers calls it
        torch.testing.assert_close(packed(x), plain(x), rtol=1e-5, atol=1e-5)
        assert pack_linears(parent) == 1 and parent[0] is packed  # packing twice repacks nothing


def _packed_twin(bias: bool, fmt: str) -> tuple[torch.nn.Linear, torch.nn.Sequential, torch.nn.Module]:
    """A plain Linear [96 -> 160], and a parent holding its twin packed in `fmt` (and that twin)."""
    torch.manual_seed(0)
    plain = torch.nn.Linear(96, 160, bias=bias)
    parent = torch.nn.Sequential(torch.nn.Linear(96, 160, bias=bias))
    parent[0].load_state_dict(plain.state_dict())
    assert pack_linears(parent, fmt=fmt) == 1
    return plain, parent, parent[0]


@pytest.mark.parametrize("bias", [False, True])
def test_an_int8_linear_is_within_int8_error_of_the_plain_one_and_each_row_is_its_own(bias: bool) -> None:
    """Per-row activation scales and exact integer sums: a row's product is the same bits alone
    or in any batch."""
    plain, parent, packed = _packed_twin(bias, "int8")
    assert isinstance(packed, PackedLinear) and packed.packed.dtype == torch.int8 and "int8" in repr(packed)
    with torch.inference_mode():
        for rows in (1, 2, 7, 33, 600):
            x = torch.randn(rows, 96)
            x[0] *= 1000  # one row far larger than the others changes nothing for them
            want = plain(x)
            got = packed(x)
            assert ((got - want).norm(dim=-1) / want.norm(dim=-1)).max() < 0.02
            for row in {0, rows // 2, rows - 1}:
                assert torch.equal(packed(x[row : row + 1]), got[row : row + 1])
        x = torch.randn(3, 5, 96)
        torch.testing.assert_close(packed(x), plain(x), rtol=0.05, atol=0.05)
        assert packed(torch.zeros(2, 96)).abs().max() == (plain.bias.abs().max() if bias else 0)  # a zero row: no division by zero
        assert packed(torch.randn(0, 96)).shape == (0, 160)
        assert pack_linears(parent, fmt="int8") == 1 and parent[0] is packed


def test_an_int8_head_with_split_input_rows_is_as_close_as_its_weights_allow_and_each_row_is_its_own() -> None:
    """int8x2 (the output head under --quant q4): a row that holds one outlier still reaches the
    product with about 15 bits, so the error is the int8 weights' alone, far below int8 inputs'."""
    torch.manual_seed(0)
    plain = torch.nn.Linear(96, 160, bias=False)
    split, single = (torch.nn.Sequential(torch.nn.Linear(96, 160, bias=False)) for _ in range(2))
    for parent in (split, single):
        parent[0].load_state_dict(plain.state_dict())
    assert pack_linears(split, fmt="int8x2") == 1 and pack_linears(single, fmt="int8") == 1 and "int8x2" in repr(split[0])
    q, scale = split[0].packed, split[0]._aux
    on_int8_weights = torch.nn.Linear(96, 160, bias=False)
    with torch.no_grad():
        on_int8_weights.weight.copy_(q.float() * scale[:, None])  # type: ignore[operator]  # packed buffers, typed as module attributes
    with torch.inference_mode():
        x = torch.randn(9, 96)
        x[:, 5] *= 60  # an outlier channel, as activations have them
        want = on_int8_weights(x)
        got = split[0](x)
        error = ((got - want).norm(dim=-1) / want.norm(dim=-1)).max()
        assert error < 1e-3 and error * 20 < ((single[0](x) - want).norm(dim=-1) / want.norm(dim=-1)).max()
        for row in (0, 4, 8):
            assert torch.equal(split[0](x[row : row + 1]), got[row : row + 1])
        assert split[0](torch.zeros(2, 96)).abs().max() == 0 and split[0](torch.randn(0, 96)).shape == (0, 160)


def test_int8_siblings_in_one_matrix_give_what_each_int8_projection_gives() -> None:
    torch.manual_seed(0)
    alone, fused = _Attention((True, False, True)), _Attention((True, False, True))
    fused.load_state_dict(alone.state_dict())
    assert pack_linears(fused, fuse=True, fmt="int8") == 3 and isinstance(fused.q_proj, FusedPart)
    assert pack_linears(alone, fuse=False, fmt="int8") == 3 and isinstance(alone.q_proj, PackedLinear)
    with torch.inference_mode():
        x = torch.randn(5, 96)
        for name in ("q_proj", "k_proj", "v_proj"):  # the same row scale and integer sums: the same bits
            assert torch.equal(getattr(fused, name)(x), getattr(alone, name)(x))


def _on_a_q4_1_grid(rows: int, cols: int) -> torch.Tensor:
    """Weights as a Q4_1 GGUF file holds them: per 32, a scale and a minimum (both exact in bf16)
    and levels 0..15, with 0 and 15 present in every group."""
    groups = rows * cols // 32
    levels = torch.randint(0, 16, (groups, 32)).float()
    levels[:, 0], levels[:, 1] = 0, 15
    scale = torch.rand(groups, 1).mul(0.01).add(0.001).bfloat16().float()
    low = torch.randn(groups, 1).mul(0.05).bfloat16().float()
    return (levels * scale + low).reshape(rows, cols)


@pytest.mark.parametrize("bias", [False, True])
def test_an_int4_linear_gives_back_a_q4_1_files_weights_and_each_row_is_its_own(bias: bool) -> None:
    """4-bit groups of 32 recover a Q4_1 file's levels: the product is the bf16 product on the
    file's own weights; a row's product is the same bits alone or in any batch."""
    torch.manual_seed(0)
    plain = torch.nn.Linear(96, 160, bias=bias)
    with torch.no_grad():
        plain.weight.copy_(_on_a_q4_1_grid(160, 96))
    parent = torch.nn.Sequential(torch.nn.Linear(96, 160, bias=bias))
    parent[0].load_state_dict(plain.state_dict())
    assert pack_linears(parent, fmt="int4") == 1
    packed = parent[0]
    assert isinstance(packed, PackedLinear) and "int4" in repr(packed)
    assert packed.packed.numel() * packed.packed.element_size() <= 96 * 160 // 2  # four bits a weight
    with torch.inference_mode():
        for rows in (1, 2, 7, 33, 600):
            x = torch.randn(rows, 96)
            x[0] *= 1000  # one row far larger than the others changes nothing for them
            want = torch.nn.functional.linear(x.bfloat16().float(), plain.weight, plain.bias)
            got = packed(x)
            assert ((got - want).norm(dim=-1) / want.norm(dim=-1)).max() < 0.01
            for row in {0, rows // 2, rows - 1}:
                assert torch.equal(packed(x[row : row + 1]), got[row : row + 1])
        x = torch.randn(3, 5, 96)
        torch.testing.assert_close(packed(x), plain(x), rtol=0.05, atol=0.05)
        assert packed(torch.randn(0, 96)).shape == (0, 160)
        assert pack_linears(parent, fmt="int4") == 1 and parent[0] is packed


@pytest.mark.skipif(not bf16.available(), reason="oneDNN's bf16 products are not in this torch build")
@pytest.mark.parametrize("bias", [False, True])
def test_a_bf16_linear_is_the_bf16_product_and_each_row_is_its_own_in_any_batch(bias: bool) -> None:
    """oneDNN's bf16 product of bf16-rounded inputs and weights, summed in fp32; a row's product
    is the same bits alone or beside any number of rows (past the 32 rows where oneDNN changes
    its kernel), so a batched answer is one request's answer."""
    plain, _, packed = _packed_twin(bias, "bf16")
    assert isinstance(packed, PackedLinear) and "bf16" in repr(packed)
    assert packed.packed.numel() * packed.packed.element_size() == 96 * 160 * 2  # two bytes a weight
    with torch.inference_mode():
        for rows in (1, 2, 7, 31, 32, 33, 40, 64, 600):
            x = torch.randn(rows, 96)
            x[0] *= 1000  # one row far larger than the others changes nothing for them
            want = torch.nn.functional.linear(x.bfloat16().float(), plain.weight.bfloat16().float(), plain.bias)
            got = packed(x)
            assert ((got - want).norm(dim=-1) / want.norm(dim=-1)).max() < 0.01
            for row in range(rows) if rows <= 64 else (0, 31, 32, 33, rows - 1):
                assert torch.equal(packed(x[row : row + 1]), got[row : row + 1]), (rows, row)
        x = torch.randn(3, 5, 96)
        torch.testing.assert_close(packed(x), plain(x), rtol=0.05, atol=0.05)
        assert packed(torch.randn(0, 96)).shape == (0, 160)


def test_int4_keeps_a_weight_it_cannot_group_in_the_fp32_layout_and_refuses_unknown_formats() -> None:
    torch.manual_seed(0)
    plain = torch.nn.Linear(40, 16)  # 40 inputs: not whole groups of 32
    parent = torch.nn.Sequential(torch.nn.Linear(40, 16))
    parent[0].load_state_dict(plain.state_dict())
    assert pack_linears(parent, fmt="int4") == 1 and "MKL" in repr(parent[0])
    with torch.inference_mode():
        x = torch.randn(3, 40)
        torch.testing.assert_close(parent[0](x), plain(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="unknown weight format 'int3'; choose from mkl, int8, int8x2, int4"):
        pack_linears(torch.nn.Sequential(torch.nn.Linear(32, 8)), fmt="int3")


class _Attention(torch.nn.Module):
    """Sibling projections named as a Llama layer names them; `biases` says which have a bias."""

    def __init__(self, biases: tuple[bool, bool, bool]) -> None:
        super().__init__()
        self.q_proj = torch.nn.Linear(96, 160, bias=biases[0])
        self.k_proj = torch.nn.Linear(96, 32, bias=biases[1])
        self.v_proj = torch.nn.Linear(96, 32, bias=biases[2])


@pytest.mark.parametrize("biases", [(False, False, False), (True, True, True), (True, False, True)])
def test_sibling_projections_packed_as_one_matrix_compute_what_each_plain_one_does(biases: tuple[bool, bool, bool]) -> None:
    torch.manual_seed(0)
    plain, fused = _Attention(biases), _Attention(biases)
    fused.load_state_dict(plain.state_dict())
    assert pack_linears(fused) == 3
    parts = (fused.q_proj, fused.k_proj, fused.v_proj)
    assert all(isinstance(p, FusedPart) for p in parts) and parts[0].fused is parts[1].fused is parts[2].fused
    names = ("q_proj", "k_proj", "v_proj")

    def check(x: torch.Tensor, name: str) -> None:
        torch.testing.assert_close(getattr(fused, name)(x), getattr(plain, name)(x), rtol=1e-5, atol=1e-5)

    with torch.inference_mode():
        for shape in ((1, 96), (7, 96), (3, 5, 96), (600, 96)):
            x = torch.randn(shape)
            for name in names:  # as transformers calls them: one after the other on the same input
                check(x, name)
            assert parts[0].fused._pending is None  # all handed out: nothing kept
            for a, b in zip(fused_outputs(x, *parts), (plain.q_proj(x), plain.k_proj(x), plain.v_proj(x))):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
            check(x, "v_proj")  # alone, out of order, twice
            check(x, "v_proj")
            check(torch.randn(shape), "q_proj")  # another input is never answered from the last one
            check(x, "k_proj")
    with torch.no_grad():  # a tensor changed in place between sibling calls is multiplied again
        x = torch.randn(4, 96)
        check(x, "q_proj")
        x.mul_(2)
        check(x, "k_proj")
        check(x, "v_proj")
    assert pack_linears(fused) == 3 and fused.q_proj is parts[0]  # packing twice repacks nothing


@pytest.mark.parametrize("fmt", ["mkl", "int8", "int4", "bf16"])
def test_the_fast_step_on_packed_weights_matches_transformers_forward(plain_model, tokenizer, fmt: str) -> None:  # type: ignore[no-untyped-def]
    """Rows of different lengths (left-padded), joining and leaving, past the slotted cache's
    growth point: logits and KV agree with transformers' forward on the plain weights (int8:
    on the same int8 weights, within what one int8 step of an activation moves; int4 and bf16: on
    the same 4-bit or bf16 weights, within bf16's rounding of the inputs and outputs)."""
    from server.engine.fast_decode import supports
    from server.engine.kv import RunningBatch
    from server.engine.prefill import prefill_batch

    packed_model = tiny_llama(len(tokenizer))
    assert pack_linears(packed_model, fmt=fmt) > 0
    if fmt != "mkl":
        plain_model = tiny_llama(len(tokenizer))
        pack_linears(plain_model, fuse=False, fmt=fmt)
    tol: dict[str, Any] = {"rtol": 1e-4, "atol": 1e-4} if fmt == "mkl" else {"rtol": 2e-2, "atol": 2e-2}
    layer = packed_model.model.layers[0]
    assert type(layer.self_attn.q_proj) is type(layer.mlp.up_proj) is FusedPart  # q/k/v and gate/up: one matrix each
    assert supports(packed_model) and supports(plain_model)
    hooked = tiny_llama(len(tokenizer))
    hooked.register_forward_hook(lambda *_: None)
    assert not supports(hooked)  # an instrumented model keeps transformers' forward
    prompts = [tokenizer(p)["input_ids"] for p in PROMPTS]
    batches = {}
    for name, model, fast_decode in (("reference", plain_model, False), ("fast", packed_model, True)):
        batch = RunningBatch(fast_decode=fast_decode)
        pre = prefill_batch(model, prompts[:1], pad_id=2)  # one row first: the single-row case
        batch.join(pre.kv, pre.mask, pre.positions, pre.logits.argmax(-1))
        batches[name] = (batch, model)
    for step in range(80):
        if step == 5:  # more rows join, of other lengths
            for batch, model in batches.values():
                pre = prefill_batch(model, prompts[1:], pad_id=2)
                batch.join(pre.kv, pre.mask, pre.positions, pre.logits.argmax(-1))
        if step == 40:  # two leave
            for batch, _ in batches.values():
                batch.keep([0, 2, 4])
        slow, fast = (batch.step(model) for batch, model in batches.values())
        torch.testing.assert_close(fast, slow, **tol)
        for batch, _ in batches.values():
            batch.next_tokens = slow.argmax(-1)
    (ref, _), (fast_batch, _) = batches.values()
    assert ref.size == fast_batch.size == 3
    for (k1, v1), (k2, v2) in zip(ref.kv(), fast_batch.kv()):
        torch.testing.assert_close(k2, k1, **tol)
        torch.testing.assert_close(v2, v1, **tol)


def test_rows_of_very_different_lengths_attend_over_their_own_columns_and_decode_as_transformers_does(
    plain_model, tokenizer, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """A long prompt beside short ones: the step cuts the batch in two runs of rows, each
    attending only over its own columns (not the long row's, in padding); the logits and the
    cache are transformers' forward's on the same weights. Rows of similar lengths stay one run,
    and so do rows whose split would save less attention than the compiled step saves."""
    from server.engine import fast_decode as step_module
    from server.engine.fast_decode import padding_split
    from server.engine.kv import RunningBatch
    from server.engine.prefill import prefill_batch

    similar = torch.ones((3, 12), dtype=torch.long)
    similar[1, :2] = 0
    assert padding_split(similar) is None
    mixed = torch.ones((4, 2000), dtype=torch.long)
    mixed[:3, :1990] = 0  # three short rows, then a long one
    assert padding_split(mixed) == (3, 1990, 0)
    mixed = mixed.flip(0)  # the long row first
    assert padding_split(mixed) == (1, 0, 1990)
    assert padding_split(mixed[:, -200:]) is None  # the same rows 200 columns long: too little to save
    monkeypatch.setattr(step_module, "MIN_SPLIT_SAVING", 0)  # (the tiny model's prompts are short; the rule is the same)
    assert padding_split(mixed[:, -200:]) == (1, 0, 190)

    long_prompt = " ".join(f"item {i} is {i * 7 % 13};" for i in range(20))
    prompts = [tokenizer(p)["input_ids"] for p in (PROMPTS[0], PROMPTS[1], long_prompt)]
    packed_model = tiny_llama(len(tokenizer))
    pack_linears(packed_model)
    batches = []
    for model, fast_decode in ((plain_model, False), (packed_model, True)):
        batch = RunningBatch(fast_decode=fast_decode)
        for prompt in prompts:  # joining one by one: the long row last
            pre = prefill_batch(model, [prompt], pad_id=2)
            batch.join(pre.kv, pre.mask, pre.positions, pre.logits.argmax(-1))
        batches.append((batch, model))
    for _ in range(20):
        assert padding_split(torch.cat([batches[1][0].mask, torch.ones((3, 1), dtype=torch.long)], dim=1)) is not None
        slow, fast = (batch.step(model) for batch, model in batches)
        torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-4)
        for batch, _ in batches:
            batch.next_tokens = slow.argmax(-1)
    for (k1, v1), (k2, v2) in zip(batches[0][0].kv(), batches[1][0].kv()):
        torch.testing.assert_close(k2, k1, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(v2, v1, rtol=1e-4, atol=1e-4)


def test_a_long_row_joins_and_leaves_in_a_lane_of_its_own_without_copying_the_others_and_decodes_as_transformers_does(
    plain_model, tokenizer, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """A row far longer than the running ones gets a cache (a lane) of its own: its join copies
    no other row's cache, a short row leaving copies no byte of the long row's, and short rows
    joining later go into the short rows' lane, in place (a spare row slot), as a row leaving
    it moves the rows after it down in place. Each step's logits and each lane's cache are
    transformers' forward's over one padded cache of the same rows; once the long row leaves,
    one lane is left."""
    from server.engine import kv as kv_module
    from server.engine.kv import RunningBatch
    from server.engine.prefill import prefill_batch

    monkeypatch.setattr(kv_module, "LANE_COLUMNS", 64)  # (the tiny model's prompts are short; the rule is the same)
    assert kv_module.apart(64, 16) and not kv_module.apart(64, 17) and not kv_module.apart(63, 8)
    long_prompt = " ".join(f"item {i} is {i * 7 % 13};" for i in range(40))
    prompts = [tokenizer(p)["input_ids"] for p in (PROMPTS[0], PROMPTS[1], long_prompt, PROMPTS[2])]
    assert len(prompts[2]) >= 4 * max(len(prompts[0]), len(prompts[1]), len(prompts[3])) and len(prompts[2]) >= 64
    packed_model = tiny_llama(len(tokenizer))
    pack_linears(packed_model)
    plain, fast = RunningBatch(fast_decode=False), RunningBatch(fast_decode=True)

    def join(prompt: list[int]) -> tuple[int, int]:
        places = []
        for batch, model in ((plain, plain_model), (fast, packed_model)):
            pre = prefill_batch(model, [prompt], pad_id=2, fast=batch.fast_decode)
            places.append(batch.join(pre.kv, pre.mask, pre.positions, pre.logits.argmax(-1)))
        return places[0], places[1]

    def steps(n: int) -> None:
        for _ in range(n):
            want, got = plain.step(plain_model), fast.step(packed_model)
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
            plain.next_tokens = fast.next_tokens = want.argmax(-1)

    def buffer(batch: RunningBatch, lane: int) -> int:
        return batch.lanes[lane].layers[0].buffers[0].data_ptr()

    with torch.inference_mode():
        join(prompts[0])
        join(prompts[1])
        steps(2)
        short = buffer(fast, 0)
        assert join(prompts[2]) == (2, 2)  # the long row: after the short ones
        assert len(fast.lanes) == 2 and buffer(fast, 0) == short and len(plain.lanes) == 1
        steps(6)
        long_row = buffer(fast, 1)
        assert join(prompts[3]) == (3, 2)  # a short row: into the short rows' lane, before the long one
        assert [lane.size for lane in fast.lanes] == [3, 1] and buffer(fast, 1) == long_row
        assert buffer(fast, 0) == short  # written into a spare row slot of the short rows' cache
        fast_rows = [0, 1, 3, 2]  # the plain batch's rows in the fast batch's order
        for _ in range(6):
            want = plain.step(plain_model)
            got = fast.step(packed_model)
            torch.testing.assert_close(got, want[fast_rows], rtol=1e-4, atol=1e-4)
            plain.next_tokens = want.argmax(-1)
            fast.next_tokens = plain.next_tokens[fast_rows]
        plain.keep([1, 2, 3])
        fast.keep([1, 2, 3])  # the first short row leaves: the long lane is not rewritten
        assert [lane.size for lane in fast.lanes] == [2, 1] and buffer(fast, 1) == long_row
        assert buffer(fast, 0) == short  # the rows after it moved down in place
        fast.keep([0, 1])  # the long row leaves
        plain.keep([0, 2])
        assert len(fast.lanes) == 1
        for _ in range(4):
            want, got = plain.step(plain_model), fast.step(packed_model)
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
            plain.next_tokens = fast.next_tokens = want.argmax(-1)
        for (k1, v1), (k2, v2) in zip(plain.kv(), fast.kv()):
            torch.testing.assert_close(k2, k1[:, :, -k2.shape[2] :], rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(v2, v1[:, :, -v2.shape[2] :], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("lazy_spare", [True, False])
def test_a_cpu_batch_decodes_into_the_buffers_it_joined_without_growing_them(tokenizer, monkeypatch, lazy_spare: bool) -> None:  # type: ignore[no-untyped-def]
    """On a CPU a running batch's cache buffers have LAZY_SPARE spare columns (pages the OS
    backs only once written): 150 decode steps write into the buffers the rows joined, where
    buffers of GROW spare columns (as on a GPU) are copied into new ones along the way."""
    from server.engine import kv as kv_module
    from server.engine.kv import GROW, RunningBatch
    from server.engine.prefill import prefill_batch

    if not lazy_spare:
        monkeypatch.setattr(kv_module, "LAZY_SPARE", 0)
    model = tiny_llama(len(tokenizer))
    pack_linears(model)
    batch = RunningBatch(fast_decode=True)
    with torch.inference_mode():
        pre = prefill_batch(model, [tokenizer(p)["input_ids"] for p in PROMPTS[:3]], pad_id=2, fast=True)
        batch.join(pre.kv, pre.mask, pre.positions, pre.logits.argmax(-1))
        first = batch.lanes[0].layers[0].buffers[0]
        buffers = {first.data_ptr()}
        for _ in range(150):
            batch.next_tokens = batch.step(model).argmax(-1)
            buffers.add(batch.lanes[0].layers[0].buffers[0].data_ptr())
    if lazy_spare:
        assert buffers == {first.data_ptr()} and first.shape[2] >= kv_module.LAZY_SPARE
    else:
        assert len(buffers) >= 150 // GROW


@pytest.mark.parametrize("fmt", ["mkl", "bf16"])
def test_a_batch_of_prompts_prefills_each_prompt_as_it_prefills_alone(tokenizer, fmt: str) -> None:  # type: ignore[no-untyped-def]
    """The engine's prefill of several prompts at once (its own pass, prompts padded on the
    right): each prompt's logits, keys and values are the bits transformers' forward gives it
    alone, laid out left-padded as the running batch holds rows. A prompt of several hundred
    tokens takes bf16 products over several of its wide blocks (bf16.py)."""
    from server.engine.prefill import prefill_batch

    if fmt == "bf16" and not bf16.available():
        pytest.skip("oneDNN's bf16 products are not in this torch build")
    model = tiny_llama(len(tokenizer))
    pack_linears(model, fmt=fmt)
    long_prompt = " ".join(f"item {i} is {i * 7 % 13};" for i in range(60))
    prompts = [tokenizer(p)["input_ids"] for p in (PROMPTS[0], long_prompt, PROMPTS[1], PROMPTS[2])]
    assert len({len(p) for p in prompts}) == len(prompts) and max(len(p) for p in prompts) > 2 * bf16.WIDE_BLOCK
    with torch.inference_mode():
        batch = prefill_batch(model, prompts, pad_id=2, fast=True)
        width = batch.mask.shape[1]
        for row, prompt in enumerate(prompts):
            alone = prefill_batch(model, [prompt], pad_id=2)
            n = len(prompt)
            assert batch.mask[row].tolist() == [0] * (width - n) + [1] * n and int(batch.positions[row]) == n
            assert torch.equal(batch.logits[row], alone.logits[0])
            for (keys, values), (own_keys, own_values) in zip(batch.kv, alone.kv):
                assert torch.equal(keys[row, :, width - n :], own_keys[0]) and torch.equal(values[row, :, width - n :], own_values[0])


@pytest.mark.skipif(not bf16.native(), reason="this CPU has no bf16 products in hardware (--quant auto never picks bf16 here)")
@pytest.mark.parametrize("arrival", ["together", "one_while_the_others_decode"])
def test_bf16_weights_answer_in_a_batch_as_generate_answers_each_prompt_alone(default_model_dir, arrival: str) -> None:  # type: ignore[no-untyped-def]
    """--quant bf16 on the default model: the engine's batched answers (rows of other lengths,
    joining together) are `model.generate`'s for each prompt alone on the same weights, token for
    token, up to a near-tie. Why not always to the end: a row's products and its prefill are the
    bits it gets alone (tested apart), but attention over a padded cache sums in other vector
    lanes, and with bf16 inputs such a last bit can reach a logit, rounded to bf16 by the head:
    where two tokens are within two of its steps, either may come (measured on these prompts:
    margins 0 and 0.125 where they parted). A prompt arriving while the others decode rides
    their steps in chunks (bf16's narrow products, not the wide ones generate's prompt takes):
    the same rule holds for it."""
    from server import models

    served, reference = models.load(str(default_model_dir), "bf16"), models.load(str(default_model_dir), "bf16")
    engine = Engine(served.model, served.tokenizer, EngineConfig(prefix_cache_tokens=0)).start()
    rode: list[int] = []
    prefilled = engine._chunks.prefilled

    def counted(tokens: int, seconds: float, prompt: object) -> None:
        rode.append(tokens)
        prefilled(tokens, seconds, prompt)

    engine._chunks.prefilled = counted  # type: ignore[method-assign]
    tokenizer = served.tokenizer
    questions = ("Explain why the sky is blue.", "Write a poem about the sea.", "What is 2 + 2?", "Describe how to bake bread at home.")
    prompts = [
        tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False) for q in questions
    ]

    async def answer(prompt: str) -> list[int]:
        ids: list[int] = []
        async for delta in engine.stream(GenerationRequest(prompt=prompt, max_tokens=32, logprobs=0)):
            ids.extend(entry.chosen.token_id for entry in delta.logprobs)
        return ids

    async def run() -> list[list[int]]:
        if arrival == "together":
            return await asyncio.gather(*(answer(p) for p in prompts))
        first = [asyncio.create_task(answer(p)) for p in prompts[:-1]]
        await eventually_async(lambda: engine.running == len(first), "the first prompts decoding")
        last = await answer(prompts[-1])
        return [*(await asyncio.gather(*first)), last]

    try:
        answers = asyncio.run(run())
        assert engine.metrics.read("tandem_batch_size_peak") == len(prompts) or arrival != "together"
        assert (sum(rode) == len(tokenizer(prompts[-1])["input_ids"])) == (arrival != "together"), rode  # the last one rode, whole
    finally:
        engine.close()
    eos = sorted(_eos_ids_of(reference))
    whole = 0
    for prompt, got in zip(prompts, answers):
        ids = tokenizer(prompt, return_tensors="pt")
        out = reference.model.generate(
            **ids,
            max_new_tokens=32,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=eos[0],
            output_scores=True,
            return_dict_in_generate=True,
        )
        want = [t for t in out.sequences[0, ids["input_ids"].shape[1] :].tolist() if t not in eos]
        parted = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), None)
        if parted is None:
            assert got == want
            whole += 1
            continue
        best, second = out.scores[parted][0].topk(2).values.tolist()
        assert best - second <= 0.25 and out.scores[parted][0, got[parted]] >= second, (prompt, parted, best, second)
    assert whole >= len(prompts) // 2


def _eos_ids_of(loaded: Any) -> frozenset[int]:
    from server.engine.engine import _eos_ids

    return _eos_ids(loaded.model, loaded.tokenizer)


@pytest.mark.parametrize("quant", ["none", "q4", "w8a8", "bf16"])
def test_the_engine_compiles_its_step_in_the_background_on_the_default_model(default_model_dir, quant: str) -> None:  # type: ignore[no-untyped-def]
    """The eager step serves while torch.compile works; then single-row steps and batched ones
    (rows of other lengths, left-padded) run compiled. In fp32 with the logits of the eager step
    (and so the same greedy text). With int8 products the compiled graph rounds the fp32 ops
    between them in its own way and int8 rounding carries that into other int8 steps (README,
    "int8 products"); bf16 and 4-bit products round their inputs to bf16 likewise: they must
    pick the eager step's token except at near-ties, with a logit difference no larger than
    that noise (a wrong cache column, a stale buffer or a row's padding read as real gives
    other tokens everywhere)."""
    from server import models

    served, reference = models.load(str(default_model_dir), quant), models.load(str(default_model_dir), quant)
    chunks = quant in ("none", "bf16")  # the chunk's graph (minutes more of compiling) in fp32, the exact one, and bf16, the fastest
    config = EngineConfig(prefix_cache_tokens=0, decode="compiled", chunk_prefill_above=256 if chunks else 0)
    engine = Engine(served.model, served.tokenizer, config).start()
    eager = Engine(reference.model, reference.tokenizer, EngineConfig(prefix_cache_tokens=0)).start()
    prompt = served.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Explain why the sky is blue."}], add_generation_prompt=True, tokenize=False
    )
    req = GenerationRequest(prompt=prompt, max_tokens=24)
    try:
        assert not engine.compiled.is_set() and engine.compiled_step is None
        step_in_use = engine.metrics.registry.get_sample_value
        assert step_in_use("tandem_decode_step_info", {"step": "eager"}) == 1
        while_compiling = asyncio.run(collect(engine, req))[0]  # served by the eager step meanwhile
        assert engine.compiled.wait(timeout=900), "compiling did not finish"
        step = engine.compiled_step
        assert step is not None and step.failed is None
        assert step_in_use("tandem_decode_step_info", {"step": "compiled"}) == 1
        assert step_in_use("tandem_decode_step_info", {"step": "eager"}) == 0
        compiled_text, finish, tokens = asyncio.run(collect(engine, req))
        assert step.calls >= tokens - 1 and step.failed is None  # every decode step after the first token ran compiled
        assert while_compiling == asyncio.run(collect(eager, req))[0]
        if quant == "none":
            assert compiled_text == while_compiling
    finally:
        engine.close()
        eager.close()
    # a fresh engine over the same model, given that step (as `tandem bench` makes its fresh engines): compiled at once
    again = Engine(served.model, served.tokenizer, EngineConfig(prefix_cache_tokens=0, decode="compiled"), compiled_step=step).start()
    try:
        assert again.compiled.is_set() and again.compile_state == "done" and again.decode_step == "compiled"
        calls = step.calls
        assert asyncio.run(collect(again, req))[0] == compiled_text and step.calls >= calls + tokens - 1
    finally:
        again.close()
    one = [served.tokenizer(prompt)["input_ids"]]
    several = [served.tokenizer(p)["input_ids"] for p in (prompt, "def fibonacci(n):", "Once upon a time, in a land far away,")]
    for prompts in (one, several):  # the one-row graph, then the batched one
        _compiled_steps_agree_with_eager_ones(served.model, reference.model, prompts, step, quant)
    if chunks:
        _compiled_chunk_steps_agree_with_eager_ones(served.model, reference.model, several, step, quant)
    else:
        assert step.beside is None  # an engine that does not chunk compiles no chunk step


def _agree(compiled: torch.Tensor, eager: torch.Tensor, quant: str, disagreements: list[float]) -> None:
    """fp32: the same logits; otherwise each row's margin wherever the two pick other tokens."""
    if quant == "none":
        torch.testing.assert_close(compiled, eager, rtol=1e-3, atol=1e-3)
    for row in range(compiled.shape[0]):
        if int(compiled[row].argmax()) != int(eager[row].argmax()):
            top = eager[row].topk(2).values
            disagreements.append(float(top[0] - top[1]))


def _compiled_steps_agree_with_eager_ones(served: Any, reference: Any, prompts: list[list[int]], step: Any, quant: str) -> None:
    from server.engine import kv
    from server.engine.kv import GROW, RunningBatch
    from server.engine.prefill import prefill_batch

    batches = []
    lazy_spare, kv.LAZY_SPARE = kv.LAZY_SPARE, 0  # buffers that grow every GROW columns, as on a GPU
    try:
        for model in (served, reference):
            pre = prefill_batch(model, prompts, pad_id=0)
            batch = RunningBatch(fast_decode=True)
            batch.join(pre.kv, pre.mask, pre.positions, pre.logits.argmax(-1))
            batches.append(batch)
    finally:
        kv.LAZY_SPARE = lazy_spare
    calls, steps = step.calls, 2 * GROW + 8
    disagreements, mean_diffs = list[float](), list[float]()
    for _ in range(steps):  # past the slotted cache's growth points, twice: the compiled graph takes each new buffer
        compiled_logits = batches[0].step(served, step)
        eager_logits = batches[1].step(reference)
        _agree(compiled_logits, eager_logits, quant, disagreements)
        mean_diffs.append(float((compiled_logits - eager_logits).abs().mean()))
        for batch in batches:
            batch.next_tokens = eager_logits.argmax(-1)
    assert step.calls == calls + steps and step.failed is None
    # measured (w8a8, whose int8 rounding of each row carries a last bit furthest): at one row 11 of
    # 136 steps disagree, at margins under 0.85, mean |difference| 0.41 (median); at three rows 42
    # of 408 row-steps, margins under 1.9 (each batch's cache drifts from the other's), 0.58
    widest = 2.0 if quant == "w8a8" else 1.0
    assert len(disagreements) <= len(prompts) * steps // 8 and all(margin < widest for margin in disagreements), disagreements
    assert statistics.median(mean_diffs) < 1.0


def _compiled_chunk_steps_agree_with_eager_ones(served: Any, reference: Any, prompts: list[list[int]], step: Any, quant: str) -> None:
    """A long prompt's chunks in the steps' passes (`CompiledStep.beside`): the rows' logits and
    the chunk's as the eager pass computes them, within the same noise as the plain step's."""
    with torch.inference_mode():  # (as on the engine's worker: the compiled graphs guard on it)
        _chunk_steps(served, reference, prompts, step, quant)


def _chunk_steps(served: Any, reference: Any, prompts: list[list[int]], step: Any, quant: str) -> None:
    from server.engine.chunked import ChunkedPrefill
    from server.engine.kv import RunningBatch
    from server.engine.prefill import prefill_batch

    long_prompt = [token for prompt in prompts for token in prompt] * 4
    runs = []
    for model in (served, reference):
        pre = prefill_batch(model, prompts, pad_id=0)
        batch = RunningBatch(fast_decode=True)
        batch.join(pre.kv, pre.mask, pre.positions, pre.logits.argmax(-1))
        runs.append((model, batch, ChunkedPrefill(model, long_prompt, fast=True)))  # its first chunk at column 0 (a graph of its own)
    calls, disagreements = step.beside.calls, list[float]()
    while runs[0][2].left > 0:
        logits = []
        for (model, batch, job), forward in zip(runs, (step, None)):
            chunk = job.next_chunk(6)
            rows = batch.step(model, forward, chunk)
            assert chunk.logits is not None
            job.ran(chunk, chunk.logits, 0.01)
            logits.append(torch.cat([rows, chunk.logits]))
        _agree(logits[0], logits[1], quant, disagreements)
        for _, batch, _ in runs:
            batch.next_tokens = logits[1][: len(prompts)].argmax(-1)
    steps = step.beside.calls - calls
    widths = [min(6, len(long_prompt) - start) for start in range(0, len(long_prompt), 6)]
    assert steps == sum(width > 1 for width in widths) >= 3 and step.beside.failed is None  # every chunk compiled, the first too
    widest = 2.0 if quant == "w8a8" else 1.0
    assert len(disagreements) <= (len(prompts) + 1) * steps // 8 and all(margin < widest for margin in disagreements), disagreements


@pytest.mark.parametrize("poison", ["nan_logits", "overflowing_temperature"])
async def test_a_poisoned_row_fails_alone_and_its_neighbours_decode_as_in_a_clean_run(engine_factory, monkeypatch, poison) -> None:
    """One row's logits turn NaN (or its temperature overflows them) a few steps into a running batch:
    that stream ends with an error; every other row (greedy and seeded) gives exactly its clean-run tokens."""
    from server.engine import engine as engine_module
    from server.engine.sampling import SamplingParams

    engine = engine_factory(prefix_cache_tokens=0)
    neighbours = [GenerationRequest(prompt=p, max_tokens=24) for p in PROMPTS[:3]]
    neighbours.append(GenerationRequest(prompt=PROMPTS[3], max_tokens=24, temperature=1.0, top_p=0.9, seed=7))
    victim = GenerationRequest(prompt=PROMPTS[4], max_tokens=24, temperature=1.0, seed=666)
    clean = await asyncio.gather(*(collect(engine, r) for r in neighbours + [victim]))

    marked: list[SamplingParams] = []
    real_build, real_sample = SamplingParams.build, engine_module.sample_next

    def build(temperature: float, top_p: float, seed: int | None, *more: Any) -> SamplingParams:
        params = real_build(temperature, top_p, seed, *more)
        if seed == 666:
            marked.append(params)
        return params

    def poisoned(logits: torch.Tensor, params: list[SamplingParams]) -> list[int | None]:
        for row, p in enumerate(params):
            if any(p is m for m in marked) and p.generator is not None and p.generator.initial_seed() == 666:
                uses = getattr(p, "uses", 0) + 1
                p.uses = uses  # type: ignore[attr-defined]
                if uses > 3 and poison == "nan_logits":
                    logits[row] = float("nan")
                elif uses > 3:
                    p.temperature = 1e-45  # past the door's checks: logits / T overflow to inf, softmax to nan
        return real_sample(logits, params)

    monkeypatch.setattr(SamplingParams, "build", staticmethod(build))
    monkeypatch.setattr(engine_module, "sample_next", poisoned)
    results = await asyncio.gather(*(collect(engine, r) for r in neighbours + [victim]), return_exceptions=True)
    assert marked, "the victim was never built"
    assert isinstance(results[-1], Exception) and "not finite" in str(results[-1])
    assert results[:-1] == clean[:-1]
    monkeypatch.setattr(engine_module, "sample_next", real_sample)
    assert (await collect(engine, GenerationRequest(prompt="ok", max_tokens=3)))[2] == 3


@pytest.mark.parametrize("temperature", [1e-30, 5e-324, 1e-6])
async def test_a_vanishing_temperature_decodes_greedily_instead_of_overflowing(engine_factory, temperature: float) -> None:
    engine = engine_factory(prefix_cache_tokens=0)
    greedy = await collect(engine, GenerationRequest(prompt=PROMPTS[0], max_tokens=12))
    assert await collect(engine, GenerationRequest(prompt=PROMPTS[0], max_tokens=12, temperature=temperature, seed=3)) == greedy


def test_retry_after_follows_the_measured_rate_not_the_worst_case() -> None:
    from server.engine.scheduler import Scheduler

    class Waiting:
        def __init__(self, max_tokens: int) -> None:
            self.priority, self.cancelled, self.prompt_ids, self.max_tokens = Priority.CHAT, False, [1, 2], max_tokens
            self.rows = 1

    scheduler = Scheduler(max_waiting=4)
    for _ in range(4):
        scheduler.submit(Waiting(max_tokens=1000))
    scheduler.tokens_per_second = 100.0
    with pytest.raises(EngineOverloaded) as cold:  # nothing finished yet: 4 answers of a guessed 64 tokens at 100 tok/s
        scheduler.submit(Waiting(max_tokens=1000))
    assert cold.value.retry_after == 3
    for _ in range(20):  # then 20 requests finish within a second: the queue of 4 drains in well under one
        scheduler.note_finished(12)
    with pytest.raises(EngineOverloaded) as measured:
        scheduler.submit(Waiting(max_tokens=1000))
    assert measured.value.retry_after == 1


async def test_a_refused_request_is_told_to_come_back_about_when_the_queue_has_drained(engine_factory) -> None:
    engine = engine_factory(max_batch_size=2, max_waiting=4)
    for p in PROMPTS:  # a measured rate
        await collect(engine, GenerationRequest(prompt=p, max_tokens=3))
    running = [asyncio.create_task(collect(engine, GenerationRequest(prompt=PROMPTS[i], max_tokens=40))) for i in range(2)]
    await wait_until(lambda: engine.running == 2)
    running += [asyncio.create_task(collect(engine, GenerationRequest(prompt=PROMPTS[i % 5], max_tokens=40))) for i in range(4)]
    await wait_until(lambda: engine.waiting == 4)
    with pytest.raises(EngineOverloaded) as refused:
        await collect(engine, GenerationRequest(prompt="x", max_tokens=3))
    started = asyncio.get_running_loop().time()
    await asyncio.gather(*running)
    drained = asyncio.get_running_loop().time() - started
    assert 1 <= refused.value.retry_after <= max(3, 3 * drained)  # of the order of the real drain, never the 60 s cap
