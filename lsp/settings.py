"""The language server's settings: defaults from the command line, then `tandem.*` from the
client through `workspace/configuration` (VS Code's settings).

`CLIENT_SETTINGS` is the one table of what a client may set: each `tandem.*` key, the field it
sets and the range it accepts. The extension's `package.json` declares the same keys with the
same defaults and bounds (a test compares them), so the editor's settings UI and the server agree.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

DEFAULT_SERVER_URL = "http://127.0.0.1:8080"


@dataclass(frozen=True)
class Settings:
    server_url: str = DEFAULT_SERVER_URL
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
        """Apply a `tandem` configuration section; unknown keys, wrong types and values out of range are ignored."""
        if not isinstance(section, dict):
            return self
        changes: dict[str, Any] = {}
        for key, setting in CLIENT_SETTINGS.items():
            if key in section and setting.accepts(section[key]):
                changes[setting.field] = tuple(section[key]) if isinstance(section[key], list) else section[key]
        return replace(self, **changes)


@dataclass(frozen=True)
class ClientSetting:
    field: str  # the `Settings` field it sets
    kind: type
    minimum: int | None = None
    maximum: int | None = None

    def accepts(self, value: Any) -> bool:
        if self.kind is list:
            return isinstance(value, list) and all(isinstance(x, str) for x in value)
        if self.kind is str:  # the one string a client sets is the server's URL
            return isinstance(value, str) and value.startswith(("http://", "https://"))
        if self.kind is int:
            if isinstance(value, bool) or not isinstance(value, int):
                return False
            return (self.minimum is None or value >= self.minimum) and (self.maximum is None or value <= self.maximum)
        return isinstance(value, self.kind)

    @property
    def default(self) -> Any:
        value = next(f.default for f in fields(Settings) if f.name == self.field)
        return list(value) if isinstance(value, tuple) else value


CLIENT_SETTINGS = {
    "serverUrl": ClientSetting("server_url", str),
    "enabled": ClientSetting("enabled", bool),
    "enabledLanguages": ClientSetting("enabled_languages", list),
    "maxTokens": ClientSetting("max_tokens", int, 1, 512),
    "multiline": ClientSetting("multiline", bool),
    "timeBudgetMs": ClientSetting("time_budget_ms", int, 100, 30_000),
    "cache": ClientSetting("cache", bool),
    "firstLine": ClientSetting("first_line", bool),
    "warmUp": ClientSetting("warm_up", bool),
    "promptTokens": ClientSetting("prompt_tokens", int, 64, 16_384),
    "lineWaitMs": ClientSetting("line_wait_ms", int, 0, 30_000),
}
EXTENSION_ONLY = ("pythonPath",)  # settings the extension uses itself (how to start the language server)
