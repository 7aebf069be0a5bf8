"""What every operator command that names a site checks first."""

from __future__ import annotations

import sys

from .store import Store


async def site_or_error(store: Store, site_key: str) -> bool:
    """True if the site exists; else says how to add it (on stderr)."""
    if await store.site(site_key) is None:
        print(f"error: no site {site_key!r} (tandem sites add {site_key} --origin …)", file=sys.stderr)
        return False
    return True
