"""Gateways in front of upstreams: scripted ones (each failure on demand) and real llama.cpp servers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from dialog.service import DialogConfig
from server.audit import AuditConfig
from server.backends.upstream import UpstreamConfig
from tests.conftest import ADMIN_TOKEN, ThreadedServer, free_port
from tests.upstream.scripted_upstream import ScriptedUpstream


@pytest.fixture
def scripted() -> Iterator[Callable[[str], ScriptedUpstream]]:
    """Start scripted upstreams on real sockets: `up = scripted("a")`; `up.url` is its address."""
    with ExitStack() as stack:

        def start(name: str, **kwargs: Any) -> ScriptedUpstream:
            upstream = ScriptedUpstream(name, **kwargs)
            server = stack.enter_context(ThreadedServer(upstream.app(), free_port()))
            stack.callback(upstream.release)  # before its server stops: nothing held keeps it from stopping
            upstream.url = server.url  # type: ignore[attr-defined]
            return upstream

        yield start


@pytest.fixture
def pool_gateway(tmp_path: Path) -> Iterator[Callable[..., ThreadedServer]]:
    """`tandem serve --upstream …` in-process on a real socket: `with pool_gateway([a, b], read_timeout=1) as g`.
    Short timeouts and health intervals by default, so failures and recoveries show within seconds."""
    count = [0]

    def start(urls: list[str], api_key: str | None = None, **upstream: Any) -> ThreadedServer:
        from server.app import ServerConfig, create_app

        count[0] += 1
        settings = {"read_timeout": 2.0, "health_interval": 0.2, "health_timeout": 1.0, "max_backoff": 0.5, **upstream}
        audit_dir, dialog_dir = tmp_path / f"audit-{count[0]}", tmp_path / f"dialog-{count[0]}"
        config = ServerConfig(
            api_key=api_key,
            audit=AuditConfig(audit_dir),
            admin_token=ADMIN_TOKEN,
            dialog=DialogConfig(directory=dialog_dir),
            upstream=UpstreamConfig(urls=tuple(urls), **settings),
        )
        server = ThreadedServer(create_app(config), free_port())
        server.audit_dir, server.dialog_dir = audit_dir, dialog_dir
        return server

    yield start
