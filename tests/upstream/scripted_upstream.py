"""An OpenAI-compatible server whose behaviour a test sets: well-behaved, or failing in each way a
real upstream can (5xx, 4xx, garbage, not an event stream, silence, a cut mid-answer, "busy").
It speaks the wire format the real servers do (vLLM's /health and /tokenize, OpenAI's event
stream), on a real socket; the real engines nobody here wrote are tests/upstream/test_llama_cpp.py's."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncGenerator
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

MODES = ("ok", "error500", "error400", "busy429", "garbage", "not_sse", "hang", "cut")


class ScriptedUpstream:
    def __init__(self, name: str, model: str = "scripted-model", context_length: int | None = 4096) -> None:
        self.name, self.model, self.context_length = name, model, context_length
        self.mode = "ok"
        self.pieces: list[str] = ["Hello", " from", f" {name}", "."]
        self.delay = 0.0  # seconds per piece
        self.released = threading.Event()  # "hang" answers nothing until this is set (the fixture sets it at the end)
        self.cut_after = 2  # "cut": pieces sent before the connection is dropped
        self.healthy = True
        self.health_open = threading.Event()  # /health answers only while this is set (cleared: a server that
        self.health_open.set()  # queues the check behind the requests it is serving)
        self.tokenize = True  # a vLLM-style /tokenize
        self.fim = False
        self.llama_cpp = False  # also llama.cpp's own /props and /infill
        self.fim_tokens = True  # (llama.cpp) whether the model has the FIM tokens /infill needs
        self.paths: list[str] = []  # the route of each generation asked for
        self.fail_from: int | None = None  # from this request on (1-based), answer as "error500"
        self.requests: list[dict[str, Any]] = []
        self.streaming = 0  # answers being streamed now
        self.closed_early = 0  # answers whose client went away before the end
        self.lock = threading.Lock()

    # ----- the app -------------------------------------------------------------------------------

    def release(self) -> None:
        """Let every held answer and check go (the end of a test)."""
        self.released.set()
        self.health_open.set()

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/health", self.health),
                Route("/v1/models", self.models),
                Route("/tokenize", self.tokenize_route, methods=["POST"]),
                Route("/v1/completions", self.generate, methods=["POST"]),
                Route("/v1/chat/completions", self.generate, methods=["POST"]),
                Route("/props", self.props),
                Route("/infill", self.generate, methods=["POST"]),
            ]
        )

    async def health(self, request: Request) -> Response:
        if not self.health_open.is_set():
            await anyio.to_thread.run_sync(self.health_open.wait)
        return PlainTextResponse("ok" if self.healthy else "down", status_code=200 if self.healthy else 503)

    async def models(self, request: Request) -> Response:
        if not self.healthy:
            return PlainTextResponse("down", status_code=503)
        entry: dict[str, Any] = {"id": self.model, "object": "model", "owned_by": "scripted"}
        if self.context_length:
            entry["max_model_len"] = self.context_length  # as vLLM says it
        if self.fim:
            entry["fim"] = True  # as Tandem says it
        return JSONResponse({"object": "list", "data": [entry]})

    async def props(self, request: Request) -> Response:
        if not self.llama_cpp:
            return PlainTextResponse("not found", status_code=404)
        return JSONResponse({"default_generation_settings": {"n_ctx": self.context_length}, "total_slots": 4, "model_path": self.model})

    async def tokenize_route(self, request: Request) -> Response:
        if not self.tokenize:
            return PlainTextResponse("not found", status_code=404)
        body = await request.json()
        text = body.get("prompt", "")
        return JSONResponse({"tokens": list(range(len(text.split()))), "count": len(text.split()), "max_model_len": self.context_length})

    async def generate(self, request: Request) -> Response:
        body = await request.json()
        infill = request.url.path == "/infill"
        if infill and not self.llama_cpp:
            return PlainTextResponse("not found", status_code=404)
        if infill and not self.fim_tokens:  # as llama.cpp refuses it, before anything else
            message = "Infill is not supported by this model: prefix token is missing. "
            return JSONResponse({"error": {"code": 501, "message": message, "type": "not_supported_error"}}, status_code=501)
        if infill and not body.get("stream"):  # (a probe: one token)
            return JSONResponse({"content": "x", "stop": True, "stop_type": "limit", "tokens_predicted": 1})
        with self.lock:
            self.requests.append(body)
            self.paths.append(request.url.path)
            mode = "error500" if self.fail_from is not None and len(self.requests) >= self.fail_from else self.mode
        if mode == "error500":
            return JSONResponse({"error": {"message": "CUDA out of memory (scripted)", "type": "server_error"}}, status_code=500)
        if mode == "error400":
            return JSONResponse(
                {"error": {"message": "max_tokens is too large (scripted)", "type": "invalid_request_error"}}, status_code=400
            )
        if mode == "busy429":
            return JSONResponse({"error": {"message": "busy (scripted)"}}, status_code=429, headers={"Retry-After": "3"})
        if mode == "not_sse":
            return PlainTextResponse("<html>a proxy's error page</html>", status_code=200)
        if mode == "hang":
            await anyio.to_thread.run_sync(self.released.wait)
        return _EventStream(self, body, mode)

    async def _events(self, body: dict[str, Any], chat: bool, mode: str) -> AsyncGenerator[str]:
        if mode == "garbage":
            yield "data: {this is not json\n\n"
            return
        limit = body.get("n_predict", body.get("max_tokens", 16))
        pieces = self.pieces[:limit]
        for i, piece in enumerate(pieces):
            if mode == "cut" and i == self.cut_after:
                raise ConnectionAbortedError("scripted cut")  # uvicorn drops the connection mid-body
            await asyncio.sleep(self.delay)
            if "input_prefix" in body:  # llama.cpp's own stream
                yield "data: " + json.dumps({"index": 0, "content": piece, "stop": False, "tokens_predicted": i + 1}) + "\n\n"
                continue
            yield "data: " + json.dumps(self._chunk(piece, None, chat)) + "\n\n"
        finish = "length" if len(pieces) >= limit else "stop"
        if "input_prefix" in body:
            last = {"content": "", "stop": True, "stop_type": "limit" if finish == "length" else "eos", "tokens_predicted": len(pieces),
                    "tokens_evaluated": 9}  # fmt: skip
            yield "data: " + json.dumps(last) + "\n\n"
            return
        yield "data: " + json.dumps(self._chunk("", finish, chat)) + "\n\n"
        usage = {"prompt_tokens": 7, "completion_tokens": len(pieces), "total_tokens": 7 + len(pieces)}
        yield "data: " + json.dumps({"id": "x", "object": "chunk", "choices": [], "usage": usage}) + "\n\n"
        yield "data: [DONE]\n\n"

    def _chunk(self, text: str, finish: str | None, chat: bool) -> dict[str, Any]:
        if chat:
            choice: dict[str, Any] = {"index": 0, "delta": {"content": text} if text else {}, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text, "finish_reason": finish}
        return {"id": "cmpl-scripted", "object": "chunk", "created": int(time.time()), "model": self.model, "choices": [choice]}


class _EventStream(Response):
    """The event stream as raw ASGI sends, so that a client going away is seen (the send fails)
    and counted, rather than left to the generator's garbage collection."""

    def __init__(self, upstream: ScriptedUpstream, body: dict[str, Any], mode: str) -> None:
        super().__init__(media_type="text/event-stream")
        self.upstream, self.request_body, self.mode = upstream, body, mode

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        up = self.upstream
        up.streaming += 1
        streaming = asyncio.current_task()
        assert streaming is not None

        async def watch() -> None:  # as Starlette's StreamingResponse does: a disconnect ends the answer
            while (await receive())["type"] != "http.disconnect":
                pass
            up.closed_early += 1
            streaming.cancel()

        watcher = asyncio.create_task(watch())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
            async with contextlib.aclosing(up._events(self.request_body, "messages" in self.request_body, self.mode)) as events:
                async for event in events:
                    await send({"type": "http.response.body", "body": event.encode(), "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not watcher.done():
                raise
        finally:
            watcher.cancel()
            up.streaming -= 1
