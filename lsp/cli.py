"""`tandem lsp`: the language server over stdio (what VS Code starts), or TCP for debugging."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from .engine_client import default_url
from .settings import DEFAULT_SERVER_URL, Settings


def run(args: argparse.Namespace) -> int:
    from .server import create_server

    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = create_server(Settings(server_url=args.server_url), autostart=not args.no_autostart)
    if args.tcp:
        host, _, port = args.tcp.rpartition(":")
        server.start_tcp(host or "127.0.0.1", int(port))
    else:
        server.start_io()
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("lsp", help="the language server (stdio; --tcp HOST:PORT for debugging)")
    p.add_argument("--server-url", default=default_url(), help=f"the Tandem server (default: $TANDEM_SERVER_URL or {DEFAULT_SERVER_URL})")
    p.add_argument("--stdio", action="store_true", help="talk over stdin/stdout (the default; editors' clients pass it)")
    p.add_argument("--tcp", default=None, help="listen on HOST:PORT instead of stdio")
    p.add_argument("--no-autostart", action="store_true", help="do not start `tandem serve` when no server answers")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=run)
