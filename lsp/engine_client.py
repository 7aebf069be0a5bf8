"""The language server's road to the engine: Tandem's HTTP API (`/v1/completions`, streaming).

If no server answers, one is started detached (`tandem serve`) and every later language server,
from any VS Code window, finds and reuses it: one engine for all. A file lock keeps two language
servers starting at once from starting two engines. Closing a completion stream cancels the
generation in the engine (the server watches the connection).
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import logging
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import httpx

from server.settings import environment, tandem_home

from .positions import clean
from .settings import DEFAULT_SERVER_URL

log = logging.getLogger("tandem.lsp")
CLIENT_NAME = "tandem-lsp/0.1"


class EngineUnavailable(Exception):
    pass


@dataclass
class ServerInfo:
    model: str
    fim: bool
    context_length: int


class EngineClient:
    def __init__(self, url: str, autostart: bool = True, start_timeout: float = 240.0) -> None:
        self.url = url.rstrip("/")
        self.autostart, self.start_timeout = autostart, start_timeout
        self.http = httpx.AsyncClient(
            base_url=self.url, timeout=httpx.Timeout(30.0, connect=2.0), trust_env=False, headers={"X-Tandem-Client": CLIENT_NAME}
        )
        self.info: ServerInfo | None = None
        self.started_server = False
        self._ready_lock = asyncio.Lock()

    async def close(self) -> None:
        await self.http.aclose()

    async def _healthy(self) -> bool:
        try:
            return (await self.http.get("/healthz", timeout=2.0)).status_code == 200
        except httpx.HTTPError:
            return False

    async def ready(self) -> ServerInfo:
        """The server's model info, starting a server first if none answers."""
        async with self._ready_lock:
            if self.info is not None:
                return self.info
            if not await self._healthy():
                if not self.autostart:
                    raise EngineUnavailable(f"no Tandem server at {self.url}")
                await asyncio.to_thread(self._start_and_wait)
            served = (await self.http.get("/v1/models")).json()["data"]
            # the model behind /v1/completions (a deployment may serve the chat from another)
            model = next((m for m in served if "completions" in m.get("endpoints", ["completions"])), served[0])
            self.info = ServerInfo(model["id"], bool(model.get("fim")), int(model.get("context_length") or 2048))
            return self.info

    def _start_and_wait(self) -> None:
        """Under a machine-wide lock: check again, start `tandem serve` detached if still nobody
        answers, and wait for /healthz."""
        home = tandem_home()
        home.mkdir(parents=True, exist_ok=True)
        with open(home / "lsp-autostart.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if _sync_healthy(self.url):
                return
            port = urlparse(self.url).port or urlparse(DEFAULT_SERVER_URL).port
            logfile = open(home / "autostarted-server.log", "ab")
            subprocess.Popen(
                [sys.executable, "-m", "server.cli", "serve", "--port", str(port)],
                stdin=subprocess.DEVNULL,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=str(Path(__file__).resolve().parent.parent),
            )
            self.started_server = True
            log.info("started tandem serve on port %d (log: %s)", port, home / "autostarted-server.log")
            deadline = time.monotonic() + self.start_timeout
            while not _sync_healthy(self.url):
                if time.monotonic() > deadline:
                    raise EngineUnavailable(f"started a Tandem server on port {port}, but it did not become healthy")
                time.sleep(0.25)

    async def complete(
        self, prompt: str, suffix: str | None, max_tokens: int, stop: list[str], background: bool = False, document: str | None = None
    ) -> AsyncIterator[tuple[str, str]]:
        """Stream (request_id, text) pieces. Leaving the loop early closes the stream, which
        cancels the generation in the engine. `background` asks the engine to serve every
        interactive request first (a warm-up). `document` keeps a file's requests on one upstream
        where the server generates through several (its prefix cache holds the file), sent as a
        hash: the URI itself names the user's files."""
        # clean: a lone surrogate cannot be encoded, and would fail the request (documents are
        # cleaned as they arrive; this is the last line of defence)
        body: dict[str, object] = {
            "prompt": clean(prompt),
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
            "stop": [clean(s) for s in stop[:4]],
        }
        if background:
            body["priority"] = "background"
        if suffix is not None:
            body["suffix"] = clean(suffix)
        headers = {"X-Tandem-Affinity": hashlib.sha256(document.encode()).hexdigest()[:32]} if document else None
        try:
            async with self.http.stream("POST", "/v1/completions", json=body, headers=headers) as response:
                if response.status_code != 200:
                    detail = (await response.aread()).decode("utf-8", "replace")[:300]
                    raise EngineUnavailable(f"completion failed ({response.status_code}): {detail}")
                async for line in response.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    event = json.loads(line[6:])
                    if "error" in event:
                        raise EngineUnavailable(event["error"].get("message", "stream error"))
                    if self.info is not None and event.get("model") not in (None, self.info.model):
                        self.info = None  # the server swapped its model (FIM, window): read what it serves before the next request
                    text = clean(event["choices"][0]["text"])
                    if text or background:
                        yield event["id"], text
        except httpx.TransportError as exc:
            self.info = None  # the server went away: the next request checks again (and restarts it)
            raise EngineUnavailable(f"lost the Tandem server at {self.url}: {exc}") from exc

    async def feedback(self, request_id: str, event: str) -> None:
        try:
            await self.http.post("/v1/feedback", json={"request_id": request_id, "event": event}, timeout=5.0)
        except httpx.HTTPError as exc:
            log.warning("could not report %s for %s: %s", event, request_id, exc)


def _sync_healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2.0, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def default_url() -> str:
    return environment().server_url or DEFAULT_SERVER_URL
