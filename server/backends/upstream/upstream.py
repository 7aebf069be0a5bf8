"""One OpenAI-compatible upstream (vLLM, SGLang, llama.cpp's server, Ollama, another Tandem):
what it serves, whether it answers, and one generation streamed from it as the engine's deltas.

Failures are sorted here by what may be done about them (`UpstreamError.retryable`): a refused
connection, a timeout, a 5xx or a reply that is not an OpenAI event stream says the upstream is in
trouble and another may serve the request; a 4xx says the request itself is wrong, and another
upstream would refuse it too.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import httpx
from httpx_sse import SSEError, aconnect_sse

from ...engine.types import ContextOverflow, Delta, EngineError, GenerationRequest, InvalidRequest, Messages
from ..protocol import BackendFailed
from .config import UpstreamConfig

HEALTH_PATHS = ("/health", "/healthz")  # vLLM, SGLang and llama.cpp's server; Tandem. Else /v1/models (slower on some).
FINISH_REASONS = {"stop": "stop", "length": "length", "eos": "stop"}  # anything else an upstream says ends as "stop"


class UpstreamError(BackendFailed):
    """A generation that an upstream failed. `retryable`: another upstream may serve it."""

    def __init__(self, message: str, kind: str, retryable: bool, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.kind, self.retryable, self.retry_after = kind, retryable, retry_after


@dataclass
class Discovered:
    """What an upstream said of itself."""

    model: str
    context_length: int | None
    fim: bool | None  # None: it does not say
    quant: str | None
    health_path: str
    infill: bool = False  # llama.cpp's native /infill answers (it builds the FIM prompt from its own tokens)


def _context_of(entry: dict[str, Any]) -> int | None:
    """The window an upstream's /v1/models entry reports: Tandem's `context_length`, vLLM's
    `max_model_len`, llama.cpp's `meta.n_ctx_train`; None when it says nothing."""
    meta: dict[str, Any] = entry["meta"] if isinstance(entry.get("meta"), dict) else {}
    for value in (entry.get("context_length"), entry.get("max_model_len"), meta.get("n_ctx"), meta.get("n_ctx_train")):
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


class Upstream:
    def __init__(self, url: str, config: UpstreamConfig, client: httpx.AsyncClient) -> None:
        self.url, self.config, self.client = url, config, client
        self.discovered: Discovered | None = None
        self.healthy = False
        self.outstanding = 0  # requests in flight here
        self.failures = 0  # consecutive failures: the backoff before the next check doubles with each
        self.retry_at = 0.0  # monotonic time before which a failed upstream is not checked again
        self.last_error: str | None = None
        self.headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}

    @property
    def model(self) -> str | None:
        return self.config.model or (self.discovered.model if self.discovered else None)

    # ----- health ----------------------------------------------------------------------------

    async def discover(self) -> Discovered:
        """Ask the upstream what it serves (/v1/models) and which health path it has."""
        timeout = httpx.Timeout(self.config.health_timeout, connect=self.config.connect_timeout)
        response = await self.client.get(f"{self.url}/v1/models", headers=self.headers, timeout=timeout)
        if response.status_code != 200:
            raise UpstreamError(f"/v1/models answered {response.status_code}", "status", True)
        try:
            data = response.json()["data"]
            entry: dict[str, Any] = next((m for m in data if m.get("id") == self.config.model), data[0])
            model = str(entry["id"])
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            raise UpstreamError("/v1/models did not answer a list of models", "protocol", True) from None
        health = "/v1/models"
        for path in HEALTH_PATHS:
            try:
                if (await self.client.get(f"{self.url}{path}", headers=self.headers, timeout=timeout)).status_code == 200:
                    health = path
                    break
            except httpx.HTTPError:
                pass
        fim = entry.get("fim") if isinstance(entry.get("fim"), bool) else None
        quant = entry.get("quantization") if isinstance(entry.get("quantization"), str) else None
        infill = fim is None and await self._has_infill(timeout)
        return Discovered(model, _context_of(entry), True if infill else fim, quant, health, infill)

    async def _has_infill(self, timeout: httpx.Timeout) -> bool:
        """Whether this is llama.cpp's server (its /props) with a model that fills in the middle: its
        /infill refuses a model without FIM tokens (501) before doing anything, so one token asked of
        an empty gap says which."""
        try:
            props = await self.client.get(f"{self.url}/props", headers=self.headers, timeout=timeout)
            if props.status_code != 200 or "default_generation_settings" not in props.json():
                return False
            probe = {"input_prefix": "", "input_suffix": "", "n_predict": 1, "temperature": 0, "stream": False}
            answer = await self.client.post(f"{self.url}/infill", json=probe, headers=self.headers, timeout=timeout)
            return answer.status_code == 200
        except (httpx.HTTPError, ValueError, TypeError):
            return False

    async def check(self) -> bool:
        """One health check: discovery the first time (or after it failed), else the health path."""
        try:
            if self.discovered is None:
                self.discovered = await self.discover()
            else:
                timeout = httpx.Timeout(self.config.health_timeout, connect=self.config.connect_timeout)
                response = await self.client.get(f"{self.url}{self.discovered.health_path}", headers=self.headers, timeout=timeout)
                if response.status_code != 200:
                    raise UpstreamError(f"{self.discovered.health_path} answered {response.status_code}", "status", True)
        except (httpx.HTTPError, UpstreamError) as exc:
            slow_path = self.discovered is not None and self.discovered.health_path == "/v1/models"
            if isinstance(exc, httpx.TimeoutException) and (self.outstanding or slow_path):
                # busy, not down: serving our requests, or (a server with no health route, whose /v1/models waits
                # for its one model, as llama-cpp-python's does) serving someone's. Refused connections and 5xx
                # still take it out; a wedged one fails its requests at --upstream-timeout, and that takes it out too.
                return self.healthy
            self.mark_failed(_describe(exc))
            return False
        self.mark_up()
        return True

    def mark_up(self) -> None:
        self.healthy, self.failures, self.retry_at, self.last_error = True, 0, 0.0, None

    def mark_failed(self, reason: str) -> None:
        """Out of the rotation until a check answers, each check later than the last (capped)."""
        self.failures += 1
        self.healthy, self.last_error = False, reason
        self.retry_at = time.monotonic() + min(self.config.max_backoff, 0.5 * 2 ** min(self.failures, 16))

    # ----- generation ------------------------------------------------------------------------

    def body(self, req: GenerationRequest) -> tuple[str, dict[str, Any]]:
        """The request for a generation: a chat for messages, llama.cpp's /infill for a gap where
        the upstream has it, else an OpenAI completion (with `suffix` for an upstream that says it
        fills in the middle)."""
        sampling: dict[str, Any] = {"temperature": req.temperature, "top_p": req.top_p, "stream": True}
        if req.seed is not None:
            sampling["seed"] = req.seed
        if req.stop:
            sampling["stop"] = list(req.stop)
        c = req.controls  # (the pool refuses the ones beyond OpenAI's own fields: `unsupported`)
        if c.presence_penalty:
            sampling["presence_penalty"] = c.presence_penalty
        if c.frequency_penalty:
            sampling["frequency_penalty"] = c.frequency_penalty
        if c.logit_bias:
            sampling["logit_bias"] = {str(token): bias for token, bias in c.logit_bias}
        if req.suffix is not None and self.discovered is not None and self.discovered.infill:
            # cache_prompt: the next keystroke's request shares this one's prefix
            gap = {"input_prefix": req.prompt, "input_suffix": req.suffix, "n_predict": req.max_tokens, "cache_prompt": True}
            return "/infill", {**sampling, **gap}
        body = {**sampling, "model": self.model, "max_tokens": req.max_tokens, "stream_options": {"include_usage": True}}
        if isinstance(req.prompt, Messages):
            return "/v1/chat/completions", {**body, "messages": [{"role": r, "content": c} for r, c in req.prompt.turns]}
        body["prompt"] = req.prompt
        if req.suffix is not None:
            body["suffix"] = req.suffix
        return "/v1/completions", body

    async def generate(self, req: GenerationRequest) -> AsyncGenerator[Delta]:
        """Stream one generation. Raises `UpstreamError` (or the engine's InvalidRequest /
        ContextOverflow for a request the upstream refused as invalid). Closing the iterator
        closes the connection, which is how every OpenAI server learns to stop."""
        path, body = self.body(req)
        read = _read_infill_event if path == "/infill" else functools.partial(_read_event, chat=path.endswith("chat/completions"))
        timeout = httpx.Timeout(self.config.read_timeout, connect=self.config.connect_timeout)
        tokens, events, counted, prompt_tokens, finish = 0, 0, 0, 0, None
        try:
            async with aconnect_sse(self.client, "POST", f"{self.url}{path}", json=body, headers=self.headers, timeout=timeout) as source:
                response = source.response
                if response.status_code != 200:
                    raise _refusal(response.status_code, (await response.aread())[:2000], response.headers.get("retry-after"))
                async for event in source.aiter_sse():
                    if event.data == "[DONE]":
                        break
                    if not event.data:
                        continue
                    text, reason, usage = read(event.data)
                    events += bool(text)
                    if usage is not None:  # the upstream's own count (usually in the last event)
                        prompt_tokens = _count(usage.get("prompt_tokens")) or prompt_tokens
                        counted = _count(usage.get("completion_tokens")) or counted
                    tokens = counted or events  # until then: one event per token, as the servers send them
                    if reason is not None:
                        finish = FINISH_REASONS.get(reason, "stop")
                    if text:
                        yield Delta(text, tokens, None, prompt_tokens)
        except SSEError as exc:
            raise UpstreamError(f"not an event stream: {exc}", "protocol", True) from None
        except httpx.TimeoutException as exc:
            raise UpstreamError(f"no answer within {self.config.read_timeout:g} s ({type(exc).__name__})", "timeout", True) from None
        except httpx.HTTPError as exc:
            raise UpstreamError(_describe(exc), "connect" if isinstance(exc, httpx.ConnectError) else "transport", True) from None
        if finish is None:
            raise UpstreamError("the stream ended without a finish reason (the upstream cut the answer)", "protocol", True)
        yield Delta("", tokens, finish, prompt_tokens)


def _event_object(data: str) -> dict[str, Any]:
    """One stream event's JSON object; not JSON, not an object, or an `error` event raises."""
    try:
        event = json.loads(data)
    except ValueError:
        raise UpstreamError(f"an event that is not JSON: {data[:80]!r}", "protocol", True) from None
    if not isinstance(event, dict):
        raise UpstreamError(f"an event that is not an object: {data[:80]!r}", "protocol", True)
    if "error" in event:
        error = event["error"]
        message = error.get("message") if isinstance(error, dict) else str(error)
        raise UpstreamError(f"the upstream reported an error mid-stream: {str(message)[:300]}", "stream_error", True)
    return event


def _read_event(data: str, chat: bool) -> tuple[str, str | None, dict[str, Any] | None]:
    """(text, finish reason, usage) of one OpenAI stream event; a shape that is not OpenAI's raises."""
    event = _event_object(data)
    usage = event.get("usage") if isinstance(event.get("usage"), dict) else None
    choices = event.get("choices")
    if not isinstance(choices, list):
        raise UpstreamError(f"an event without choices: {data[:80]!r}", "protocol", True)
    if not choices:
        return "", None, usage  # the usage-only event
    choice = choices[0]
    if not isinstance(choice, dict):
        raise UpstreamError(f"a choice that is not an object: {data[:80]!r}", "protocol", True)
    delta = choice.get("delta") or {}
    if chat and not isinstance(delta, dict):
        raise UpstreamError(f"a delta that is not an object: {data[:80]!r}", "protocol", True)
    piece = delta.get("content") if chat else choice.get("text")
    if piece is not None and not isinstance(piece, str):
        raise UpstreamError(f"text that is not a string: {data[:80]!r}", "protocol", True)
    reason = choice.get("finish_reason")
    return piece or "", reason if isinstance(reason, str) else None, usage


def _read_infill_event(data: str) -> tuple[str, str | None, dict[str, Any] | None]:
    """(text, finish reason, usage) of one event of llama.cpp's own stream (/infill): `content`,
    and `stop` with `stop_type` (eos, word, limit) and the counts on the last."""
    event = _event_object(data)
    content = event.get("content", "")
    if not isinstance(content, str):
        raise UpstreamError(f"text that is not a string: {data[:80]!r}", "protocol", True)
    if event.get("stop") is not True:
        return content, None, None
    usage = {"prompt_tokens": event.get("tokens_evaluated"), "completion_tokens": event.get("tokens_predicted")}
    return content, "length" if event.get("stop_type") == "limit" else "stop", usage


def _refusal(status: int, raw: bytes, retry_after: str | None) -> EngineError:
    """An upstream's non-200 answer as the engine's error: 4xx refuse the request itself (not
    retried), 429/5xx are the upstream's trouble (retried on another)."""
    message = raw.decode("utf-8", "replace")
    code = None
    try:
        parsed = json.loads(message)
        error = parsed.get("error", parsed) if isinstance(parsed, dict) else parsed
        if isinstance(error, dict):
            code = error.get("code")
            message = str(error.get("message") or error.get("detail") or message)
        elif isinstance(parsed, dict) and "detail" in parsed:
            message = str(parsed["detail"])
    except ValueError:
        pass
    message = message.strip()[:500] or f"HTTP {status}"
    if status == 429 or status >= 500:
        after = int(retry_after) if retry_after and retry_after.isdigit() else None
        return UpstreamError(f"HTTP {status}: {message}", "status", True, retry_after=after)
    if code == "context_length_exceeded" or "context length" in message.lower() or "context window" in message.lower():
        return ContextOverflow(f"the upstream refused the prompt: {message}", "messages")
    return InvalidRequest(f"the upstream refused the request (HTTP {status}): {message}")


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
