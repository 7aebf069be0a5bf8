"""Timestamps as Tandem stores them: ISO-8601 UTC with milliseconds, e.g. 2026-11-22T10:15:03.412Z.
They sort as text and compare with SQLite's strftime('%Y-%m-%dT%H:%M:%fZ', 'now')."""

from __future__ import annotations

import time


def iso_utc(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


def utc_now() -> str:
    return iso_utc(time.time())
