"""The OpenAI-compatible routes: /v1/completions, /v1/chat/completions, /v1/models.

Each handler turns a validated body into one gateway `Call` (the gateway guards, generates and
audits it) and shapes the deltas as OpenAI's JSON or server-sent events. A client that goes
away cancels its generation, wherever it is: queued or prefilling (before the first delta,
`_until_disconnect` watches), streaming (Starlette cancels the response task) or being collected
into a whole answer (`_until_disconnect` again).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .errors import APIError, from_failure
from .gateway import (
    Actor,
    Call,
    CallFailed,
    Candidate,
    ChatPrompt,
    Delta,
    FimPrompt,
    ModelInfo,
    Params,
    Priority,
    PromptEcho,
    TextPrompt,
    TokenLogprob,
)
from .schemas import Body, ChatBody, CompletionBody, DetokenizeBody, TokenizeBody, _Sampling, parse_body, read_body
from .state import AppState


def _state(request: Request) -> AppState:
    return request.state.tandem  # type: ignore[no-any-return]


def _check_model(state: AppState, body: _Sampling, surface: str) -> None:
    served = state.gateway.model_for(surface).name
    if body.model is not None and body.model not in (served, "default"):
        raise APIError(
            404,
            f"model {body.model!r} does not exist; this endpoint serves {served!r}",
            param="model",
            code="model_not_found",
        )


async def _open(state: AppState, call: Call) -> tuple[Delta, AsyncIterator[Delta]]:
    """Start a call and wait for its first delta, so that refusals become HTTP errors
    before any response header is sent."""
    gen = state.gateway.stream(call)
    try:
        first = await gen.__anext__()
    except CallFailed as exc:
        raise from_failure(exc) from None
    return first, gen


async def _deltas(first: Delta, gen: AsyncIterator[Delta]) -> AsyncIterator[Delta]:
    try:
        yield first
        async for delta in gen:  # (with n answers, the first to finish is not the last delta)
            yield delta
    finally:
        await gen.aclose()  # type: ignore[attr-defined]


async def _until_disconnect(request: Request, work: Any) -> Any:
    """Run `work` to completion, or cancel it when the client disconnects first."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task, watcher = asyncio.ensure_future(work), asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task  # the generation is closed (and its slot freed) before we go on
    if task.cancelled():
        raise APIError(499, "client closed the request", code="client_closed_request")
    return task.result()


def _sse(events: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    async def body() -> AsyncIterator[str]:
        try:
            async for event in events:
                yield f"data: {json.dumps(event, ensure_ascii=False)}\n\n"
        except CallFailed as exc:  # after the headers: the error travels in the stream
            err = from_failure(exc)
            yield f"data: {json.dumps({'error': {'message': err.message, 'type': err.type, 'code': err.code}})}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _actor(request: Request, body: _Sampling) -> Actor:
    client = request.headers.get("x-tandem-client") or request.headers.get("user-agent")
    kind = "ide_user" if request.headers.get("x-tandem-client", "").startswith("tandem-lsp") else "api_client"
    return Actor(kind, user=body.user, ip=request.client.host if request.client else None, client=client[:120] if client else None)


async def _parse(request: Request, body_type: type[Body], surface: str, rid: str) -> Body:
    """The validated body; a body refused here is audited as a refused request before the 4xx goes out."""
    try:
        return parse_body(await read_body(request), body_type)
    except APIError as exc:
        _refused(request, surface, rid, exc)
        raise


def _refused(request: Request, surface: str, rid: str, exc: APIError) -> None:
    client = request.headers.get("x-tandem-client") or request.headers.get("user-agent")
    actor = Actor("api_client", ip=request.client.host if request.client else None, client=client[:120] if client else None)
    _state(request).gateway.record_refusal(surface, actor, rid, exc.code, exc.param)


def _params(body: _Sampling, max_tokens: int | None, logprobs: int | None = None, echo: bool = False, n: int = 1) -> Params:
    return Params(
        max_tokens=max_tokens,
        temperature=body.temperature if body.temperature is not None else 1.0,  # OpenAI's default
        top_p=body.top_p if body.top_p is not None else 1.0,
        seed=body.seed,
        stop=body.stop_strings(),
        controls=body.controls(),
        logprobs=logprobs,
        echo=echo,
        n=n,
        grammar=body.grammar(),
    )


def _call(request: Request, body: _Sampling, surface: str, prompt: Any, params: Params, priority: Priority, rid: str) -> Call:
    # X-Tandem-Affinity: calls that should share an upstream (the language server sends a hash of the document)
    affinity = request.headers.get("x-tandem-affinity", "")[:128] or None
    return Call(surface, _actor(request, body), prompt, params, priority, request_id=rid, affinity=affinity)


@dataclass
class Choice:
    """One answer as the response is built: what came of it so far."""

    index: int
    parts: list[str] = field(default_factory=list)
    thinking: list[str] = field(default_factory=list)  # a reasoning model's, apart from the answer
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish: str | None = None
    tokens: int = 0
    echo: PromptEcho | None = None

    def add(self, delta: Delta) -> None:
        self.parts.append(delta.text)
        self.thinking.append(delta.reasoning)
        self.logprobs.extend(delta.logprobs)
        self.tokens = delta.tokens
        self.echo = delta.prompt or self.echo
        if delta.finish_reason is not None:
            self.finish = delta.finish_reason

    @property
    def text(self) -> str:
        return "".join(self.parts)

    @property
    def score(self) -> float:
        """The answer's log-probability (best_of ranks by it)."""
        return sum(e.chosen.logprob or 0.0 for e in self.logprobs)


class Shape(Protocol):
    """How one endpoint writes its answers: as stream chunks and as a whole response."""

    def opening(self, index: int) -> dict[str, Any] | None: ...

    def chunk(self, delta: Delta) -> dict[str, Any] | None: ...

    def usage_chunk(self, usage: dict[str, int]) -> dict[str, Any]: ...

    def whole(self, choices: list[Choice], usage: dict[str, int]) -> dict[str, Any]: ...


async def _respond(request: Request, body: _Sampling, call: Call, shape: Shape, keep: int | None = None) -> Response:
    """Shared by both endpoints: stream the shape's chunks or return its whole response. `keep`:
    of the call's answers, return only this many, the likeliest (best_of)."""
    state = _state(request)
    first, gen = await _until_disconnect(request, _open(state, call))  # a queued request whose client left must not run
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    n = call.params.n

    if body.stream:

        async def events() -> AsyncIterator[dict[str, Any]]:
            for i in range(n):
                if (opening := shape.opening(i)) is not None:
                    yield opening
            tokens, prompt_tokens = [0] * n, first.prompt_tokens
            async for delta in _deltas(first, gen):
                tokens[delta.index], prompt_tokens = delta.tokens, delta.prompt_tokens or prompt_tokens
                if (event := shape.chunk(delta)) is not None:
                    yield event
            if include_usage:
                yield shape.usage_chunk(_usage(prompt_tokens, sum(tokens)))

        return _sse(events())

    async def collect() -> tuple[list[Choice], int]:
        choices, prompt_tokens = [Choice(i) for i in range(n)], 0
        async for delta in _deltas(first, gen):
            choices[delta.index].add(delta)
            prompt_tokens = delta.prompt_tokens or prompt_tokens
        return choices, prompt_tokens

    try:
        choices, prompt_tokens = await _until_disconnect(request, collect())
    except CallFailed as exc:
        raise from_failure(exc) from None
    usage = _usage(prompt_tokens, sum(c.tokens for c in choices))
    if keep is not None and keep < len(choices):
        best = sorted(choices, key=lambda c: c.score, reverse=True)[:keep]
        choices = [dataclasses.replace(c, index=i) for i, c in enumerate(best)]
    return JSONResponse(shape.whole(choices, usage))


def _candidate(c: Candidate) -> dict[str, Any]:
    return {"token": c.token, "logprob": c.logprob, "bytes": list(c.bytes) if c.token_id >= 0 else None}


def chat_logprobs(entries: tuple[TokenLogprob, ...] | list[TokenLogprob]) -> dict[str, Any]:
    """OpenAI's chat logprobs: each token with its alternatives."""
    return {"content": [{**_candidate(e.chosen), "top_logprobs": [_candidate(c) for c in e.top]} for e in entries], "refusal": None}


def completion_logprobs(entries: list[TokenLogprob], offset: int) -> dict[str, Any]:
    """The legacy completions shape: parallel lists, each token's alternatives as a dict that
    also holds the token chosen (so up to logprobs + 1 entries, as OpenAI and vLLM send them),
    and each token's offset in the returned text."""
    out: dict[str, list[Any]] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for e in entries:
        out["tokens"].append(e.chosen.token)
        out["token_logprobs"].append(e.chosen.logprob)
        top = None if e.chosen.logprob is None else {c.token: c.logprob for c in (*e.top, e.chosen)}
        out["top_logprobs"].append(top)
        out["text_offset"].append(offset)
        offset += len(e.chosen.token)
    return out


class _CompletionShape:
    def __init__(self, rid: str, created: int, model: str, logprobs: bool) -> None:
        self.rid, self.created, self.model, self.logprobs = rid, created, model, logprobs
        self.offsets: dict[int, int] = {}  # each answer's text so far, for text_offset

    def _event(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.rid, "object": "text_completion", "created": self.created, "model": self.model, "choices": choices}

    def opening(self, index: int) -> dict[str, Any] | None:
        return None

    def _text_and_logprobs(self, index: int, text: str, entries: list[TokenLogprob], echo: PromptEcho | None) -> tuple[str, Any]:
        if echo is not None:
            text, entries = echo.text + text, [*(echo.logprobs or ()), *entries]
        offset = self.offsets.get(index, 0)
        self.offsets[index] = offset + len(text)
        return text, completion_logprobs(entries, offset) if self.logprobs else None

    def chunk(self, delta: Delta) -> dict[str, Any] | None:
        if not (delta.text or delta.finish_reason or delta.logprobs or delta.prompt):
            return None
        text, logprobs = self._text_and_logprobs(delta.index, delta.text, list(delta.logprobs), delta.prompt)
        return self._event([{"index": delta.index, "text": text, "logprobs": logprobs, "finish_reason": delta.finish_reason}])

    def usage_chunk(self, usage: dict[str, int]) -> dict[str, Any]:
        return {**self._event([]), "usage": usage}

    def whole(self, choices: list[Choice], usage: dict[str, int]) -> dict[str, Any]:
        out = []
        for c in choices:
            self.offsets.pop(c.index, None)
            text, logprobs = self._text_and_logprobs(c.index, c.text, c.logprobs, c.echo)
            out.append({"index": c.index, "text": text, "logprobs": logprobs, "finish_reason": c.finish or "stop"})
        return {**self._event(out), "usage": usage}


async def completions(request: Request) -> Response:
    state = _state(request)
    rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    body = await _parse(request, CompletionBody, "ide_completion", rid)
    _check_model(state, body, "ide_completion")
    model = state.gateway.model_for("ide_completion")
    prompt = body.single_prompt()
    if body.suffix is not None:
        if not model.fim:
            raise APIError(
                400,
                f"model {model.name!r} has no fill-in-the-middle tokens, so `suffix` is not supported; send the prefix alone",
                param="suffix",
                code="fim_not_supported",
            )
        if not isinstance(prompt, str):
            raise APIError(400, "`suffix` needs a text prompt", param="prompt")
        if body.echo:
            raise APIError(400, "`echo` cannot be used with `suffix`", param="echo")
    n, best_of = body.n or 1, body.best_of
    if best_of is not None and best_of < n:
        raise APIError(400, f"best_of ({best_of}) must be at least n ({n})", param="best_of", code="invalid_value")
    if best_of is not None and best_of > n and body.stream:
        raise APIError(400, "best_of cannot be used with stream: the best answers are known only at the end", param="best_of")
    ranked = best_of is not None and best_of > n
    logprobs = body.logprobs if body.logprobs is not None else (0 if ranked else None)  # ranking needs each answer's logprob
    guarded = FimPrompt(prompt, body.suffix) if body.suffix is not None else TextPrompt(prompt)  # type: ignore[arg-type]
    priority = Priority.BATCH if body.priority == "background" else Priority.INTERACTIVE
    params = _params(body, body.max_tokens, logprobs, bool(body.echo), best_of if ranked else n)  # type: ignore[arg-type]
    call = _call(request, body, "ide_completion", guarded, params, priority, rid)
    shape = _CompletionShape(rid, created, model.name, body.logprobs is not None)
    return await _respond(request, body, call, shape, keep=n if ranked else None)


class _ChatShape:
    def __init__(self, rid: str, created: int, model: str, logprobs: bool) -> None:
        self.rid, self.created, self.model, self.logprobs = rid, created, model, logprobs

    def _event(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.rid, "object": "chat.completion.chunk", "created": self.created, "model": self.model, "choices": choices}

    def opening(self, index: int) -> dict[str, Any] | None:  # chat opens each answer with the assistant's role
        return self._event([{"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}])

    def chunk(self, delta: Delta) -> dict[str, Any] | None:
        if not (delta.text or delta.reasoning or delta.finish_reason or delta.logprobs):
            return None
        logprobs = chat_logprobs(delta.logprobs) if self.logprobs else None
        content = {"content": delta.text} if delta.text else {}
        if delta.reasoning:
            content |= _reasoning(delta.reasoning)
        return self._event([{"index": delta.index, "delta": content, "logprobs": logprobs, "finish_reason": delta.finish_reason}])

    def usage_chunk(self, usage: dict[str, int]) -> dict[str, Any]:
        return {**self._event([]), "usage": usage}

    def whole(self, choices: list[Choice], usage: dict[str, int]) -> dict[str, Any]:
        return {
            "id": self.rid,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": c.index,
                    "message": {"role": "assistant", "content": c.text, **(_reasoning("".join(c.thinking)) if any(c.thinking) else {})},
                    "logprobs": chat_logprobs(c.logprobs) if self.logprobs else None,
                    "finish_reason": c.finish or "stop",
                }
                for c in choices
            ],
            "usage": usage,
        }


def _reasoning(text: str) -> dict[str, str]:
    """A reasoning model's thinking, under the name vLLM and DeepSeek's API use and the shorter one
    newer clients read."""
    return {"reasoning_content": text, "reasoning": text}


async def chat_completions(request: Request) -> Response:
    state = _state(request)
    rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    body = await _parse(request, ChatBody, "support_chat", rid)
    _check_model(state, body, "support_chat")
    model = state.gateway.model_for("support_chat")
    if not model.chat:
        raise APIError(400, f"model {model.name!r} has no chat template; use /v1/completions", code="no_chat_template")
    try:
        messages = tuple(("system" if m.role == "developer" else m.role, m.text(f"messages.{i}")) for i, m in enumerate(body.messages))
    except APIError as exc:
        _refused(request, "support_chat", rid, exc)
        raise
    if body.top_logprobs is not None and not body.logprobs:
        raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs", code="invalid_value")
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    params = _params(body, max_tokens, logprobs, n=body.n or 1)
    call = _call(request, body, "support_chat", ChatPrompt(messages), params, Priority.CHAT, rid)
    return await _respond(request, body, call, _ChatShape(rid, created, model.name, bool(body.logprobs)))


ENDPOINTS = {"ide_completion": "completions", "support_chat": "chat"}  # a model's surfaces, as clients know them


async def list_models(request: Request) -> Response:
    state = _state(request)
    return JSONResponse({"object": "list", "data": [_model_entry(state, m, surfaces) for m, surfaces in state.gateway.models()]})


async def get_model(request: Request) -> Response:
    state = _state(request)
    name = request.path_params["model"]
    for m, surfaces in state.gateway.models():
        if m.name == name:
            return JSONResponse(_model_entry(state, m, surfaces))
    served = ", ".join(repr(m.name) for m, _ in state.gateway.models())
    raise APIError(404, f"model {name[:200]!r} does not exist; this server serves {served}", param="model", code="model_not_found")


def _surface_of(state: AppState, model: str | None) -> str:
    """The surface whose model a tokenizer request names (the completion model's by default)."""
    if model is None or model in ("default", state.gateway.model_for("ide_completion").name):
        return "ide_completion"
    if model == state.gateway.model_for("support_chat").name:
        return "support_chat"
    raise APIError(404, f"model {model[:200]!r} does not exist on this server", param="model", code="model_not_found")


async def tokenize(request: Request) -> Response:
    state = _state(request)
    body = parse_body(await read_body(request), TokenizeBody)
    surface = _surface_of(state, body.model)
    text = body.text()
    messages = None
    if body.messages is not None:
        messages = tuple(("system" if m.role == "developer" else m.role, m.text(f"messages.{i}")) for i, m in enumerate(body.messages))
    try:
        ids = await asyncio.to_thread(state.gateway.tokenize, surface, text, messages, body.special())
        pieces = [state.gateway.detokenize(surface, [i]) for i in ids] if body.with_pieces or body.return_token_strs else []
    except CallFailed as exc:
        raise from_failure(exc) from None
    out: dict[str, Any] = {"tokens": [{"id": i, "piece": p} for i, p in zip(ids, pieces)] if body.with_pieces else ids}
    out.update(count=len(ids), max_model_len=state.gateway.model_for(surface).context_length)
    if body.return_token_strs:
        out["token_strs"] = pieces
    return JSONResponse(out)


async def detokenize(request: Request) -> Response:
    state = _state(request)
    body = parse_body(await read_body(request), DetokenizeBody)
    try:
        text = state.gateway.detokenize(_surface_of(state, body.model), body.tokens)
    except CallFailed as exc:
        raise from_failure(exc) from None
    return JSONResponse({"prompt": text, "content": text})  # vLLM's name and llama.cpp's


def _model_entry(state: AppState, m: ModelInfo, surfaces: list[str]) -> dict[str, Any]:
    return {
        "id": m.name,
        "object": "model",
        "created": state.started,
        "owned_by": "tandem",
        # the window the gateway enforces (a configured --context-length), which clients budget against, not the model's native one
        "context_length": m.context_length,
        "native_context_length": m.native_context_length,
        "quantization": m.quant,
        "memory_footprint_bytes": m.footprint_bytes,
        "fim": m.fim,
        "chat": m.chat,
        "backend": m.backend,  # local: the in-process engine; upstream: a pool of OpenAI-compatible servers
        "token_count": m.token_count,  # tokenizer (exact), upstream (its tokenize endpoint) or estimate
        "endpoints": [ENDPOINTS[s] for s in surfaces],  # which of /v1/completions and /v1/chat/completions it serves
    }


routes = [
    Route("/completions", completions, methods=["POST"]),
    Route("/chat/completions", chat_completions, methods=["POST"]),
    Route("/models", list_models, methods=["GET"]),
    Route("/models/{model:path}", get_model, methods=["GET"]),
]
token_routes = [  # at the root, where vLLM and llama.cpp serve them
    Route("/tokenize", tokenize, methods=["POST"]),
    Route("/detokenize", detokenize, methods=["POST"]),
]
