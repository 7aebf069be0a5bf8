"""Numbered schema migrations (the pattern of simonw/llm's migrations.py), for every database the
project keeps: the chat store and the audit log each have their own list of steps.

Each step is a function `mNNN_what(conn)` registered in order; applied names are recorded in a
`_migrations` table, so a database at any earlier step is brought forward and a blank one is built
from the start. Steps never change once released: a new need is a new step.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text

Migration = Callable[[Any], None]


def postgres(conn: Any) -> bool:
    """The steps are the same on both engines; where SQLite and PostgreSQL spell a thing differently, a step says both."""
    return bool(conn.dialect.name == "postgresql")


class Migrations:
    def __init__(self) -> None:
        self.steps: list[Migration] = []

    def __call__(self, step: Migration) -> Migration:
        """Register the next step (as a decorator)."""
        self.steps.append(step)
        return step

    @property
    def names(self) -> list[str]:
        return [step.__name__ for step in self.steps]

    def applied(self, conn: Any) -> list[str]:
        conn.execute(text("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"))
        return [row[0] for row in conn.execute(text("SELECT name FROM _migrations ORDER BY name"))]  # (mNNN: in order)

    def mark(self, conn: Any, name: str) -> None:
        conn.execute(
            text("INSERT INTO _migrations (name, applied_at) VALUES (:n, :at)"),
            {"n": name, "at": datetime.now(UTC).isoformat(timespec="seconds")},
        )

    def migrate(self, conn: Any, upto: int | None = None) -> list[str]:
        """Apply the steps not yet applied (up to step `upto`, for tests of older schemas); returns their names.
        On PostgreSQL, replicas starting together take turns: one applies, the others find it done."""
        if postgres(conn):
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('tandem migrations'))"))
        done = set(self.applied(conn))
        ran = []
        for step in self.steps[:upto]:
            if step.__name__ in done:
                continue
            step(conn)
            self.mark(conn, step.__name__)
            ran.append(step.__name__)
        return ran
