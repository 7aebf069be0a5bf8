"""The gateway: the only road to the engine.

Every surface (HTTP API, support chat, language server) hands it a `Call` — surface, actor,
prompt, parameters — and gets back a stream of deltas. In between it sanitises the input with
the surface's guard profile, renders the model's prompt (chat template, fill-in-the-middle),
streams from the engine, scans the output as it streams, and writes exactly one audit record
whatever the outcome: ok, cancelled, error or blocked. The engine object lives only here, and
its errors do not leave: every failure reaches a surface as a `CallFailed` with a stable code
(`server/failures.py`). Surfaces import what they need of a call from this module alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from . import chat_window
from .answer import Answer, merged_results
from .audit import AuditLog, Entry, record
from .backends import Backend, BackendFailed, BackendUnavailable, ModelInfo, PromptText
from .clock import iso_utc
from .engine import (
    Candidate,  # noqa: F401  (surfaces take a call's types from here)
    ContextOverflow,
    Delta,
    EngineClosed,
    EngineError,
    EngineOverloaded,
    GenerationRequest,
    Grammar,
    InvalidRequest,
    LogitControls,
    Messages,
    Priority,
    PromptEcho,  # noqa: F401  (surfaces take a call's types from here)
    TokenLogprob,  # noqa: F401
)
from .engine.types import NO_CONTROLS
from .failures import CallFailed, Code, InputBlocked, OutputRefused
from .guard import (
    POLICY_VERSION,
    PROFILES,
    InputGuard,
    OutputBlocked,
    ScanResult,
    Segment,
    Verdict,
    output_scanner,
    overall,
    scrub,
    scrub_header,
)
from .reasoning import ReasoningSplit
from .routing import SURFACES, Draining, Routing
from .tool_calls import CALLS, TOOLS, HermesCalls, ToolCall, calls_message, forced  # noqa: F401  (re-exported: surfaces know only the gateway)


def redact_secrets(text: str) -> str:
    """A short field a caller supplied outside any prompt (a customer's name, say) as a surface may
    store it: the guard's secret scanner over it, secrets redacted."""
    return scrub(text)


DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default for /v1/completions
DEFAULT_CHAT_TOKENS = 1024  # cap when a chat call names no max_tokens
SCAN_WORKERS = 2


@dataclass(frozen=True)
class Actor:
    """Who is calling. Raw values never reach the audit log: user and IP are stored as keyed HMACs."""

    kind: str  # api_client | ide_user | widget_visitor | system
    user: str | None = None
    ip: str | None = None
    client: str | None = None  # e.g. a User-Agent or "tandem-lsp/0.1"
    tenant: str | None = None  # e.g. the support widget's site


@dataclass(frozen=True)
class TextPrompt:
    text: str | list[int]  # token ids are decoded for scanning


@dataclass(frozen=True)
class FimPrompt:
    prefix: str
    suffix: str


@dataclass(frozen=True)
class ChatPrompt:
    messages: tuple[tuple[str, str], ...]  # (role, content)
    fit: bool = False  # drop the oldest turns (never a leading system message or the newest) to leave max_tokens for the answer


Prompt = TextPrompt | FimPrompt | ChatPrompt


@dataclass(frozen=True)
class Params:
    max_tokens: int | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    controls: LogitControls = NO_CONTROLS
    logprobs: int | None = None  # each token's log-probability and this many alternatives (None: none)
    echo: bool = False  # the prompt first, as the model read it (completions)
    n: int = 1  # answers, each its own `index` in the deltas
    grammar: Grammar | None = None  # what every answer must follow (structured output)
    tool_choice: str | None = None  # where tools were offered: auto, required, or function:<name> (for the record)


@dataclass(frozen=True)
class Screened:
    """What the gateway made of a chat call's input, told before generation, for a caller that
    stores it (the chat keeps the visitor's text only as the guard passed it). `newest` is the
    newest message as sanitised, or None where it was refused before the secret scanner ran (a
    size cap): nothing to keep. `turns_kept`/`turns_dropped` count the earlier turns a fitted
    prompt sent and left out (None where it was not fitted, or was refused before)."""

    newest: str | None
    blocked: bool
    turns_kept: int | None = None
    turns_dropped: int | None = None


@dataclass(frozen=True)
class Call:
    surface: str  # a guard profile: ide_completion | support_chat
    actor: Actor
    prompt: Prompt
    params: Params = field(default_factory=Params)
    priority: Priority = Priority.CHAT
    request_id: str = ""
    conversation_id: str | None = None
    message_id: str | None = None
    session_id: str | None = None
    affinity: str | None = None  # keeps related calls on one upstream (the IDE's document); default: the conversation, session or user
    on_screened: Callable[[Screened], Awaitable[None]] | None = None  # told once the input is scanned and fitted, before generation
    generate: bool = True  # False: screened, kept and recorded, not answered (a message held for a person)
    sources: tuple[str, ...] = ()  # knowledge the caller put in the prompt, named in the audit record
    # the caller's own answer instead of the model's (the honest "I don't know" where its knowledge has
    # none): screened and streamed as output and recorded with finish "fixed_reply"
    reply: str | None = None
    # the caller's last message is itself the answer (a support agent's reply): sent on as the guard
    # passed it (a card number redacted), recorded as output with finish "fixed_reply"
    echo: bool = False
    # what the caller adds after the model's answer, given it (the passage the answer rests on): it
    # goes through the output scanners and into the record like the model's own words
    appendix: Callable[[str], str] | None = None


class GuardMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.actions = Counter(
            "tandem_guard_actions_total",
            "Gateway calls by surface and the guard's overall action.",
            ["surface", "action"],
            registry=registry,
        )
        self.findings = Counter(
            "tandem_guard_findings_total", "Guard findings by scanner and type.", ["direction", "scanner", "type"], registry=registry
        )
        self.records = Counter("tandem_audit_records_total", "Audit records queued, by outcome.", ["outcome"], registry=registry)
        self.in_flight = Gauge(
            "tandem_gateway_calls_in_flight",
            "Calls between arrival and their audit record (being guarded, queued, generated or streamed).",
            registry=registry,
        )


class Gateway:
    def __init__(self, routing: Routing, audit: AuditLog, registry: CollectorRegistry) -> None:
        self._routing, self.audit = routing, audit
        self.metrics = GuardMetrics(registry)
        # Scanning is CPU work on caller text: a pool of its own, bounded, so that big inputs queue
        # here instead of taking every thread asyncio.to_thread would lend (the event loop never waits on it)
        self._scanners = ThreadPoolExecutor(max_workers=SCAN_WORKERS, thread_name_prefix="tandem-guard")
        self._guards: dict[tuple[str, tuple[str, ...]], InputGuard] = {}  # by surface and the model's control tokens

    # Read-only views of the backends for health checks and /v1/models; nothing else of them leaves this module.
    def model_for(self, surface: str) -> ModelInfo:
        """The model that serves a surface's calls now."""
        return self._routing.backend(surface).info

    def models(self) -> list[tuple[ModelInfo, list[str]]]:
        """Every model served now, with the surfaces it serves."""
        return [(b.info, self._routing.surfaces_of(b)) for b in self._routing.backends()]

    def tokenize(self, surface: str, text: str | None, messages: tuple[tuple[str, str], ...] | None, special: bool) -> list[int]:
        """The token ids of `text`, or of `messages` as the model's chat template renders them
        for an answer (/tokenize). Raises CallFailed where the tokenizer is not here."""
        backend = self._routing.backend(surface)
        try:
            if messages is not None:
                self._check_template(backend, ChatPrompt(messages))
                return backend.text.encode(messages, special)
            return backend.text.encode(text or "", special)
        except CallFailed:
            raise
        except ValueError as exc:
            raise CallFailed(Code.INVALID_VALUE, str(exc), param="model") from None
        except Exception as exc:  # templates raise on role orders they do not support
            raise CallFailed(Code.INVALID_VALUE, f"the model's chat template rejected these messages: {exc}", param="messages") from None

    def detokenize(self, surface: str, ids: list[int]) -> str:
        """Token ids as the model's text (/detokenize)."""
        try:
            return self._routing.backend(surface).text.decode(ids)
        except ValueError as exc:
            raise CallFailed(Code.INVALID_VALUE, str(exc), param="tokens") from None

    def upstreams(self) -> list[dict[str, Any]]:
        """The state of every upstream of every pool serving now (for /healthz)."""
        return [u for b in self._routing.backends() for u in (b.status() if hasattr(b, "status") else [])]

    def registries(self) -> list[CollectorRegistry]:
        """The metrics of the local engines serving now (each has its own; the app shows them beside its own)."""
        return [r for b in self._routing.backends() if (r := getattr(b, "registry", None)) is not None]

    @property
    def engine_alive(self) -> bool:
        return all(b.alive for b in self._routing.backends())

    @property
    def engine_load(self) -> tuple[int, int]:
        loads = [b.load for b in self._routing.backends()]
        return sum(r for r, _ in loads), sum(w for _, w in loads)

    def swap(self, backend: Backend, surfaces: list[str] | None = None) -> list[Draining]:
        """Serve new calls (on `surfaces`, default all) from `backend`; running calls finish where
        they started, and a backend left with none is closed once its last call ends."""
        return self._routing.swap(backend, surfaces if surfaces is not None else SURFACES)

    def draining(self) -> list[Draining]:
        return self._routing.draining()

    async def settled(self) -> None:
        await self._routing.settled()

    @property
    def audit_stuck(self) -> bool:
        return self.audit.stuck

    @property
    def audit_depth(self) -> int:
        return self.audit.depth

    async def close(self) -> None:
        await self._routing.close()
        self._scanners.shutdown(wait=True)
        self.audit.close()

    def record_refusal(self, surface: str, actor: Actor, request_id: str, code: str | None, param: str | None) -> None:
        """A request refused at the door, before it became a call (a body that does not parse or
        validate): it gets its record too, so a fuzzing or probing client shows in the log."""
        self.audit.submit(
            Entry(
                record.Envelope(
                    "request.refused",
                    surface,
                    scrub(request_id),
                    self._actor_ref(actor, with_user=False),
                    outcome=record.Outcome("refused", code, scrub(param or "")[:80] or None),
                ).to_json()
            )
        )
        self.metrics.records.labels("refused").inc()

    def record_feedback(self, request_id: str, event: str, client: str | None) -> None:
        """An IDE's report that a completion was accepted or dismissed, recorded beside the call it names."""
        self.audit.submit(
            Entry(
                record.Envelope(
                    "completion.feedback",
                    "ide_completion",
                    scrub(request_id),
                    self._actor_ref(Actor("ide_user", client=client), with_user=False),
                    outcome=record.Outcome(event),
                ).to_json()
            )
        )

    def record_support_event(self, conversation_id: str, event: str, actor: Actor, detail: str | None = None) -> None:
        """What people did to a support conversation (a visitor asked for a person or rated it; a
        staff member took it over, handed it back or closed it), for the review after an incident."""
        self.audit.submit(
            Entry(
                record.Envelope(
                    "support.event",
                    "support_chat",
                    scrub(conversation_id),
                    self._actor_ref(actor),
                    conversation_id=scrub(conversation_id),
                    outcome=record.Outcome(event, param=scrub(detail) if detail else None),
                ).to_json()
            )
        )

    def _actor_ref(self, actor: Actor, with_user: bool = True) -> record.ActorRef:
        """Who called, as the audit log may hold it: user and IP as keyed HMACs, the client header scrubbed."""
        return record.ActorRef(
            actor.kind,
            self.audit.pseudonym(actor.user, "user") if with_user else None,
            self.audit.pseudonym(actor.ip, "ip"),
            scrub_header(actor.client[:120]) if actor.client else None,
            actor.tenant,
        )

    async def stream(self, call: Call) -> AsyncIterator[Delta]:
        """Guarded, audited generation. Raises `CallFailed` (before or during the stream)."""
        if call.surface not in PROFILES:
            raise ValueError(f"unknown surface {call.surface!r}")
        with self._routing.hold(call.surface) as backend:
            async with contextlib.aclosing(self._serve(call, backend)) as deltas:  # (its record is written when it closes)
                async for delta in deltas:
                    yield delta

    async def _serve(self, call: Call, backend: Backend) -> AsyncGenerator[Delta]:
        rec = _Record(call, time.monotonic(), backend.info)
        self.metrics.in_flight.inc()
        try:
            if not self.audit.accepting:  # a call is never served unaudited: refuse while the writer cannot keep up
                raise CallFailed(Code.AUDIT_UNAVAILABLE, "the audit log is not keeping up; retry in a few seconds", retry_after=5)
            rec.actor = self._actor_ref(call.actor)
            rec.journal = self.audit.open_call(rec.skeleton(rec.actor))
            loop = asyncio.get_running_loop()
            # choosing turns renders the chat template over the whole conversation: on the scanners' pool, not the event loop
            prompt = await loop.run_in_executor(self._scanners, self._choose, call, backend)
            segments = _segments(prompt, backend.text)
            sanitized = await loop.run_in_executor(self._scanners, self._guard(call.surface, backend).scan, segments)
            rec.input_results = sanitized.results
            refusal: CallFailed | None = _input_refusal(sanitized.blocked) if sanitized.blocked is not None else None
            fitted: _Fitted | None = None
            if refusal is None:
                try:
                    fitted = await loop.run_in_executor(
                        self._scanners, self._render, call, backend, prompt, sanitized.segments, sanitized.segments == segments
                    )
                except CallFailed as exc:
                    refusal = exc
            joined = _joined(fitted.segments if fitted is not None else sanitized.segments)  # what the model is sent
            rec.prompt_chars, rec.prompt_hmac = len(joined), self.audit.seal_content(joined)
            # only text the secret scanner has been over is kept; a prompt refused before it (for its
            # size or token count) is recorded as its length, HMAC and verdicts, never its text
            rec.prompt_text = joined if sanitized.scrubbed else None
            rec.context = fitted.context if fitted is not None else None
            if call.on_screened is not None and isinstance(
                prompt, ChatPrompt
            ):  # the one scan of this input: the caller keeps what it produced
                turns = (
                    (fitted.context["turns_included"], fitted.context["turns_dropped"])
                    if fitted is not None and fitted.context
                    else (None, None)
                )
                await call.on_screened(
                    Screened(sanitized.segments[-1].text if sanitized.scrubbed else None, sanitized.blocked is not None, *turns)
                )
            if refusal is not None:
                raise refusal
            if not call.generate:
                rec.finish = "held"
                return
            if call.reply is not None or call.echo:
                answer = rec.answer(0, output_scanner(PROFILES[call.surface]))
                text = answer.scanner.feed(sanitized.segments[-1].text if call.echo else call.reply or "") + answer.scanner.finish()
                rec.finish = "fixed_reply"
                delta = Delta(text, 0, "stop", fitted.tokens if fitted is not None else 0)
                rec.emit(answer, text, delta)
                yield delta
                return
            assert fitted is not None
            engine_prompt, default_max = fitted.prompt, fitted.default_max
            rec.engine_prompt = engine_prompt
            req = GenerationRequest(
                prompt=engine_prompt,
                suffix=fitted.suffix,
                affinity=call.affinity or call.conversation_id or call.session_id or call.actor.user,
                max_tokens=call.params.max_tokens if call.params.max_tokens is not None else default_max,
                temperature=call.params.temperature,
                top_p=call.params.top_p,
                seed=call.params.seed,
                stop=call.params.stop,
                priority=call.priority,
                request_id=call.request_id,
                controls=call.params.controls,
                logprobs=call.params.logprobs,
                echo=call.params.echo,
                n=call.params.n,
                grammar=call.params.grammar,
            )
            thinks = isinstance(call.prompt, ChatPrompt) and backend.text.reasoning is not None
            for i in range(call.params.n):
                rec.answer(i, output_scanner(PROFILES[call.surface]))
                if thinks:  # a reasoning model: its thinking apart, scanned by a scanner of its own
                    rec.thinking(i, ReasoningSplit(bool(backend.text.reasoning)), output_scanner(PROFILES[call.surface]))
            gen = backend.stream(req)
            try:
                async for delta in gen:
                    answer = rec.answers[delta.index]
                    raw, thought, logprobs_in = delta.text, "", delta.logprobs
                    if thinks:
                        raw, thought = rec.think(delta)
                        logprobs_in = delta.logprobs if raw else ()  # (only the answer's tokens are reported)
                    text, logprobs = answer.feed(raw, logprobs_in)
                    if delta.finish_reason is not None:
                        if call.appendix is not None:
                            text += answer.scanner.feed(call.appendix(answer.text() + text))
                        rest, more = answer.finish_text()
                        text, logprobs = text + rest, logprobs + more
                        rec.finish = rec.finish or delta.finish_reason
                    rec.emit(answer, text, delta)
                    prompt_tokens = delta.prompt_tokens or fitted.tokens  # (an upstream that reports no usage: the count made here)
                    rec.prompt_tokens = prompt_tokens
                    yield Delta(text, delta.tokens, delta.finish_reason, prompt_tokens, delta.index, logprobs, delta.prompt, thought)
            finally:
                await gen.aclose()  # type: ignore[attr-defined]
        except OutputBlocked as exc:
            rec.fail("blocked", "output_blocked")
            raise OutputRefused(Code.OUTPUT_BLOCKED, f"the answer was stopped: {exc}", scanner=exc.scanner) from None
        except CallFailed as exc:
            rec.fail("blocked" if isinstance(exc, InputBlocked) else "error", exc.code)
            raise
        except EngineError as exc:
            failed = _engine_failure(exc)
            rec.fail("error", failed.code)
            raise failed from exc
        except (GeneratorExit, asyncio.CancelledError):
            rec.fail("ok" if rec.finish else "cancelled", None)
            raise
        except Exception:
            rec.fail("error", "internal_error")
            raise
        finally:
            try:
                self._write(rec)
            finally:
                self.metrics.in_flight.dec()  # after the record: a call seen leaving has its record counted

    def _guard(self, surface: str, backend: Backend) -> InputGuard:
        """The surface's input guard, knowing the control tokens of the model it guards for."""
        key = (surface, tuple(backend.text.special_tokens))
        if key not in self._guards:
            self._guards[key] = InputGuard(PROFILES[surface], list(key[1]))
        return self._guards[key]

    def _budget(self, call: Call, backend: Backend) -> int:
        """How many prompt tokens a fitted chat call may take: the window less its answer's room."""
        return backend.info.context_length - (call.params.max_tokens if call.params.max_tokens is not None else 1)

    def _choose(self, call: Call, backend: Backend) -> Prompt:
        """The prompt to guard: a fitted chat prompt's messages with the oldest turns that do not fit dropped."""
        prompt = call.prompt
        if not isinstance(prompt, ChatPrompt):
            return prompt
        self._check_template(backend, prompt)
        if not prompt.fit:
            return prompt
        try:
            choice = backend.text.choose(prompt.messages, self._budget(call, backend))
        except Exception as exc:  # templates raise on role orders they do not support
            raise CallFailed(Code.INVALID_VALUE, f"the model's chat template rejected these messages: {exc}", param="messages") from None
        return _ChosenPrompt(choice.messages, fit=True, choice=choice)

    def _check_template(self, backend: Backend, prompt: ChatPrompt) -> None:
        if not backend.text.chat_template:
            raise CallFailed(Code.INVALID_VALUE, f"model {backend.info.name!r} has no chat template; use /v1/completions", param="messages")
        if backend.text.tools is None and (roles := {r for r, _ in prompt.messages} & {TOOLS, CALLS}):
            raise CallFailed(
                Code.TOOLS_NOT_SUPPORTED,
                f"model {backend.info.name!r} does not serve tools (its chat template has none"
                f"{', or its prompt goes to an upstream' if backend.info.backend == 'upstream' else ''}): "
                "send the conversation without tools and tool_calls",
                param="tools" if TOOLS in roles else "messages",
            )

    def _render(self, call: Call, backend: Backend, prompt: Prompt, segments: list[Segment], unchanged: bool) -> _Fitted:
        """The sanitised segments as the model's prompt, with the default max_tokens for this kind of call."""
        if isinstance(prompt, ChatPrompt):
            return self._render_chat(call, backend, prompt, segments)
        if isinstance(prompt, FimPrompt):
            if not backend.text.fim:
                raise CallFailed(Code.INVALID_VALUE, f"model {backend.info.name!r} has no fill-in-the-middle tokens", param="suffix")
            fim = backend.text.render_fim(segments[0].text, segments[1].text)
            return _Fitted(fim.prompt, DEFAULT_COMPLETION_TOKENS, segments, suffix=fim.suffix, tokens=fim.tokens)
        if isinstance(prompt.text, list) and unchanged:
            return _Fitted(
                prompt.text, DEFAULT_COMPLETION_TOKENS, segments, tokens=len(prompt.text)
            )  # unchanged by the guard: keep the caller's exact ids
        return _Fitted(segments[0].text, DEFAULT_COMPLETION_TOKENS, segments)

    def _render_chat(self, call: Call, backend: Backend, prompt: ChatPrompt, segments: list[Segment]) -> _Fitted:
        """Render once; a fitted prompt whose exact render (after the guard) is still over its
        budget loses its oldest kept turn and is rendered again, until it fits or has none left."""
        window = backend.info.context_length
        render = lambda: backend.text.render_chat([(s.role, s.text) for s in segments])  # noqa: E731
        segments = list(segments)
        try:
            rendered = render()
            if not isinstance(prompt, _ChosenPrompt) or prompt.choice is None:
                return _Fitted(
                    rendered.prompt, max(1, min(DEFAULT_CHAT_TOKENS, window - rendered.tokens)), segments, tokens=rendered.tokens
                )
            choice, budget = prompt.choice, self._budget(call, backend)
            head, kept = chat_window.pinned([s.role for s in segments]), choice.kept
            while rendered.tokens > budget and kept > 0:
                del segments[head]
                kept -= 1
                rendered = render()
        except CallFailed:
            raise
        except Exception as exc:  # templates raise on role orders they do not support
            raise CallFailed(Code.INVALID_VALUE, f"the model's chat template rejected these messages: {exc}", param="messages") from None
        if rendered.tokens > budget:
            raise InputBlocked(
                Code.CONTEXT_LENGTH_EXCEEDED,
                f"the newest message needs {rendered.tokens} tokens with the system prompt; "
                f"the window leaves {budget} after the answer's {window - budget}",
                param="messages",
            )
        context = {
            "window": window,
            "budget": budget,
            "tokens": rendered.tokens,
            "turns_included": kept,
            "turns_dropped": choice.kept + choice.dropped - kept,
        }
        return _Fitted(
            rendered.prompt, max(1, min(DEFAULT_CHAT_TOKENS, window - rendered.tokens)), segments, context, tokens=rendered.tokens
        )

    def _write(self, rec: _Record) -> None:
        audit = self.audit
        if rec.prompt_tokens is None and isinstance(rec.engine_prompt, list):  # ended before the engine said
            rec.prompt_tokens = len(rec.engine_prompt)  # (a text prompt is not tokenised here, on the event loop, just for the record)
        envelope = rec.envelope(audit, rec.actor or self._actor_ref(rec.call.actor))
        self.metrics.actions.labels(rec.call.surface, envelope.guard.action).inc()
        self.metrics.records.labels(envelope.outcome.status).inc()
        for direction, results in (("input", rec.input_results), ("output", rec.output_results())):
            for r in results:
                for f in r.findings:
                    self.metrics.findings.labels(direction, r.scanner, f.type).inc()
        audit.submit(Entry(envelope.to_json(), rec.prompt_text, rec.output_text() if rec.answers else None, rec.journal))


def _segments(prompt: Prompt, text: PromptText) -> list[Segment]:
    if isinstance(prompt, ChatPrompt):
        return [Segment(role, text) for role, text in prompt.messages]
    if isinstance(prompt, FimPrompt):
        return [Segment("code", prompt.prefix), Segment("code", prompt.suffix)]
    if isinstance(prompt.text, str):
        return [Segment("code", prompt.text)]
    try:
        return [Segment("code", text.decode(prompt.text))]  # the guard reads what the ids say
    except ValueError as exc:
        raise CallFailed(Code.INVALID_VALUE, str(exc), param="prompt") from None


def _joined(segments: list[Segment]) -> str:
    if len(segments) == 1:
        return segments[0].text
    return "\n".join(f"[{s.role}]\n{s.text}" for s in segments)


def _input_refusal(blocked: ScanResult) -> InputBlocked:
    if blocked.scanner == "size":
        return InputBlocked(Code.INPUT_TOO_LARGE, blocked.reason or "input too large", param="prompt", scanner="size")
    return InputBlocked(
        Code.CONTENT_BLOCKED,
        f"the request was blocked by the input guard ({blocked.reason})",
        param="messages" if blocked.scanner == "injection" else "prompt",
        scanner=blocked.scanner,
    )


def _number(value: float) -> float | str:
    """A parameter as the audit record can hold it: JSON has no NaN or infinity (the door refuses
    them, but a record must be writable whatever reached the gateway)."""
    return value if math.isfinite(value) else repr(value)


def _params_ref(p: Params) -> record.ParamsRef:
    """How the answer was sampled, as the record keeps it (the controls only where they were used)."""
    c = p.controls
    return record.ParamsRef(
        p.max_tokens,
        _number(p.temperature),
        _number(p.top_p),
        p.seed,
        len(p.stop),
        presence_penalty=c.presence_penalty or None,
        frequency_penalty=c.frequency_penalty or None,
        repetition_penalty=c.repetition_penalty if c.repetition_penalty != 1.0 else None,
        logit_bias_count=len(c.logit_bias) or None,
        min_tokens=c.min_tokens or None,
        stop_token_count=len(c.stop_token_ids) or None,
        logprobs=p.logprobs,
        echo=p.echo or None,
        n=p.n if p.n != 1 else None,
        grammar=p.grammar.kind if p.grammar is not None else None,
        tool_choice=p.tool_choice,
    )


def _engine_failure(exc: EngineError) -> CallFailed:
    """The engine's error in the gateway's vocabulary (the one place the engine's types are read)."""
    if isinstance(exc, EngineOverloaded):
        return CallFailed(Code.OVERLOADED, f"overloaded, retry after {exc.retry_after} s", retry_after=exc.retry_after)
    if isinstance(exc, ContextOverflow):
        return CallFailed(Code.CONTEXT_LENGTH_EXCEEDED, str(exc), param=exc.param)
    if isinstance(exc, InvalidRequest):
        return CallFailed(Code.INVALID_VALUE, str(exc), param=exc.param)
    if isinstance(exc, BackendUnavailable):
        return CallFailed(Code.ENGINE_UNAVAILABLE, str(exc), retry_after=exc.retry_after)
    if isinstance(exc, EngineClosed):
        return CallFailed(Code.ENGINE_UNAVAILABLE, str(exc) or "the engine is not running")
    if isinstance(exc, BackendFailed):
        return CallFailed(Code.UPSTREAM_FAILED, str(exc))
    return CallFailed(Code.ENGINE_ERROR, str(exc))


@dataclass(frozen=True)
class _ChosenPrompt(ChatPrompt):
    """A fitted chat prompt after its turns were chosen (the choice kept for the final render)."""

    choice: chat_window.Choice | None = None


@dataclass(frozen=True)
class _Fitted:
    """A call's prompt as the engine gets it, and the sanitised segments it was rendered from."""

    prompt: str | list[int] | Messages
    default_max: int
    segments: list[Segment]
    context: dict[str, int] | None = None  # a fitted chat prompt: its window, budget, length and turns kept and dropped
    suffix: str | None = None  # for an upstream that fills in the middle itself
    tokens: int = 0  # the prompt's length as counted here (0: not counted, a text prompt)


class _Record:
    """What one call accumulates for its audit record."""

    def __init__(self, call: Call, started: float, model: ModelInfo) -> None:
        self.call, self.started, self.started_at = call, started, time.time()
        self.model = model  # the model this call was served by (a hot swap changes the backend's, not this)
        self.input_results: list[ScanResult] = []
        self.answers: list[Answer] = []  # one per choice, once output is produced (none: the call ended before)
        self.thoughts: dict[int, Answer] = {}  # a reasoning model's thinking, per choice
        self.splits: dict[int, ReasoningSplit] = {}  # and where it ends, per choice
        self.journal: str | None = None  # the audit journal's token for this call, once it is journalled
        self.prompt_text: str | None = None  # the redacted prompt, kept as audit content
        self.prompt_chars: int | None = None
        self.prompt_hmac: str | None = None
        self.engine_prompt: str | list[int] | Messages | None = None
        self.context: dict[str, int] | None = None  # a fitted chat prompt's window, budget, length and turns
        self.actor: record.ActorRef | None = None  # pseudonymised once, at the start
        self.prompt_tokens: int | None = None
        self.ttft: float | None = None
        self.finish: str | None = None
        self.status, self.error_code = "ok", None  # type: str, str | None

    def answer(self, index: int, scanner: Any) -> Answer:
        """The output of choice `index`, scanned by `scanner` (choices are made in order)."""
        assert index == len(self.answers)
        self.answers.append(Answer(scanner))
        return self.answers[index]

    def thinking(self, index: int, split: ReasoningSplit, scanner: Any) -> None:
        """Choice `index` comes from a reasoning model: `split` tells its thinking apart, `scanner` scans it."""
        self.splits[index], self.thoughts[index] = split, Answer(scanner)

    def think(self, delta: Delta) -> tuple[str, str]:
        """Tell a delta's thinking from its answer: (the answer's raw text, the thinking as it may go out)."""
        split, thinking = self.splits[delta.index], self.thoughts[delta.index]
        thought, raw = split.feed(delta.text)
        if delta.finish_reason is not None:
            more_thought, more_raw = split.finish()
            thought, raw = thought + more_thought, raw + more_raw
        out = thinking.scanner.feed(thought) + (thinking.scanner.finish() if delta.finish_reason is not None else "")
        thinking.keep(out, 0, delta.finish_reason)
        return raw, out

    def emit(self, answer: Answer, text: str, delta: Delta) -> None:
        answer.keep(text, delta.tokens, delta.finish_reason)
        if text and self.ttft is None:
            self.ttft = time.monotonic() - self.started

    def fail(self, status: str, code: str | None) -> None:
        self.status, self.error_code = status, code

    def output_text(self) -> str:
        """The answer as it went out; several (n > 1) each under its choice's heading, and a
        reasoning model's thinking and answer under theirs, as a chat prompt's messages are under
        their roles."""
        sections: list[tuple[str, Answer]] = []
        for i, answer in enumerate(self.answers):
            name = f"choice {i} " if len(self.answers) > 1 else ""
            if i in self.thoughts:  # a reasoning model's thinking before its answer, under a heading of its own
                sections += [(f"{name}reasoning", self.thoughts[i]), (f"{name}answer", answer)]
            else:
                sections.append((name.strip(), answer))
        if len(sections) == 1:
            return sections[0][1].text()
        return "\n".join(f"[{name}]\n{a.text()}" for name, a in sections)

    def output_results(self) -> list[ScanResult]:
        answers = [*self.answers, *self.thoughts.values()]
        if len(answers) == 1:
            return answers[0].scanner.results()  # type: ignore[no-any-return]
        if answers:
            return merged_results(answers)
        reason = "no output: the call ended before generation"
        return [ScanResult(name, Verdict.NOT_SCANNED, reason=reason) for name in PROFILES[self.call.surface].output_scanners]

    def identity(self, actor: record.ActorRef) -> record.Envelope:
        """Who called, on which surface, about what: all the record needs to exist, known at the call's start."""
        call = self.call
        return record.Envelope(
            "llm.interaction", call.surface, scrub(call.request_id), actor, call.conversation_id, call.message_id, call.session_id
        )

    def skeleton(self, actor: record.ActorRef) -> dict[str, Any]:
        """The journal's copy of a call in progress: the record it gets if a crash cuts it."""
        return dataclasses.replace(
            self.identity(actor),
            model=record.ModelRef(self.model.name, self.model.quant),
            timing=record.Timing(iso_utc(self.started_at)),
            guard=record.GuardRef(None, self.call.surface, POLICY_VERSION),
        ).to_json()

    def envelope(self, audit: AuditLog, actor: record.ActorRef) -> record.Envelope:
        call, p, model = self.call, self.call.params, self.model
        results_in, results_out = self.input_results, self.output_results()
        if not results_in:
            results_in = [ScanResult(n, Verdict.NOT_SCANNED, reason="not run") for n in PROFILES[call.surface].input_scanners]
        finish = self.finish if self.status == "ok" else ("cancelled" if self.status == "cancelled" else self.status)
        output = self.output_text() if self.answers else None
        return dataclasses.replace(
            self.identity(actor),
            model=record.ModelRef(model.name, model.quant, _params_ref(p)),
            prompt=record.PromptRef(
                type(call.prompt).__name__.removesuffix("Prompt").lower(),
                self.prompt_tokens,
                self.prompt_chars,
                self.prompt_hmac,
                self.prompt_text is not None,
                self.context,
                call.sources or None,
            ),
            guard=record.GuardRef(
                overall(results_in + results_out),
                call.surface,
                POLICY_VERSION,
                tuple(r.to_json() for r in results_in),
                tuple(r.to_json() for r in results_out),
            ),
            output=record.OutputRef(
                sum(a.tokens for a in self.answers),
                len(output) if output is not None else None,
                sum(a.chunks for a in self.answers),
                finish,
                audit.seal_content(output) if output is not None else None,
                tuple(
                    record.ChoiceRef(i, a.tokens, len(a.text()), a.finish, audit.seal_content(a.text())) for i, a in enumerate(self.answers)
                )
                if len(self.answers) > 1
                else None,
                sum(len(t.text()) for t in self.thoughts.values()) if self.thoughts else None,
                audit.seal_content("".join(t.text() for t in self.thoughts.values())) if self.thoughts else None,
            ),
            timing=record.Timing(
                iso_utc(self.started_at),
                round(self.ttft * 1000) if self.ttft is not None else None,
                round((time.monotonic() - self.started) * 1000),
            ),
            outcome=record.Outcome(self.status, self.error_code),
        )
