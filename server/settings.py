"""What Tandem reads from its environment: here, once per call, and in no other module.

`TANDEM_HOME` (all writable state), `TANDEM_API_KEY` and `TANDEM_ADMIN_TOKEN` (the server's
credentials when not given on the command line), `TANDEM_COMPILE=0` (keep the eager decode step),
`TANDEM_SERVER_URL` (where the language server finds the server), `TANDEM_UPSTREAMS` (the URLs of
OpenAI-compatible servers to generate through, separated by commas or spaces) and
`TANDEM_UPSTREAM_API_KEY` (the key they want), `TANDEM_DATABASE_URL` (the chat store on PostgreSQL
instead of the SQLite file), `TANDEM_AUDIT_DATABASE_URL` (the audit records on PostgreSQL) and
`TANDEM_REDIS_URL` (what is live across replicas), and `TANDEM_CONFIG` (a settings file for
`tandem serve`, server/settings_file.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def tandem_home() -> Path:
    """All writable state (model cache, audit log, chat store): TANDEM_HOME, default
    ~/.cache/tandem. Tests point it at a temporary directory."""
    return Path(os.environ.get("TANDEM_HOME") or Path.home() / ".cache" / "tandem").expanduser()


@dataclass(frozen=True)
class Environment:
    api_key: str | None
    admin_token: str | None
    compile: bool
    server_url: str | None
    upstreams: tuple[str, ...] = ()
    upstream_api_key: str | None = None
    database_url: str | None = None
    audit_database_url: str | None = None
    redis_url: str | None = None


# the serve options the environment also sets (a settings file's value gives way to these), by their dest
ENVIRONMENT_OF = {
    "api_key": "TANDEM_API_KEY",
    "admin_token": "TANDEM_ADMIN_TOKEN",
    "upstream": "TANDEM_UPSTREAMS",
    "upstream_api_key": "TANDEM_UPSTREAM_API_KEY",
    "database_url": "TANDEM_DATABASE_URL",
    "audit_database_url": "TANDEM_AUDIT_DATABASE_URL",
    "redis_url": "TANDEM_REDIS_URL",
}


def settings_file() -> str | None:
    return os.environ.get("TANDEM_CONFIG") or None


def set_in_environment(option: str) -> bool:
    """Whether the environment gives serve's `option` (by its dest) a value."""
    return option in ENVIRONMENT_OF and _get(option) is not None


def _get(option: str) -> str | None:
    return os.environ.get(ENVIRONMENT_OF[option]) or None


def environment() -> Environment:
    """The environment's settings, read now (the command line overrides each of them)."""
    return Environment(
        api_key=_get("api_key"),
        admin_token=_get("admin_token"),
        compile=os.environ.get("TANDEM_COMPILE", "1") != "0",
        server_url=os.environ.get("TANDEM_SERVER_URL") or None,
        upstreams=tuple((_get("upstream") or "").replace(",", " ").split()),
        upstream_api_key=_get("upstream_api_key"),
        database_url=_get("database_url"),
        audit_database_url=_get("audit_database_url"),
        redis_url=_get("redis_url"),
    )
