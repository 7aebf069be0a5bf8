"""The language server's settings: defaults from the command line, then `tandem.*` from the
client through `workspace/configuration` (VS Code's settings)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class Settings:
    server_url: str = "http://127.0.0.1:8080"
    enabled: bool = True  # the extension's on/off switch: off, nothing is asked of the engine (warm-ups included)
    enabled_languages: tuple[str, ...] = ("*",)  # language ids, or "*" for all
    max_tokens: int = 64
    multiline: bool = True
    time_budget_ms: int = 3000  # a suggestion later than this is cut to what has arrived
    cache: bool = True  # answer from generations already made (typing through a suggestion, repeats)
    first_line: bool = True  # as-you-type requests answer once the first line is complete; the rest serves later keystrokes
    warm_up: bool = True  # warm the engine's prefix cache for the text around the cursor before a request
    # The prompt's token budget. A cold prompt is prefilled at a few hundred tokens a second on two
    # cores, and a document just opened should have its suggestion within a second or so; against
    # 1536, 512 lost nothing on held-out code with the default model (`tandem bench-completion`).
    prompt_tokens: int = 512
    line_wait_ms: int = 300  # as you type, how long to wait for a whole line before showing its whole words so far

    def enabled_for(self, language: str) -> bool:
        return self.enabled and ("*" in self.enabled_languages or language in self.enabled_languages)

    def updated(self, section: Any) -> Settings:
        """Apply a `tandem` configuration section; unknown keys and wrong types are ignored."""
        if not isinstance(section, dict):
            return self
        changes: dict[str, Any] = {}
        if isinstance(section.get("serverUrl"), str) and section["serverUrl"].startswith(("http://", "https://")):
            changes["server_url"] = section["serverUrl"]
        langs = section.get("enabledLanguages")
        if isinstance(langs, list) and all(isinstance(x, str) for x in langs):
            changes["enabled_languages"] = tuple(langs)
        if isinstance(section.get("maxTokens"), int) and 1 <= section["maxTokens"] <= 512:
            changes["max_tokens"] = section["maxTokens"]
        if isinstance(section.get("multiline"), bool):
            changes["multiline"] = section["multiline"]
        if isinstance(section.get("timeBudgetMs"), int) and 100 <= section["timeBudgetMs"] <= 30_000:
            changes["time_budget_ms"] = section["timeBudgetMs"]
        if isinstance(section.get("promptTokens"), int) and 64 <= section["promptTokens"] <= 16_384:
            changes["prompt_tokens"] = section["promptTokens"]
        if isinstance(section.get("lineWaitMs"), int) and 0 <= section["lineWaitMs"] <= 30_000:
            changes["line_wait_ms"] = section["lineWaitMs"]
        for key, name in (("enabled", "enabled"), ("cache", "cache"), ("firstLine", "first_line"), ("warmUp", "warm_up")):
            if isinstance(section.get(key), bool):
                changes[name] = section[key]
        return replace(self, **changes)
