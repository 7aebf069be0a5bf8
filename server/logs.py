"""What the server's own logs may say about a request: its path, never its query string.

A URL's query can carry anything a client put there (a site key, a token, a pasted secret), and
uvicorn's access and WebSocket log lines print the full path. The filter rewrites those lines'
arguments before any handler formats them. Libraries that echo SQL parameters (visitor text,
identifiers) at debug level are held at WARNING whatever `--log-level` says, and so is httpx, which
logs every request the upstream pool makes (a health check every few seconds; the pool logs what matters).
"""

from __future__ import annotations

import logging
import re

_QUERY = re.compile(r"\?[^\s\"']*")
LOGGERS = ("uvicorn.access", "uvicorn.error", "uvicorn")
DATA_ECHOING = ("aiosqlite", "sqlalchemy.engine", "sqlalchemy.pool", "httpx", "httpcore")


class DropQueryStrings(logging.Filter):
    """Also drops the WebSocket library's frame dumps (`< TEXT '…'`, debug level): they hold what visitors type."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno <= logging.DEBUG and isinstance(record.msg, str) and record.msg.startswith(("< ", "> ", "% ", "= ")):
            return False
        if isinstance(record.args, tuple):
            record.args = tuple(_QUERY.sub("?[query omitted]", a) if isinstance(a, str) and "?" in a else a for a in record.args)
        if isinstance(record.msg, str) and "?" in record.msg and not record.args:
            record.msg = _QUERY.sub("?[query omitted]", record.msg)
        return True


def quiet_logs() -> None:
    """Drop query strings from uvicorn's lines and hold data-echoing loggers at WARNING (idempotent)."""
    for name in DATA_ECHOING:
        logging.getLogger(name).setLevel(max(logging.getLogger(name).level, logging.WARNING))
    for name in LOGGERS:
        logger = logging.getLogger(name)
        for target in (logger, *logger.handlers):
            if not any(isinstance(f, DropQueryStrings) for f in target.filters):
                target.addFilter(DropQueryStrings())
