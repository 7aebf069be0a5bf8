"""The people who answer visitors in the staff console (`/console`), and the tokens they sign in
with. A token is shown once when it is made and only its sha256 is kept, so a copy of chat.db signs
no one in; each staff member sees only the sites they are given. Staff tokens open the console
and nothing else: never the audit log (the admin token's) nor the API (the API key's)."""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from server.clock import utc_now as now

from .shielded import shield_methods
from .store import new_id

TOKEN_PREFIX = "tst_"
NAME = re.compile(r"^[^\x00-\x1f\x7f]{1,60}$")  # what a visitor sees above the agent's messages


class StaffError(ValueError):
    pass


@dataclass(frozen=True)
class StaffMember:
    id: str
    name: str
    sites: tuple[str, ...]  # site keys, or ("*",): every site

    def can_see(self, site_key: str) -> bool:
        return "*" in self.sites or site_key in self.sites


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@shield_methods
class StaffDirectory:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def add(self, name: str, sites: list[str]) -> tuple[StaffMember, str]:
        """A new staff member and their token (shown once)."""
        name = name.strip()
        if not NAME.match(name):
            raise StaffError("a staff name is 1-60 printable characters (visitors see it)")
        if not sites:
            raise StaffError("give the sites they answer (--site KEY, repeatable) or --all-sites")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        member = StaffMember(new_id("stf"), name, tuple(dict.fromkeys(sites)))
        async with self.engine.begin() as conn:
            if (await conn.execute(text("SELECT 1 FROM staff WHERE name = :n"), {"n": name})).first():
                raise StaffError(f"there is already a staff member named {name!r}")
            await conn.execute(
                text("INSERT INTO staff (id, name, token_sha256, sites, created_at) VALUES (:id, :n, :t, :s, :at)"),
                {"id": member.id, "n": name, "t": _digest(token), "s": json.dumps(list(member.sites)), "at": now()},
            )
        return member, token

    async def members(self) -> list[tuple[StaffMember, str]]:
        """Everyone, with when they were added."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(text("SELECT id, name, sites, created_at FROM staff ORDER BY created_at"))
            return [(StaffMember(r.id, r.name, tuple(json.loads(r.sites))), r.created_at) for r in rows]

    async def remove(self, name: str) -> bool:
        """Their token stops working at once (a console they have open is closed at its next action)."""
        async with self.engine.begin() as conn:
            return bool((await conn.execute(text("DELETE FROM staff WHERE name = :n"), {"n": name})).rowcount)

    async def signed_in(self, token: str | None) -> StaffMember | None:
        if not token or not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            return None
        async with self.engine.connect() as conn:
            row = (await conn.execute(text("SELECT id, name, sites FROM staff WHERE token_sha256 = :t"), {"t": _digest(token)})).first()
        return StaffMember(row.id, row.name, tuple(json.loads(row.sites))) if row else None
