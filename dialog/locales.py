"""The widget's words in each language it speaks (`static/locales/*.json`, one file per language,
the same keys in each). widget.js carries English; the rest are sent in `welcome`, so each visitor
downloads one language, not six."""

from __future__ import annotations

import functools
import json
from pathlib import Path

from .widget_settings import LOCALES

LOCALE_DIR = Path(__file__).parent / "static" / "locales"


@functools.cache
def strings(locale: str) -> dict[str, str]:
    return dict(json.loads((LOCALE_DIR / f"{locale}.json").read_text(encoding="utf-8")))


def choose(site_locale: str, languages: list[str] | None) -> str:
    """The site's language if it names one, else the first of the browser's languages
    (`navigator.languages`, most preferred first) the widget speaks, else English."""
    if site_locale in LOCALES:
        return site_locale
    for tag in languages or ():
        base = tag.split("-")[0].split("_")[0].lower()
        if base in LOCALES:
            return base
    return "en"
