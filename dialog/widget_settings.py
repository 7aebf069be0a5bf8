"""How a site's widget looks and speaks, and when a person is there: set by `tandem sites add/edit`,
sent to the widget in `welcome`. Everything here is shown to visitors, nothing here is secret."""

from __future__ import annotations

import functools
import json
import re
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime
from typing import Any

from .hours import BusinessHours, HoursError

LOCALES = ("en", "de", "fr", "es", "zh", "ar")  # the widget's strings (dialog/static/widget-strings.json)
THEMES = ("light", "dark", "auto")  # auto: the visitor's prefers-color-scheme
POSITIONS = ("right", "left")
ACCENT = re.compile(r"^#(?:[0-9a-fA-F]{3}){1,2}$")
MAX_TEXT = {"title": 60, "greeting": 500, "away_message": 500}


class SettingsError(ValueError):
    """A setting the widget cannot show; the message names it and what is allowed."""


@dataclass(frozen=True)
class WidgetSettings:
    title: str = ""  # empty: "Support" in the visitor's language
    greeting: str = ""  # shown first in a new conversation; empty: none
    accent: str = "#2457d6"
    theme: str = "light"
    position: str = "right"
    locale: str = "auto"  # auto: the visitor's browser language, where the widget has it
    hours: str = ""  # business hours (dialog/hours.py); empty: always open
    timezone: str = "UTC"
    away_message: str = ""  # shown outside the hours; empty: a default that says when a person answers
    bot_when_away: bool = True  # outside the hours the bot still answers (else messages wait for a person)

    def __post_init__(self) -> None:
        for name, limit in MAX_TEXT.items():
            value = getattr(self, name)
            if len(value) > limit or any(ord(c) < 32 and c not in "\n\t" for c in value):
                raise SettingsError(f"{name}: at most {limit} characters of text")
        if not ACCENT.match(self.accent):
            raise SettingsError(f"accent: a colour as #rrggbb or #rgb, not {self.accent[:20]!r}")
        for name, allowed in (("theme", THEMES), ("position", POSITIONS), ("locale", ("auto", *LOCALES))):
            if getattr(self, name) not in allowed:
                raise SettingsError(f"{name}: one of {', '.join(allowed)}, not {str(getattr(self, name))[:20]!r}")
        try:
            self.business_hours()
        except HoursError as exc:
            raise SettingsError(f"hours: {exc}") from None

    def business_hours(self) -> BusinessHours:
        return _parsed_hours(self.hours, self.timezone)

    def changed(self, **values: Any) -> WidgetSettings:
        """These settings with the given ones (None: unchanged) replaced, validated again."""
        return replace(self, **{k: v for k, v in values.items() if v is not None})

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if v != getattr(DEFAULT, k)}, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str | None) -> WidgetSettings:
        data = json.loads(text or "{}")
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})

    def to_frame(self, now: datetime) -> dict[str, Any]:
        """The `site` part of `welcome`."""
        out: dict[str, Any] = {k: getattr(self, k) for k in ("title", "greeting", "accent", "theme", "position", "locale")}
        out["hours"] = {**self.business_hours().to_frame(now), "away_message": self.away_message, "bot_when_away": self.bot_when_away}
        return out


@functools.lru_cache(maxsize=256)
def _parsed_hours(hours: str, timezone: str) -> BusinessHours:
    """Parsed once per distinct setting: every welcome and every message outside the hours asks."""
    return BusinessHours.parse(hours, timezone)


DEFAULT = WidgetSettings()
