"""The OpenAI-compatible routes: /v1/completions, /v1/chat/completions, /v1/models.

Each handler turns a validated body into one gateway `Call` (the gateway guards, generates and
audits it) and has `openai_shapes.py` write the deltas as OpenAI's JSON or server-sent events;
`api_calls.py` follows the call and stops it when the client goes away.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .api_calls import actor_of, deltas, open_call, parse, refused, sse, state_of, until_disconnect
from .api_tools import ToolUse, tool_use, tools_message
from .errors import APIError, from_failure
from .gateway import Call, CallFailed, ChatPrompt, FimPrompt, ModelInfo, Params, Priority, TextPrompt, calls_message
from .openai_shapes import ChatShape, Choice, CompletionShape, Shape
from .schemas import ChatBody, CompletionBody, _Sampling
from .state import AppState


def _check_model(state: AppState, body: _Sampling, surface: str) -> None:
    served = state.gateway.model_for(surface).name
    if body.model is not None and body.model not in (served, "default"):
        raise APIError(
            404,
            f"model {body.model!r} does not exist; this endpoint serves {served!r}",
            param="model",
            code="model_not_found",
        )


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


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
    affinity = request.headers.get("x-tandem-affinity", "")[:128] or body.prompt_cache_key
    return Call(surface, actor_of(request, body), prompt, params, priority, request_id=rid, affinity=affinity)


async def _respond(request: Request, body: _Sampling, call: Call, shape: Shape, keep: int | None = None) -> Response:
    """Shared by both endpoints: stream the shape's chunks or return its whole response. `keep`:
    of the call's answers, return only this many, the likeliest (best_of)."""
    state = state_of(request)
    first, gen = await until_disconnect(request, open_call(state, call))  # a queued request whose client left must not run
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    n = call.params.n

    if body.stream:

        async def events() -> AsyncIterator[dict[str, Any]]:
            for i in range(n):
                if (opening := shape.opening(i)) is not None:
                    yield opening
            tokens, prompt_tokens = [0] * n, first.prompt_tokens
            async for delta in deltas(first, gen):
                tokens[delta.index], prompt_tokens = delta.tokens, delta.prompt_tokens or prompt_tokens
                if (event := shape.chunk(delta)) is not None:
                    yield event
            if include_usage:
                yield shape.usage_chunk(_usage(prompt_tokens, sum(tokens)))

        return sse(events())

    async def collect() -> tuple[list[Choice], int]:
        choices, prompt_tokens = [Choice(i) for i in range(n)], 0
        async for delta in deltas(first, gen):
            choices[delta.index].add(delta)
            prompt_tokens = delta.prompt_tokens or prompt_tokens
        return choices, prompt_tokens

    try:
        choices, prompt_tokens = await until_disconnect(request, collect())
    except CallFailed as exc:
        raise from_failure(exc) from None
    usage = _usage(prompt_tokens, sum(c.tokens for c in choices))
    if keep is not None and keep < len(choices):
        best = sorted(choices, key=lambda c: c.score, reverse=True)[:keep]
        choices = [dataclasses.replace(c, index=i) for i, c in enumerate(best)]
    return JSONResponse(shape.whole(choices, usage))


async def completions(request: Request) -> Response:
    state = state_of(request)
    rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    body = await parse(request, CompletionBody, "ide_completion", rid)
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
    if body.max_tokens == 0 and not (body.echo and n == 1 and not ranked):
        raise APIError(
            400,
            "max_tokens 0 asks for the prompt's own logprobs only: it needs echo, and one answer",
            param="max_tokens",
            code="invalid_value",
        )
    logprobs = body.logprobs if body.logprobs is not None else (0 if ranked else None)  # ranking needs each answer's logprob
    guarded = FimPrompt(prompt, body.suffix) if body.suffix is not None else TextPrompt(prompt)  # type: ignore[arg-type]
    priority = Priority.BATCH if body.priority == "background" else Priority.INTERACTIVE
    params = _params(body, body.max_tokens, logprobs, bool(body.echo), best_of if ranked else n)  # type: ignore[arg-type]
    call = _call(request, body, "ide_completion", guarded, params, priority, rid)
    shape = CompletionShape(rid, created, model.name, body.logprobs is not None)
    return await _respond(request, body, call, shape, keep=n if ranked else None)


async def chat_completions(request: Request) -> Response:
    state = state_of(request)
    rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    body = await parse(request, ChatBody, "support_chat", rid)
    _check_model(state, body, "support_chat")
    model = state.gateway.model_for("support_chat")
    if not model.chat:
        raise APIError(400, f"model {model.name!r} has no chat template; use /v1/completions", code="no_chat_template")
    if body.top_logprobs is not None and not body.logprobs:
        raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs", code="invalid_value")
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    params = _params(body, max_tokens, logprobs, n=body.n or 1)
    try:
        tools = tool_use(body.tools, body.tool_choice, body.parallel_tool_calls, params.grammar is not None)
        messages = _messages(body, tools)
    except APIError as exc:
        refused(request, "support_chat", rid, exc)
        raise
    if tools is not None:
        params = dataclasses.replace(params, grammar=tools.grammar or params.grammar, tool_choice=tools.choice)
    call = _call(request, body, "support_chat", ChatPrompt(messages), params, Priority.CHAT, rid)
    reading = tools.reading if tools is not None else None
    return await _respond(request, body, call, ChatShape(rid, created, model.name, bool(body.logprobs), reading))


def _messages(body: ChatBody, tools: ToolUse | None) -> tuple[tuple[str, str], ...]:
    """The conversation as the gateway takes it: the tools offered first, each message's text, an
    assistant's calls after it (`api_tools.py`)."""
    out = tools_message(tools)
    for i, m in enumerate(body.messages):
        out.append(("system" if m.role == "developer" else m.role, m.text(f"messages.{i}")))
        if m.tool_calls:
            if m.role != "assistant":
                raise APIError(400, f"messages.{i}: only an assistant's message has tool_calls", param=f"messages.{i}.tool_calls")
            calls = [
                (c.id, c.function.name, c.function.checked(f"messages.{i}.tool_calls.{j}.function").arguments)
                for j, c in enumerate(m.tool_calls)
            ]
            out.append(calls_message(calls))
    return tuple(out)


ENDPOINTS = {"ide_completion": "completions", "support_chat": "chat"}  # a model's surfaces, as clients know them


async def list_models(request: Request) -> Response:
    state = state_of(request)
    return JSONResponse({"object": "list", "data": [_model_entry(state, m, surfaces) for m, surfaces in state.gateway.models()]})


async def get_model(request: Request) -> Response:
    state = state_of(request)
    name = request.path_params["model"]
    for m, surfaces in state.gateway.models():
        if m.name == name:
            return JSONResponse(_model_entry(state, m, surfaces))
    served = ", ".join(repr(m.name) for m, _ in state.gateway.models())
    raise APIError(404, f"model {name[:200]!r} does not exist; this server serves {served}", param="model", code="model_not_found")


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
        "tools": m.tools is not None,  # /v1/chat/completions serves tools (the template teaches a format read back here)
        "endpoints": [ENDPOINTS[s] for s in surfaces],  # which of /v1/completions and /v1/chat/completions it serves
    }


routes = [
    Route("/completions", completions, methods=["POST"]),
    Route("/chat/completions", chat_completions, methods=["POST"]),
    Route("/models", list_models, methods=["GET"]),
    Route("/models/{model:path}", get_model, methods=["GET"]),
]
