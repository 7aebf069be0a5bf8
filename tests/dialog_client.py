"""A small real WebSocket client for the dialog protocol (tests and benchmarks)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import uuid
from pathlib import Path
from typing import Any, Self

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect


class _Socket:
    """A JSON-frame WebSocket the tests open with `with`."""

    def __init__(self, url: str, **options: Any) -> None:
        self._connection = connect(url, open_timeout=10, max_size=2**22, **options)
        self.ws = self._connection.__enter__()

    def send(self, frame: dict[str, Any]) -> None:
        self.ws.send(json.dumps(frame))

    def recv(self, timeout: float = 60) -> dict[str, Any]:
        return json.loads(self.ws.recv(timeout=timeout))  # type: ignore[no-any-return]

    def close(self) -> None:
        self._connection.__exit__(None, None, None)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Chat(_Socket):
    def __init__(
        self,
        base_url: str,
        site: str = "demo",
        origin: str | None = None,
        token: str | None = None,
        conversation_id: str | None = None,
        last_seq: int | None = None,
        hello: bool = True,
        languages: list[str] | None = None,
        source: str | None = None,
    ) -> None:
        url = base_url.replace("http://", "ws://") + f"/v1/dialog?site_key={site}"
        options: dict[str, Any] = {"source_address": (source, 0)} if source else {}  # (a visitor's own address: any of 127/8)
        super().__init__(url, additional_headers={"Origin": origin or base_url}, **options)
        self.site = site
        self.welcome: dict[str, Any] = {}
        if hello:
            frame: dict[str, Any] = {"type": "hello", "v": 1, "site_key": site}
            if token:
                frame["token"] = token
            if conversation_id:
                frame["conversation_id"] = conversation_id
            if last_seq is not None:
                frame["last_seq"] = last_seq
            if languages is not None:
                frame["languages"] = languages
            try:
                self.send(frame)
            except ConnectionClosed:  # refused at the door (its origin, say) before our hello: the reason is still to be read
                pass
            self.welcome = self.recv()

    @property
    def token(self) -> str:
        return str(self.welcome["token"])

    @property
    def conversation_id(self) -> str:
        return str(self.welcome["conversation_id"])

    def until(self, kind: str, timeout: float = 120) -> list[dict[str, Any]]:
        """Frames up to and including the first of `kind`."""
        out = []
        while True:
            frame = self.recv(timeout)
            out.append(frame)
            if frame["type"] == kind:
                return out

    def say(self, text: str, client_msg_id: str | None = None) -> str:
        cmid = client_msg_id or uuid.uuid4().hex
        self.send({"type": "message", "client_msg_id": cmid, "text": text})
        return cmid

    def ask(self, text: str, timeout: float = 120) -> tuple[str, list[dict[str, Any]]]:
        """Send a message and read to its `done`: (answer text, frames)."""
        self.say(text)
        frames = self.until("done", timeout)
        return "".join(f["text"] for f in frames if f["type"] == "delta"), frames


class Console(_Socket):
    """A staff console's socket (`/v1/console/socket`), signed in with `token`."""

    def __init__(self, base_url: str, token: str) -> None:
        super().__init__(base_url.replace("http://", "ws://") + "/v1/console/socket")
        self.send({"type": "auth", "token": token})
        self.ready = self.recv()

    def until(self, match: Any, timeout: float = 60) -> dict[str, Any]:
        """The first frame for which `match(frame)` holds (earlier ones are read and dropped)."""
        while True:
            frame = self.recv(timeout)
            if match(frame):
                return frame


def staff_token(dialog_dir: Path, name: str, sites: list[str]) -> str:
    """A staff member added straight to a server's chat store, and their token."""
    from dialog.staff import StaffDirectory
    from dialog.store import Store

    async def go() -> str:
        store = await Store.open(dialog_dir / "chat.db")
        try:
            return (await StaffDirectory(store.engine).add(name, sites))[1]
        finally:
            await store.close()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # (callable from a test that runs its own event loop too)
        return pool.submit(asyncio.run, go()).result()
