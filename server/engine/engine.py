"""The shared streaming engine: one model, one worker thread, continuous batching.

Its whole public interface is `stream(request)`, an async generator of `Delta`s. Requests join
the running batch at the next step after they arrive and leave it at the step after they finish
or their stream is closed, so a short completion never waits for a long chat answer to end.

The torch loop runs in one worker thread (torch releases the GIL inside its kernels), and hands
deltas to each caller's event loop with `call_soon_threadsafe`; asyncio never blocks on torch.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import torch

from .chunked import MIN_CHUNK, ChunkBudget, ChunkedPrefill
from .detokenize import IncrementalDetokenizer
from .fast_decode import COMPILED_ROWS, Chunk, CompiledStep, compile_step, supports
from .grammar import Constraint, Grammars
from .kv import RunningBatch
from .metrics import EngineMetrics
from .packed import pack_linears
from .prefill import Prefilled, prefill_batch, prefill_on_prefix, row_kv
from .prefix_cache import PrefixCache
from .sampling import SamplingParams, logprobs_of, sample_next
from .scheduler import Scheduler
from .speculative import DRAFT_TOKENS, SPEC_MAX_ROWS, Gate, PromptLookup, accepted_prefix
from .token_text import TokenText
from .types import (
    DECODE_STEPS,
    Candidate,
    ContextOverflow,
    Delta,
    EngineClosed,
    EngineConfig,
    EngineError,
    EngineOverloaded,
    GenerationRequest,
    InvalidRequest,
    Priority,
    PromptEcho,
    TokenLogprob,
)

log = logging.getLogger("tandem.engine")

COMPILE_NICE = 19  # the compile thread's nice value (Linux: per thread, inherited by the compiler processes it starts)
COMPILE_IDLE_SECONDS = 1.0  # the compile starts once the engine has been idle this long
MAX_LOGPROBS = 20  # alternatives per token, as OpenAI and vLLM allow
RIDE_TOKENS = 128  # chat prompt tokens arriving together that ride the running rows' steps as chunks (_chunked)


class _Sequence:
    """One answer of a request as the worker sees it. Written by the worker, except `cancelled`.
    A request for n answers is one of these waiting (the first, with the others as its `forks`)
    and n rows once its prompt is prefilled; all n send to the first one's queue."""

    def __init__(
        self,
        req: GenerationRequest,
        prompt_ids: list[int],
        tokenizer: Any,
        loop: asyncio.AbstractEventLoop,
        eos_ids: frozenset[int],
        speculative: bool = False,
        index: int = 0,
        queue: asyncio.Queue[Delta | BaseException] | None = None,
        grammar: Constraint | None = None,
    ) -> None:
        self.req = req
        self.index = index
        self.priority = req.priority
        self.prompt_ids = prompt_ids
        self.max_tokens = req.max_tokens
        self.ends = eos_ids | frozenset(req.controls.stop_token_ids) if req.controls.stop_token_ids else eos_ids
        seed = req.seed + index if req.seed is not None else None  # each answer its own stream, reproducible (as vLLM seeds n > 1)
        self.sampling = SamplingParams.build(req.temperature, req.top_p, seed, req.controls, prompt_ids, self.ends, grammar)
        self.detok = IncrementalDetokenizer(tokenizer, req.stop)
        self.loop = loop
        self.queue: asyncio.Queue[Delta | BaseException] = queue if queue is not None else asyncio.Queue()
        self.forks: list[_Sequence] = []
        self.pending_logprobs: list[TokenLogprob] = []  # tokens whose text has not been sent yet
        self.cancelled = False
        self.done = False
        self.generated = 0
        self.submitted = time.monotonic()
        self.last_token = 0.0
        wants = req.speculative if req.speculative is not None else req.priority == Priority.INTERACTIVE
        # Greedy rows without controls or logprobs only: a sampled row would need rejection sampling
        # to keep its distribution, and drafts are verified against the raw scores.
        plain = self.sampling.greedy and not self.sampling.controlled and req.logprobs is None
        self.lookup = PromptLookup(prompt_ids) if speculative and wants and plain else None
        self.gate = Gate()  # whether its drafts have been paying lately

    @property
    def rows(self) -> int:
        """The batch rows it takes once prefilled."""
        return 1 + len(self.forks)

    @property
    def members(self) -> list[_Sequence]:
        return [self, *self.forks]

    def send(self, item: Delta | BaseException) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the caller's loop is gone; nobody is listening
            self.cancelled = True


class Engine:
    """Takes the model over: unless it decodes through transformers' forward, its fp32 Linear
    weights are repacked in place (`prepare_weights`), so the caller should not keep using it for
    anything but this engine (it still works through transformers' forward, with the same results)."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        config: EngineConfig | None = None,
        metrics: EngineMetrics | None = None,
        compiled_step: CompiledStep | None = None,
    ) -> None:
        """`compiled_step`: the step another engine over this same model compiled (`tandem bench`
        measures fresh engines as served, each without minutes of compiling of its own)."""
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = config or EngineConfig()
        self.fast_decode = self.config.decode != "transformers" and supports(model)
        self.packed_linears = self.prepare_weights(model) if self.fast_decode else 0
        self.metrics = metrics or EngineMetrics()
        self.context_length = self.config.context_length or int(getattr(model.config, "max_position_embeddings", 2048))
        self.vocab_size = int(model.config.vocab_size)  # type: ignore[union-attr,arg-type]  # transformers types config as Tensor | Module
        self.eos_ids = _eos_ids(model, tokenizer)
        self.token_text = TokenText(tokenizer)
        self.grammars = Grammars(tokenizer, self.vocab_size, self.eos_ids)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_ids)
        self._scheduler = Scheduler(self.config.max_waiting, on_cancelled=lambda seq: self._finish(seq, "cancelled"))
        self._prefix = PrefixCache(self.config.prefix_cache_tokens)
        self._batch = RunningBatch(self.fast_decode)
        self.speculative = self.config.speculative and self.fast_decode  # verification is the fast step's
        self.spec_max_rows = SPEC_MAX_ROWS  # (the benchmark lifts it to measure where speculation stops paying)
        self.draft_tokens = DRAFT_TOKENS
        self._plain_seconds: float | None = None  # EMA of a plain step's time, at batch sizes that may speculate
        self._verify_seconds: float | None = None  # EMA of a verification step's time, likewise
        self._rows: list[_Sequence] = []
        self._chunking: list[tuple[_Sequence, ChunkedPrefill]] = []  # prompts being prefilled in chunks (_chunked), in arrival order
        self._chunks = ChunkBudget()
        self._beside: tuple[ChunkedPrefill, Chunk] | None = None  # the next chunk, to run beside the next decode step
        self._chunk_ran = False  # whether this worker iteration ran a chunk (alone or in its step's pass)
        self._prefilling = 0  # requests taken from the queue and not yet in the batch (or finished)
        self._closing = False
        self._thread: threading.Thread | None = None
        self.compiled_step: CompiledStep | None = None  # the compiled step, once it is ready
        self.compiled = threading.Event()  # set when the compile is over, whether it worked or not
        if compiled_step is not None and self.config.decode == "compiled" and self.fast_decode:
            self.compiled_step = compiled_step
            self.compiled.set()
        self.compile_nice: int | None = None  # the compile thread's nice value, once lowered
        self._quiet = threading.Event()  # set while the engine has nothing to do (no request running, prefilling or waiting)
        self._quiet_since = time.monotonic()
        self._quiet.set()
        if not (self.config.decode == "compiled" and self.fast_decode):
            self.compiled.set()
        self.compile_state = ("done" if self.compiled_step else "off") if self.compiled.is_set() else "deferred"  # then "compiling", "done"
        self.metrics.running.set_function(lambda: len(self._rows))
        self.metrics.prefilling.set_function(lambda: self._prefilling)
        self.metrics.waiting.set_function(lambda: len(self._scheduler))
        for step in DECODE_STEPS:  # read at scrape time, so a compiled step that falls back shows at once
            self.metrics.decode_step.labels(step).set_function(lambda step=step: float(self.decode_step == step))  # type: ignore[misc]

    def prepare_weights(self, model: torch.nn.Module) -> int:
        """Repack the model's Linear weights for the engine's own step: fp32 ones for MKL, a layer's
        q/k/v and its gate/up fused into one matrix each (packed.py). Returns how many were packed.
        (The bench's baselines override this to measure the step without it.)"""
        return pack_linears(model, fuse=True)

    # ----- the public interface -------------------------------------------------------------

    def start(self) -> Engine:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="tandem-engine", daemon=True)
            self._thread.start()
            if not self.compiled.is_set():
                threading.Thread(target=self._compile, name="tandem-compile", daemon=True).start()
        return self

    @property
    def decode_step(self) -> str:
        """Which step decodes a single row (one of DECODE_STEPS): transformers' forward, the engine's
        own eager one, or its compiled copy (once the background compile is done)."""
        if not self.fast_decode:
            return "transformers"
        return "compiled" if self.compiled_step is not None and self.compiled_step.failed is None else "eager"

    def _compile(self) -> None:
        """Compile the decode step while the worker serves with the eager one; it switches at its
        next step. It must not starve live requests, so this thread runs at the lowest priority
        (COMPILE_NICE: on Linux per thread, and the C++ compiler processes inductor starts inherit
        it), inductor compiles in it rather than in a pool of worker processes at normal priority
        (compile_threads=1), and it starts only once the engine has been idle for
        COMPILE_IDLE_SECONDS, so that a burst of requests at start-up is not served beside it.
        Pausing it while requests run (a trace function that waits) was tried: it gained nothing
        measurable over the lowest priority, and a thread stopped at an arbitrary Python call may
        hold a lock (the import lock, a logging handler's) that the worker then waits for."""
        try:
            if hasattr(os, "setpriority") and hasattr(threading, "get_native_id"):
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), COMPILE_NICE)
                self.compile_nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        except OSError:
            log.warning("could not lower the compile thread's priority", exc_info=True)
        self._wait_quiet()
        if self._closing:
            self.compile_state = "done"
            self.compiled.set()
            return
        self.compile_state = "compiling"
        started = time.monotonic()
        log.info("compiling the decode step in the background, at low priority (the eager step serves meanwhile)")
        try:
            import torch._inductor.config as inductor_config

            with inductor_config.patch(compile_threads=1):
                self.compiled_step = compile_step(self.model, beside=self.config.chunk_prefill_above > 0)
            log.info("decode step compiled in %.0f s", time.monotonic() - started)
        except Exception:  # the eager step stays; compiling is an optimisation, not a requirement
            log.exception("compiling the decode step failed; the eager step stays")
        finally:
            self.compile_state = "done"
            self.compiled.set()

    def _wait_quiet(self) -> None:
        """Until the engine has been idle for COMPILE_IDLE_SECONDS (or is closing)."""
        while not self._closing:
            self._quiet.wait(timeout=1.0)
            left = COMPILE_IDLE_SECONDS - (time.monotonic() - self._quiet_since)
            if self._quiet.is_set() and left <= 0:
                return
            time.sleep(max(left, 0.05))

    def _set_busy(self, busy: bool) -> None:
        if busy:
            self._quiet.clear()
        elif not self._quiet.is_set():
            self._quiet_since = time.monotonic()
            self._quiet.set()

    def close(self) -> None:
        self._closing = True
        self._quiet.set()  # a compile still waiting for quiet ends with the engine
        self._scheduler.close()
        if self._thread is not None:
            self._thread.join(timeout=30)
        for seq in self._scheduler.drain() + self._rows + [c for c, _ in self._chunking]:
            seq.send(EngineClosed("engine is shutting down"))  # (once per row: the stream raises at the first)

    @property
    def alive(self) -> bool:
        return not self._closing and self._thread is not None and self._thread.is_alive()

    @property
    def running(self) -> int:
        return len(self._rows)

    @property
    def waiting(self) -> int:
        return len(self._scheduler)

    def prompt_ids(self, req: GenerationRequest) -> list[int]:
        """Tokenise and check a request; raises InvalidRequest with the offending parameter."""
        if isinstance(req.prompt, str):
            ids = list(self.tokenizer.encode(req.prompt, add_special_tokens=True))
        elif isinstance(req.prompt, list):
            ids = list(req.prompt)
            if any(not isinstance(i, int) or i < 0 or i >= self.vocab_size for i in ids):
                raise InvalidRequest(f"prompt token ids must be integers in [0, {self.vocab_size})", "prompt")
        else:
            raise InvalidRequest("the in-process engine takes text or token ids, not messages", "prompt")
        if not ids:
            raise InvalidRequest("prompt is empty", "prompt")
        if req.max_tokens < 0 or (req.max_tokens == 0 and not (req.echo and req.n == 1)):
            raise InvalidRequest(f"max_tokens must be at least 1 (0 only to echo one prompt), got {req.max_tokens}", "max_tokens")
        self._check_choices(req)
        if len(ids) >= self.context_length:
            raise ContextOverflow(f"prompt is {len(ids)} tokens; the model's context is {self.context_length} tokens", "prompt")
        if len(ids) + req.max_tokens > self.context_length:
            raise ContextOverflow(
                f"prompt ({len(ids)} tokens) + max_tokens ({req.max_tokens}) exceeds the model's context of {self.context_length} tokens",
                "max_tokens",
            )
        if not 0.0 <= req.temperature <= 2.0:
            raise InvalidRequest(f"temperature must be in [0, 2], got {req.temperature}", "temperature")
        if not 0.0 < req.top_p <= 1.0:
            raise InvalidRequest(f"top_p must be in (0, 1], got {req.top_p}", "top_p")
        if req.seed is not None and not -(2**63) <= req.seed < 2**64:
            raise InvalidRequest(f"seed must be a 64-bit integer, got {req.seed}", "seed")
        return ids

    def _check_choices(self, req: GenerationRequest) -> None:
        """The controls, logprobs and n of a request, or InvalidRequest naming the one at fault."""
        if not 1 <= req.n <= self.config.max_batch_size:
            raise InvalidRequest(f"n must be between 1 and {self.config.max_batch_size} (the batch's rows), got {req.n}", "n")
        if req.logprobs is not None and not 0 <= req.logprobs <= MAX_LOGPROBS:
            raise InvalidRequest(f"logprobs must be between 0 and {MAX_LOGPROBS}, got {req.logprobs}", "logprobs")
        c = req.controls
        for token, bias in c.logit_bias:
            if not 0 <= token < self.vocab_size:
                raise InvalidRequest(f"logit_bias names token {token}, outside the vocabulary [0, {self.vocab_size})", "logit_bias")
            if not -100.0 <= bias <= 100.0:
                raise InvalidRequest(f"logit_bias values must be in [-100, 100], got {bias} for token {token}", "logit_bias")
        if any(not 0 <= t < self.vocab_size for t in c.stop_token_ids):
            raise InvalidRequest(f"stop_token_ids must be in [0, {self.vocab_size})", "stop_token_ids")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(c, name) <= 2.0:
                raise InvalidRequest(f"{name} must be in [-2, 2], got {getattr(c, name)}", name)
        if not 0.0 < c.repetition_penalty <= 2.0:
            raise InvalidRequest(f"repetition_penalty must be in (0, 2], got {c.repetition_penalty}", "repetition_penalty")
        if not 0 <= c.min_tokens <= req.max_tokens:
            raise InvalidRequest(f"min_tokens must be between 0 and max_tokens ({req.max_tokens}), got {c.min_tokens}", "min_tokens")

    async def stream(self, req: GenerationRequest) -> AsyncIterator[Delta]:
        """Generate for `req`. Closing the iterator cancels the request at the next step."""
        if not self.alive:
            raise EngineClosed("engine is not running")
        if not isinstance(req.prompt, str | list) or req.suffix is not None:
            raise InvalidRequest("the in-process engine takes a rendered prompt (text or token ids), not messages or a suffix", "prompt")
        # tokenising a long prompt takes long enough to stall every other stream: off the event loop
        ids = await asyncio.to_thread(self.prompt_ids, req) if len(req.prompt) > 4096 else self.prompt_ids(req)
        loop = asyncio.get_running_loop()
        # a grammar is compiled off the event loop (a large schema takes a moment), and each answer gets its own matcher
        compiled = await asyncio.to_thread(self.grammars.compile, req.grammar) if req.grammar is not None else None
        matcher = (lambda: self.grammars.matcher(compiled)) if compiled is not None else (lambda: None)  # noqa: E731
        seq = _Sequence(req, ids, self.tokenizer, loop, self.eos_ids, self.speculative, grammar=matcher())
        seq.forks = [
            _Sequence(req, ids, self.tokenizer, loop, self.eos_ids, self.speculative, i, seq.queue, matcher()) for i in range(1, req.n)
        ]
        try:
            self._scheduler.submit(seq)
            self._set_busy(True)
        except EngineOverloaded:
            self.metrics.refused.inc()
            raise
        try:
            finished = 0
            while True:
                item = await seq.queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    finished += 1
                    if finished == req.n:
                        return
        finally:
            if not all(m.done for m in seq.members):
                for m in seq.members:
                    m.cancelled = True
                if not self._scheduler.withdraw(seq):  # still waiting: gone now; else the worker drops it at its next step
                    self._scheduler.wake()

    # ----- the worker ----------------------------------------------------------------------

    def _run(self) -> None:
        with torch.inference_mode():  # every tensor the worker makes is an inference tensor (the compiled step guards on it)
            self._serve()

    def _serve(self) -> None:
        while not self._closing:
            self._drop_cancelled()
            free = self.config.max_batch_size - len(self._rows) - sum(seq.rows for seq, _ in self._chunking)
            idle = not self._rows and not self._chunking
            if idle and not len(self._scheduler):
                self._set_busy(False)  # about to wait for work: a background compile may run
            breather = self._breather()
            new = self._scheduler.take(free, self.config.prefill_token_budget, block=idle) if free > 0 and not breather else []
            if self._closing:
                break
            self._chunk_ran = False
            try:
                prefilled = False
                if new:
                    self._set_busy(True)
                    self._prefilling += len(new)  # each leaves this count in _join, once prefilled (or all at once below, on failure)
                    prefilled = self._admit(new)
                if self._chunking and not prefilled and not breather:  # (a prompt prefilled is this iteration's prefill: one, not two)
                    self._prefill_chunk()
                if self._rows:
                    self._decode()
            except Exception as exc:  # a failed step must not take the engine down with it
                log.exception("engine step failed; failing the %d requests in it", len(self._rows) + len(new))
                for seq in {id(s): s for s in self._rows + new + [c for c, _ in self._chunking]}.values():
                    if not seq.done:
                        self._finish(seq, "error")
                        seq.send(EngineError(f"generation failed: {exc}"))
                self._rows, self._batch, self._prefilling, self._chunking = [], RunningBatch(self.fast_decode), 0, []
                self._beside = None

    def _drop_cancelled(self) -> None:
        keep = [i for i, s in enumerate(self._rows) if not s.cancelled]
        if len(keep) == len(self._rows):
            return
        for s in self._rows:
            if s.cancelled:
                self._finish(s, "cancelled")
        self._rows = [self._rows[i] for i in keep]
        self._batch.keep(keep)

    def _breather(self) -> bool:
        """Whether this iteration takes nothing from the queue and runs no chunk: one plain step.

        When the last step carried a chunk (about a step more for every stream) and chat prompts
        wait to be prefilled at once (more than ride the steps), so that their prefill and that
        chunk do not fall into the same gap between two of the streams' tokens. Chat prompts that
        ride are taken at once (their chunks are small), and so is an interactive prompt: its
        developer is waiting, and it goes ahead of chat anyway."""
        if not (self._rows and self._chunk_ran):
            return False
        priority, tokens = self._scheduler.ahead()
        return priority is not None and priority != Priority.INTERACTIVE and not self._rides(tokens)

    def _rides(self, chat_tokens: int) -> bool:
        return bool(self._rows) and self.fast_decode and self.config.chunk_prefill_above > 0 and chat_tokens <= RIDE_TOKENS

    def _admit(self, new: list[_Sequence]) -> bool:
        """Prefill `new` (or queue its prompts for chunks); whether a prefill ran here."""
        now = time.monotonic()
        rides = self._rides(sum(len(s.prompt_ids) for s in new if s.priority != Priority.INTERACTIVE))
        prefilled = False
        misses: list[_Sequence] = []
        for seq in new:
            self.metrics.admitted(now - seq.submitted, len(seq.prompt_ids))
            if seq.req.echo:  # the prompt's own logits are wanted: prefilled alone, every position kept
                pre = prefill_batch(self.model, [seq.prompt_ids], self.pad_id, every_position=True, fast=self.fast_decode)
                prefilled = True
                self.metrics.prefilled(len(seq.prompt_ids))
                self._echo(seq, pre)
                self._join([seq], pre)
                continue
            reused, kv = self._prefix.lookup(seq.prompt_ids)
            if self._chunked(seq, len(seq.prompt_ids) - reused, rides):
                self._chunking.append((seq, ChunkedPrefill(self.model, seq.prompt_ids, kv, reused, self.fast_decode)))
                self.metrics.prefilled(0, reused)  # (its chunks count what they compute)
                continue
            if kv is None:
                misses.append(seq)
                continue
            self.metrics.prefilled(len(seq.prompt_ids) - reused, reused)
            pre = prefill_on_prefix(self.model, seq.prompt_ids, kv, reused, fast=self.fast_decode)
            prefilled = True
            self._prefix.store(seq.prompt_ids, pre.kv)
            self._join([seq], pre)
        if misses:
            pre = prefill_batch(self.model, [s.prompt_ids for s in misses], self.pad_id, fast=self.fast_decode)
            self.metrics.prefilled(sum(len(s.prompt_ids) for s in misses))
            for row, seq in enumerate(misses):
                if len(seq.prompt_ids) >= self._prefix.min_reuse and self._prefix.max_tokens > 0:
                    self._prefix.store(seq.prompt_ids, row_kv(pre, row))
            self._join(misses, pre)
        return prefilled or bool(misses)

    def _chunked(self, seq: _Sequence, new_tokens: int, rides: bool) -> bool:
        """Whether `seq`'s prompt is prefilled in chunks, each in a decode step's pass (or alone,
        with nothing decoding), rather than at once.

        A long chat prompt: always. Chat prompts arriving while rows decode through the engine's
        step, however short, with at most RIDE_TOKENS between them (`rides`): prefilled at once
        they stop every stream for a pass of the whole model; in chunks their positions go into
        the steps' products, which read each weight once for both. A larger burst is prefilled
        together: one pass for all of them, where chunks of a few dozen tokens a step would
        hold the last one's first token back for many steps. An interactive prompt
        (the developer waits on it, and it goes ahead of chat anyway) is prefilled at once:
        chunked under chat load, a cold completion's first token came several times later
        (`tandem bench`, mixed)."""
        if seq.priority == Priority.INTERACTIVE or self.config.chunk_prefill_above <= 0 or new_tokens <= 0:
            return False
        return rides or new_tokens > self.config.chunk_prefill_above

    def _prefill_chunk(self) -> None:
        """The next chunk of the prompt being prefilled with the fewest tokens left (a short chat
        prompt goes ahead of a long one for its few steps): while rows decode through the
        engine's own step, in the next step's pass (`_decode`: the chunk shares its products);
        otherwise alone. Once its last chunk is in, it joins the batch (`_chunks_done`)."""
        at = min(range(len(self._chunking)), key=lambda i: self._chunking[i][1].left)  # fewest tokens left first
        seq, job = self._chunking[at]
        if seq.cancelled:
            self._chunking.pop(at)
            self._prefilling -= 1
            self._finish(seq, "cancelled")
            return
        tokens = self._chunks.tokens(decoding=bool(self._rows), prompt=job)
        beside = self.compiled_step.beside if self.compiled_step is not None else None
        if beside is not None and len(self._batch.lanes) == 1 and beside.takes(len(self._rows), MIN_CHUNK, job.done):
            tokens = min(tokens, COMPILED_ROWS - len(self._rows))  # the most the compiled step takes beside its rows
        if self._rows and self.fast_decode:  # in the next decode step's pass (`_decode`)
            self._beside = (job, job.next_chunk(tokens))
            return
        reused = job.done
        self._chunk_ran = True
        done = job.advance(tokens, self._chunks) is not None
        self.metrics.prefilled(job.done - reused)
        if done:
            self._chunks_done(job)

    def _chunks_done(self, job: ChunkedPrefill) -> None:
        """`job`'s last chunk is in: its prompt goes into the prefix cache (as any other's) and its
        rows join the batch at once (over the buffers its chunks were written into: no copy of
        a long prompt's columns), its first token sampled from the last chunk's logits."""
        at = next(i for i, (_, j) in enumerate(self._chunking) if j is job)
        seq, _ = self._chunking.pop(at)
        pre = job.ready
        assert pre is not None
        if self._prefix.max_tokens > 0 and len(seq.prompt_ids) >= self._prefix.min_reuse:
            self._prefix.store(seq.prompt_ids, pre.kv)
        self._join([seq], pre)

    def _echo(self, seq: _Sequence, pre: Prefilled) -> None:
        """Send the prompt back, with each token's log-probability given the ones before it; a
        request for no new tokens (max_tokens 0) ends here."""
        logprobs = None
        if seq.req.logprobs is not None and pre.every_logits is not None:
            ids, pieces = seq.prompt_ids, self.token_text
            first = TokenLogprob(Candidate(ids[0], pieces.text(ids[0]), pieces.bytes(ids[0]), None))
            logprobs = (first, *self._entries(pre.every_logits[0, :-1], ids[1:], [seq.req.logprobs] * (len(ids) - 1)))
        text = seq.req.prompt if isinstance(seq.req.prompt, str) else self.tokenizer.decode(seq.prompt_ids, skip_special_tokens=False)
        finish = "length" if seq.max_tokens == 0 else None
        seq.send(Delta("", 0, finish, len(seq.prompt_ids), prompt=PromptEcho(text, logprobs)))
        if finish:
            self._finish(seq, finish)

    def _join(self, seqs: list[_Sequence], pre: Prefilled) -> None:
        """Sample each new row's first token; rows that are not finished by it join the batch. A
        request for n answers becomes n rows here, each with a copy of the one prefilled KV."""
        self._prefilling -= len(seqs)  # prefilled: from here on they are finished or running
        seqs = [s for s in seqs if not s.done]  # (an echo that asked for no tokens)
        if not seqs:
            return
        rows = [m for s in seqs for m in s.members]
        source = [i for i, s in enumerate(seqs) for _ in s.members]  # each row's prefilled row
        logits = pre.logits if len(rows) == len(seqs) else pre.logits[source]
        sampled = sample_next(logits, [s.sampling for s in rows])
        entries = self._logprobs(logits, rows, sampled)
        tokens = [self.pad_id if t is None else t for t in sampled]
        alive = []
        for i, (seq, token) in enumerate(zip(rows, sampled)):
            if seq.cancelled:
                self._finish(seq, "cancelled")
            elif self._advance(seq, token, entries[i]):
                alive.append(i)
        if not alive:
            return
        device = pre.mask.device
        rows_kept = [source[i] for i in alive]
        buffers = None
        if rows_kept == list(range(pre.mask.shape[0])):  # every prefilled row, in order: no copy (a long prompt's is large)
            kv, mask, positions, buffers = pre.kv, pre.mask, pre.positions, pre.buffers
        else:
            idx = torch.tensor(rows_kept, dtype=torch.long, device=device)
            kv, mask, positions = [(k[idx], v[idx]) for k, v in pre.kv], pre.mask[idx], pre.positions[idx]
        at = self._batch.join(kv, mask, positions, torch.tensor([tokens[i] for i in alive], dtype=torch.long, device=device), buffers)
        self._rows[at:at] = [rows[i] for i in alive]

    def _logprobs(self, logits: torch.Tensor, rows: list[_Sequence], sampled: list[int | None]) -> list[TokenLogprob | None]:
        """Each row's chosen token with its log-probability and alternatives, for the rows that
        asked (None for the others, and for a row that failed)."""
        out: list[TokenLogprob | None] = [None] * len(rows)
        wanted = [r for r, s in enumerate(rows) if s.req.logprobs is not None and sampled[r] is not None]
        if wanted:
            found = self._entries(logits[wanted], [sampled[r] for r in wanted], [rows[r].req.logprobs for r in wanted])  # type: ignore[misc]
            for r, entry in zip(wanted, found):
                out[r] = entry
        return out

    def _entries(self, logits: torch.Tensor, chosen: list[int], top: list[int]) -> list[TokenLogprob]:
        text = self.token_text
        return [
            TokenLogprob(
                Candidate(token, text.text(token), text.bytes(token), logprob),
                tuple(Candidate(i, text.text(i), text.bytes(i), lp) for i, lp in alternatives),
            )
            for token, (logprob, alternatives) in zip(chosen, logprobs_of(logits, chosen, top))
        ]

    def _decode(self) -> None:
        size = len(self._rows)
        self.metrics.stepped(size)
        drafts = self._drafts()
        beside, self._beside = self._beside, None
        self._chunk_ran = self._chunk_ran or beside is not None
        done: ChunkedPrefill | None = None  # a prompt whose last chunk ran here: it joins after the step
        if beside is not None and drafts is not None:  # verification takes no chunk: it runs alone first
            self.metrics.prefilled(beside[1].end - beside[1].start)
            done = beside[0] if beside[0].run(beside[1], self._chunks) is not None else None
            beside = None
        started = time.monotonic()
        emitted = self._speculate(drafts) if drafts is not None else self._plain_step(beside[1] if beside else None)
        took = time.monotonic() - started
        if beside is not None:  # the chunk's cost: what the step took beyond a plain one
            job, chunk = beside
            assert chunk.logits is not None
            self.metrics.prefilled(chunk.end - chunk.start)
            if job.ran(chunk, chunk.logits, max(took - (self._chunks.step_seconds or took), 1e-4), self._chunks) is not None:
                done = job
        elif drafts is None:
            self._chunks.stepped(took)
        if done is not None:
            self._chunks_done(done)
        if self.speculative and size <= self.spec_max_rows:  # the costs behind the speculation gate
            if drafts is None:
                self._plain_seconds = took if self._plain_seconds is None else 0.8 * self._plain_seconds + 0.2 * took
            else:
                self._verify_seconds = took if self._verify_seconds is None else 0.8 * self._verify_seconds + 0.2 * took
        rate = emitted / max(took, 1e-6)
        self._scheduler.tokens_per_second = 0.9 * self._scheduler.tokens_per_second + 0.1 * rate

    def _plain_step(self, chunk: Chunk | None = None) -> int:
        """One token for every row (and `chunk`, a long prompt's, in the same pass); returns how
        many tokens were emitted."""
        size = len(self._rows)
        logits = self._batch.step(self.model, self.compiled_step, chunk)
        sampled = sample_next(logits, [s.sampling for s in self._rows])
        entries = self._logprobs(logits, self._rows, sampled)
        tokens = [self.pad_id if t is None else t for t in sampled]
        keep = [i for i, (s, t) in enumerate(zip(self._rows, sampled)) if self._advance(s, t, entries[i])]
        self._batch.next_tokens = torch.tensor(tokens, dtype=torch.long, device=self._batch.device)
        if len(keep) < size:
            self._rows = [self._rows[i] for i in keep]
            self._batch.keep(keep)
        return size

    def _drafts(self) -> list[list[int]] | None:
        """Each row's prompt-lookup drafts (none for rows that do not speculate), or None when
        this step should be a plain one: speculation off, a batch too large for it to pay, or
        nothing to propose (or rows in several lanes, which verification does not take)."""
        if not self.speculative or len(self._rows) > self.spec_max_rows or len(self._batch.lanes) > 1:
            return None
        drafts: list[list[int]] = []
        pays = self.spec_break_even()
        for seq in self._rows:
            if seq.lookup is None:
                drafts.append([])
                continue
            generated = len(seq.prompt_ids) + seq.generated
            room = min(
                self.draft_tokens, seq.max_tokens - seq.generated - 1, self.context_length - generated - 1
            )  # the bonus token needs a place too
            draft = seq.lookup.draft(room)
            if seq.gate.gain < pays:
                seq.gate.watch(draft)  # not verified: scored against what the plain steps give
                draft = []
            drafts.append(draft)
        return drafts if any(drafts) else None

    def spec_break_even(self) -> float:
        """Accepted drafts per verification that pay for it: how much longer a verification pass
        has been taking than a plain step, in plain steps (EMAs of both, as measured here)."""
        if self._plain_seconds is None or self._verify_seconds is None:
            return 1.0
        return max(self._verify_seconds / self._plain_seconds - 1.0, 0.25)

    def _speculate(self, drafts: list[list[int]]) -> int:
        """Verify every row's drafts in one pass; each row emits the drafts the model agrees with
        and then the model's own next token, in order, until one of them finishes it. Greedy rows
        get exactly the tokens plain steps would give; rows without drafts get their one token.
        Returns how many tokens were emitted."""
        size = len(self._rows)
        logits, starts = self._batch.verify(self.model, drafts)
        chosen = sample_next(logits, [s.sampling for s, d in zip(self._rows, drafts) for _ in range(1 + len(d))])
        # (a row that wants logprobs never drafts, so its one position is at its start)
        entries = self._logprobs(logits[starts], self._rows, [chosen[s] for s in starts])
        accepted, nexts, keep, emitted = [], [], [], 0
        for r, (seq, d) in enumerate(zip(self._rows, drafts)):
            mine = chosen[starts[r] : starts[r] + 1 + len(d)]
            m = accepted_prefix(d, mine)
            accepted.append(m)
            if d:
                seq.gate.record(m)
            out = [*d[:m], mine[m]]
            nexts.append(self.pad_id if out[-1] is None else out[-1])
            alive = True
            for token in out:
                emitted += 1
                if not self._advance(seq, token, entries[r]):
                    alive = False
                    break
            if alive:
                keep.append(r)
        drafted, agreed = sum(len(d) for d in drafts), sum(accepted)
        self.metrics.speculated(drafted, agreed)
        self._batch.accept(accepted, nexts)
        if len(keep) < size:
            self._rows = [self._rows[i] for i in keep]
            self._batch.keep(keep)
        return emitted

    def _emit(self, seq: _Sequence, token: int, logprob: TokenLogprob | None = None) -> bool:
        """Account one generated token of `seq` and send its text; True when `seq` is finished."""
        now = time.monotonic()
        self.metrics.token(now - (seq.last_token if seq.generated else seq.submitted), first=seq.generated == 0)
        seq.last_token = now
        seq.generated += 1
        if seq.lookup is not None:
            seq.lookup.append(token)
            seq.gate.token(token)
        if seq.sampling.controlled:
            seq.sampling.output_ids.append(token)
        if logprob is not None and token not in seq.ends:  # (the end of the answer is not part of its text, nor of its logprobs)
            seq.pending_logprobs.append(logprob)
        finish: str | None = None
        if token in seq.ends:
            text, finish = seq.detok.finish(), "stop"
        else:
            text, stopped = seq.detok.push(token)
            if stopped:
                finish = "stop"
            elif seq.sampling.grammar is not None and self._grammar_complete(seq, token):
                text, finish = text + seq.detok.finish(), "stop"
            elif seq.generated >= seq.max_tokens or len(seq.prompt_ids) + seq.generated >= self.context_length:
                text, finish = text + seq.detok.finish(), "length"
        if text or finish:
            logprobs = tuple(seq.pending_logprobs)
            seq.pending_logprobs.clear()
            seq.send(Delta(text, seq.generated, finish, len(seq.prompt_ids), seq.index, logprobs))
        if finish:
            self._finish(seq, finish)
        return finish is not None

    def _grammar_complete(self, seq: _Sequence, token: int) -> bool:
        """Feed the row's grammar its token; True when nothing more may follow."""
        grammar = seq.sampling.grammar
        assert grammar is not None
        grammar.consume(token)
        if grammar.failed:  # (the mask allows only what the grammar takes: this is llguidance's own failure)
            log.warning("request %s: the grammar refused its own token: %s", seq.req.request_id or "?", grammar.failed)
            return True
        return grammar.done

    def _advance(self, seq: _Sequence, token: int | None, logprob: TokenLogprob | None = None) -> bool:
        """Take one sampled token for `seq`; True while it stays in the batch. `None` is a row whose
        logits or probabilities were not finite: it fails alone and its neighbours go on."""
        if token is not None:
            return not self._emit(seq, token, logprob)
        log.warning("request %s failed alone: its next-token probabilities were not finite", seq.req.request_id or "?")
        self._finish(seq, "error")
        seq.send(EngineError("generation failed: this request's next-token probabilities were not finite"))
        return False

    def _finish(self, seq: _Sequence, reason: str) -> None:
        seq.done = True
        if reason != "cancelled":
            self._scheduler.note_finished(seq.generated)
        self.metrics.finished(reason, time.monotonic() - seq.submitted)


def _eos_ids(model: torch.nn.Module, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config):
        eos = getattr(source, "eos_token_id", None)
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, (list, tuple)):
            ids.update(int(e) for e in eos)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    # Chat models end a turn with their eos; raw completions end a document with this one, and a
    # fill-in-the-middle answer ends where the model writes one of its control tokens (Qwen2.5-Coder
    # ends a middle with <|endoftext|>, but also with <|fim_pad|> or <|file_sep|>; none of them is
    # ever text to show).
    vocab = tokenizer.get_vocab()
    for name in END_TOKENS:
        if name in vocab:
            ids.add(int(vocab[name]))
    return frozenset(ids)


END_TOKENS = (
    "<|endoftext|>",
    "<|fim_pad|>",
    "<|file_sep|>",
    "<|fim_prefix|>",
    "<|fim_suffix|>",
    "<|fim_middle|>",
    "<|repo_name|>",
    "<fim_prefix>",
    "<fim_suffix>",
    "<fim_middle>",
    "<fim_pad>",
    "<file_sep>",
    "<|im_end|>",
)
