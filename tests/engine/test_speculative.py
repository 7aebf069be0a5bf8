"""Prompt-lookup speculative decoding on the default model: greedy output is the same token for
token with speculation on and off (one row, ragged rows joining mid-flight, stop strings and
max_tokens inside accepted runs), drafts are accepted on code that repeats itself, sampled rows
never speculate; and the background compile waits for an idle engine and runs at the lowest priority."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable

import pytest
import torch

from server import models
from server.engine import Engine, EngineConfig, GenerationRequest, Priority
from server.engine import engine as engine_module
from server.engine.kv import RunningBatch
from server.engine.speculative import OPENING_GAIN, Gate, PromptLookup, accepted_prefix
from tests.waiting import eventually_async, stays_async

pytestmark = pytest.mark.default_model

REPETITIVE = (
    "def area_square(side):\n    return side * side\n\n\n"
    "def area_rectangle(width, height):\n    return width * height\n\n\n"
    "def perimeter_square(side):\n    return 4 * side\n\n\n"
    "def perimeter_rectangle(width, height):\n    return 2 * (width + height)\n\n\n"
    "def area_"
)
CLASS = (
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n\n"
    '    def __repr__(self):\n        return f"Point({self.x}, {self.y})"\n\n\n'
    "class Size:\n    def __init__(self, width, height):\n"
)
PROSE = "The history of the bicycle begins in the early nineteenth century, when"
LOOP = "for i in range(10):\n    print(i)\nfor j in range(10):\n    print(j)\nfor k in range(10):\n"
PROMPTS = [REPETITIVE, CLASS, PROSE, LOOP]


def engine_pair(model_dir, quant: str):  # type: ignore[no-untyped-def]
    """The same model twice (each engine repacks its own copy): speculation on, and off."""
    on_model, off_model = models.load(str(model_dir), quant), models.load(str(model_dir), quant)
    on = Engine(on_model.model, on_model.tokenizer, EngineConfig(prefix_cache_tokens=0)).start()
    off = Engine(off_model.model, off_model.tokenizer, EngineConfig(prefix_cache_tokens=0, speculative=False)).start()
    yield on, off
    on.close()
    off.close()


@pytest.fixture(scope="module")
def engines(default_model_dir):  # type: ignore[no-untyped-def]
    """As the default model is served by default (`--quant auto`: q4 on a CPU)."""
    yield from engine_pair(default_model_dir, "q4")


@pytest.fixture(scope="module")
def fp32_engines(default_model_dir):  # type: ignore[no-untyped-def]
    yield from engine_pair(default_model_dir, "none")


@pytest.fixture(scope="module")
def int8_engines(default_model_dir):  # type: ignore[no-untyped-def]
    """`--quant w8a8`: a last-bit difference in the fp32 ops between products can move an input
    to another int8 step, so verification must attend with the one-row step's kernel to match."""
    yield from engine_pair(default_model_dir, "w8a8")


async def generate(
    engine: Engine, req: GenerationRequest, after: Callable[[], bool] | None = None, progress: list[int] | None = None
) -> tuple[str, str | None, int]:
    """The request's text, finish and tokens; submitted once `after` holds, and counting the tokens
    streamed so far into `progress[0]` (so that other rows can join when it is that far)."""
    if after is not None:
        await eventually_async(after, "the leading row to have decoded far enough", timeout=120)
    text, finish, tokens = [], None, 0
    async for delta in engine.stream(req):
        text.append(delta.text)
        finish, tokens = delta.finish_reason, delta.tokens
        if progress is not None:
            progress[0] = tokens
    return "".join(text), finish, tokens


def interactive(prompt: str, max_tokens: int = 48, **kw: object) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, max_tokens=max_tokens, priority=Priority.INTERACTIVE, **kw)  # type: ignore[arg-type]


def test_prompt_lookup_proposes_what_followed_the_latest_earlier_occurrence() -> None:
    lookup = PromptLookup([5, 1, 2, 3, 9, 1, 2, 3, 7, 1, 2, 3])
    assert lookup.draft(2) == [7, 1]  # the latest earlier "1 2 3" is followed by 7, not 9
    lookup.append(7)
    assert lookup.draft(8) == [1, 2, 3, 7]  # "2 3 7" ended at index 8; what followed runs on into the newest tokens
    assert PromptLookup([4, 5, 6]).draft(8) == []
    assert PromptLookup([4, 5, 4]).draft(8) == [5, 4]  # falls back to the one-token suffix
    assert accepted_prefix([1, 2, 3], [1, 2, 9, 4]) == 2 and accepted_prefix([1], [None, 1]) == 0


def test_the_gate_follows_what_the_drafts_would_have_gained_verified_or_not() -> None:
    gate = Gate()
    assert gate.gain == OPENING_GAIN  # a new row verifies its first drafts, and so is measured
    for _ in range(6):
        gate.record(0)  # verified drafts the model rejected
    assert gate.gain < 0.5
    gate.watch([1, 2, 3])
    gate.watch([9, 9, 9])  # one draft is scored at a time
    for token in (1, 2, 3):
        gate.token(token)  # the plain steps gave what the unverified draft said: all three would have been accepted
    assert not gate.shadow and gate.gain > 0.5
    gate.watch([4, 5])
    gate.token(4)
    gate.token(7)  # one of two
    assert not gate.shadow
    before = gate.gain
    gate.token(1)  # nothing being scored: no change
    assert gate.gain == before


async def test_rows_that_are_not_copying_stop_verifying(engines) -> None:  # type: ignore[no-untyped-def]
    """Prose finds one-token matches in its prompt that the model rarely follows: after its first
    rejected drafts the row decodes plainly (a verification costs more than a plain step), while a
    row copying code keeps verifying."""
    on, _ = engines
    steps, drafted = on.metrics.read("tandem_speculative_steps_total"), on.metrics.read("tandem_speculative_drafted_tokens_total")
    await generate(on, interactive(PROSE, 48))
    assert on.metrics.read("tandem_speculative_steps_total") - steps <= 12
    steps = on.metrics.read("tandem_speculative_steps_total")
    await generate(on, interactive(REPETITIVE, 48))
    assert (
        on.metrics.read("tandem_speculative_steps_total") - steps >= 3
        and on.metrics.read("tandem_speculative_drafted_tokens_total") > drafted
    )


@pytest.mark.parametrize("pair", ["engines", "fp32_engines", "int8_engines"])
async def test_greedy_output_is_the_same_with_speculation_at_one_row(pair: str, request: pytest.FixtureRequest) -> None:
    on, off = request.getfixturevalue(pair)
    before = on.metrics.read("tandem_speculative_accepted_tokens_total")
    for prompt in PROMPTS:
        steps = on.metrics.read("tandem_batch_size_count")
        assert await generate(on, interactive(prompt, 48)) == await generate(off, interactive(prompt, 48))
        assert (
            on.metrics.read("tandem_batch_size_count") - steps < 48 or prompt == PROSE
        )  # accepted drafts saved steps where the text repeats itself
    assert on.metrics.read("tandem_speculative_accepted_tokens_total") - before > 20
    assert off.metrics.read("tandem_speculative_steps_total") == 0


async def test_ragged_rows_joining_mid_flight_decode_as_without_speculation(fp32_engines, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Rows of different lengths join at different times, some speculating and some not (a chat
    row, one that opts out, a seeded sampled one): rows accept different numbers of drafts in one
    step, which leaves holes in the others' masks; every row still gets its plain tokens.

    In fp32: the two engines batch the rows differently (speculation changes when each row
    finishes), so a row's attention runs over other shapes, which round its last bits otherwise.
    fp32 keeps those bits below anything that moves a token; q4 rounds every input to bf16, which
    can carry one into a sampled token (a CI machine drew another word at temperature 0.8). The
    bookkeeping under test (holes, positions, masks, what each row accepts) is the same for every
    format, and the one-row test above checks q4 and w8a8 token for token."""
    on, off = fp32_engines
    ragged = []
    real_accept = RunningBatch.accept

    def accept(self: RunningBatch, accepted: list[int], next_tokens: list[int]) -> None:
        if len(set(accepted)) > 1:
            ragged.append(list(accepted))
        real_accept(self, accepted, next_tokens)

    monkeypatch.setattr(RunningBatch, "accept", accept)
    reqs = [
        (interactive(REPETITIVE, 40), 0),  # the leading row; each other joins once it has streamed that many tokens
        (interactive(PROSE, 24), 0),
        (GenerationRequest(prompt=CLASS, max_tokens=32, speculative=True), 8),  # chat priority, asked to speculate
        (interactive(LOOP, 30, speculative=False), 16),
        (interactive(CLASS, 36, temperature=0.8, seed=11), 24),
    ]
    monkeypatch.setattr(on, "spec_max_rows", len(reqs))
    spec_steps = on.metrics.read("tandem_speculative_steps_total")

    async def run(engine: Engine) -> list[tuple[str, str | None, int]]:
        lead: list[int] = [0]

        def streamed(n: int) -> Callable[[], bool]:
            return lambda: lead[0] >= n

        first, *rest = reqs
        return await asyncio.gather(generate(engine, first[0], progress=lead), *(generate(engine, r, streamed(n)) for r, n in rest))

    got, want = await run(on), await run(off)
    assert got == want
    assert on.metrics.read("tandem_speculative_steps_total") > spec_steps and ragged, (
        "no step where rows accepted different numbers of drafts"
    )


async def test_stop_strings_and_max_tokens_inside_accepted_runs(engines) -> None:  # type: ignore[no-untyped-def]
    on, off = engines
    full, _, _ = await generate(off, interactive(REPETITIVE, 48))
    stops = [full[10:14], full[23:26], "\n\n\n"]
    for stop in stops:
        req = interactive(REPETITIVE, 48, stop=(stop,))
        assert await generate(on, req) == await generate(off, req)
    for max_tokens in (1, 2, 5, 9, 17):
        req = interactive(REPETITIVE, max_tokens)
        got = await generate(on, req)
        assert got == await generate(off, req) and got[2] == max_tokens


async def test_sampled_rows_and_large_batches_never_speculate(engines, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    on, _ = engines
    steps = on.metrics.read("tandem_speculative_steps_total")
    await generate(on, interactive(REPETITIVE, 24, temperature=0.7, seed=3, speculative=True))
    await generate(on, GenerationRequest(prompt=REPETITIVE, max_tokens=12))  # chat priority: off unless asked
    assert on.metrics.read("tandem_speculative_steps_total") == steps
    sizes = []
    real_verify = RunningBatch.verify

    def verify(self: RunningBatch, model: torch.nn.Module, drafts: list[list[int]]):  # type: ignore[no-untyped-def]
        sizes.append(self.size)
        return real_verify(self, model, drafts)

    monkeypatch.setattr(RunningBatch, "verify", verify)
    monkeypatch.setattr(on, "spec_max_rows", 2)
    await asyncio.gather(*(generate(on, interactive(p, n)) for p, n in ((REPETITIVE, 24), (CLASS, 4), (LOOP, 24))))
    assert sizes and max(sizes) <= 2  # three rows decode plainly until one has finished


# ----- the background compile ------------------------------------------------------------------


def _python_heavy_compile(progress: list[int], release: threading.Event):  # type: ignore[no-untyped-def]
    """Stands in for torch.compile until the test releases it (so the stream beside it is
    measured while it really runs, however fast the machine): bursts of Python holding the GIL
    between waits, as tracing does between the compiler subprocesses it waits for; records
    inductor's compile_threads as it finds it."""

    def compile_one_row(model: object, beside: bool = True) -> None:
        import torch._inductor.config as inductor_config

        progress.append(inductor_config.compile_threads or 0)
        deadline = time.monotonic() + 120
        while not release.is_set() and time.monotonic() < deadline:
            for _ in range(2000):
                progress.append(len(progress))
            del progress[1:]
            release.wait(0.001)  # the compile's own wait (a compiler subprocess), GIL released

    return compile_one_row


async def test_the_background_compile_waits_for_an_idle_engine_and_runs_at_the_lowest_priority(engines, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Deferred while a request runs; then niced (19, inherited by the compiler processes it
    starts), with inductor compiling in that thread, not a pool of processes at normal priority;
    a stream beside it keeps the inter-token latency of an engine that compiles nothing (with a
    wide margin: timings on a shared machine are for `tandem bench`, not tests)."""
    _, off = engines
    progress: list[int] = []
    release = threading.Event()
    monkeypatch.setattr(engine_module, "compile_step", _python_heavy_compile(progress, release))
    monkeypatch.setattr(engine_module, "COMPILE_IDLE_SECONDS", 0.3)
    plain = await _gaps(off, 24)
    engine = Engine(off.model, off.tokenizer, EngineConfig(prefix_cache_tokens=0, decode="compiled")).start()
    try:
        busy = asyncio.create_task(generate(engine, GenerationRequest(prompt=PROSE, max_tokens=12)))
        await stays_async(
            lambda: busy.done() or (engine.compile_state == "deferred" and not progress), "no compiling while a request runs", 0.5
        )
        await busy
        await eventually_async(lambda: progress, "the compile starting on an idle engine", 30)
        assert progress[0] == 1 and engine.compile_state == "compiling"
        if hasattr(os, "setpriority"):
            assert engine.compile_nice == 19
            compile_thread = next(t for t in threading.enumerate() if t.name == "tandem-compile")
            assert compile_thread.native_id is not None and os.getpriority(os.PRIO_PROCESS, compile_thread.native_id) == 19
        gaps = await _gaps(engine, 24)
        assert not engine.compiled.is_set()  # the stream ran beside the compile
        assert _median(gaps) < 2.0 * _median(plain) + 0.02
        release.set()
        assert engine.compiled.wait(timeout=60) and engine.compile_state == "done"
    finally:
        release.set()
        engine.close()


async def _gaps(engine: Engine, tokens: int) -> list[float]:
    gaps, last = [], None
    async for _ in engine.stream(GenerationRequest(prompt=PROSE, max_tokens=tokens)):
        now = time.perf_counter()
        if last is not None:
            gaps.append(now - last)
        last = now
    return gaps


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]
