"""A site's business hours: when a person answers, and when the widget says when they will.

Written as people write them, `Mon-Fri 09:00-17:00; Sat 10:00-14:00`, in the site's time zone
(IANA name, so summer time is the zone's business). No hours means always open."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_ENTRY = re.compile(r"^\s*([A-Za-z]{3})(?:\s*-\s*([A-Za-z]{3}))?\s+(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")
MAX_ENTRIES = 28


class HoursError(ValueError):
    """Hours or a time zone that cannot be read; the message says what is expected."""


@dataclass(frozen=True)
class Interval:
    day: int  # 0 = Monday
    start: int  # minutes after midnight
    end: int  # minutes after midnight, up to 24 * 60


@dataclass(frozen=True)
class BusinessHours:
    intervals: tuple[Interval, ...]
    timezone: str

    @classmethod
    def parse(cls, text: str, timezone: str = "UTC") -> BusinessHours:
        """`Mon-Fri 09:00-17:00; Sat 10:00-14:00` (entries split by `;` or `,`); empty: always open."""
        zone(timezone)
        intervals: list[Interval] = []
        entries = [e for e in re.split(r"[;,]", text) if e.strip()]
        if len(entries) > MAX_ENTRIES:
            raise HoursError(f"at most {MAX_ENTRIES} entries")
        for entry in entries:
            m = _ENTRY.match(entry)
            if not m:
                raise HoursError(f"{entry.strip()[:40]!r}: write hours as 'Mon-Fri 09:00-17:00'")
            first, last = _day(m[1]), _day(m[2] or m[1])
            start, end = _minutes(m[3], m[4]), _minutes(m[5], m[6])
            if end <= start:
                raise HoursError(f"{entry.strip()[:40]!r}: the end must come after the start (until 24:00 at the latest)")
            days = range(first, last + 1) if first <= last else [*range(first, 7), *range(0, last + 1)]
            intervals += [Interval(d, start, end) for d in days]
        return cls(tuple(sorted(set(intervals), key=lambda i: (i.day, i.start))), timezone)

    def __str__(self) -> str:
        """As it would be written: runs of days with the same hours joined (`Mon-Fri 09:00-17:00`)."""
        runs: list[list[Interval]] = []
        for i in sorted(self.intervals, key=lambda i: (i.start, i.end, i.day)):
            run = runs[-1] if runs else None
            if run and (run[-1].start, run[-1].end, run[-1].day + 1) == (i.start, i.end, i.day):
                run.append(i)
            else:
                runs.append([i])
        runs.sort(key=lambda r: (r[0].day, r[0].start))
        days = lambda r: DAYS[r[0].day].title() + (f"-{DAYS[r[-1].day].title()}" if len(r) > 1 else "")  # noqa: E731
        return "; ".join(f"{days(r)} {_clock(r[0].start)}-{_clock(r[0].end)}" for r in runs) or "always"

    def is_open(self, now: datetime) -> bool:
        if not self.intervals:
            return True
        local = now.astimezone(zone(self.timezone))
        minute = local.hour * 60 + local.minute
        return any(i.day == local.weekday() and i.start <= minute < i.end for i in self.intervals)

    def next_open(self, now: datetime) -> datetime | None:
        """The next time a person answers after `now` (None: always open)."""
        return self._next(now, lambda i: i.start)

    def closes_at(self, now: datetime) -> datetime | None:
        """When the hours open at `now` end (None: closed now, or always open)."""
        if not self.intervals or not self.is_open(now):
            return None
        closing = self._next(now, lambda i: i.end)
        while closing is not None and self.is_open(closing):  # back-to-back entries: the time it really closes
            closing = self._next(closing, lambda i: i.end)
        return closing

    def _next(self, now: datetime, edge: Callable[[Interval], int]) -> datetime | None:
        if not self.intervals:
            return None
        tz = zone(self.timezone)
        local = now.astimezone(tz)
        for ahead in range(8):
            day = (local + timedelta(days=ahead)).date()
            for i in self.intervals:
                if i.day != day.weekday():
                    continue
                at = datetime.combine(day, time(0), tz) + timedelta(minutes=edge(i))  # wall-clock arithmetic: summer time included
                if at > local:
                    return at
        return None

    def to_frame(self, now: datetime) -> dict[str, object]:
        """What the widget needs: open or not, and the instants it changes (ISO 8601, with offset)."""
        closes = self.closes_at(now)
        opens = self.next_open(closes or now)  # open now: the next opening after this closing
        return {
            "open": self.is_open(now),
            "closes_at": closes.isoformat() if closes else None,
            "next_open": opens.isoformat() if opens else None,
            "timezone": self.timezone,
        }


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise HoursError(f"unknown time zone {name[:60]!r} (an IANA name, e.g. Europe/Berlin)") from None


def _day(name: str) -> int:
    try:
        return DAYS.index(name.lower())
    except ValueError:
        raise HoursError(f"unknown day {name!r} (Mon, Tue, Wed, Thu, Fri, Sat or Sun)") from None


def _minutes(hours: str, minutes: str) -> int:
    h, m = int(hours), int(minutes)
    if m > 59 or h > 24 or (h == 24 and m):
        raise HoursError(f"{hours}:{minutes} is not a time of day")
    return h * 60 + m


def _clock(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"
