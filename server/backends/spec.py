"""What an operator names as a backend: a model loaded here, or a list of upstreams."""

from __future__ import annotations

from dataclasses import dataclass

from .upstream.config import base_url


@dataclass(frozen=True)
class BackendSpec:
    model: str | None = None  # a model loaded here, as `--model` names it (None: the embedded default)
    quant: str = "auto"
    upstreams: tuple[str, ...] = ()  # OpenAI-compatible servers to generate through instead

    def __post_init__(self) -> None:
        if self.upstreams and self.model is not None:
            raise ValueError("a backend is a model here or a list of upstreams, not both")
        object.__setattr__(self, "upstreams", tuple(dict.fromkeys(base_url(u) for u in self.upstreams)))

    def describe(self) -> str:
        return f"upstreams {', '.join(self.upstreams)}" if self.upstreams else f"{self.model or 'the default model'} ({self.quant})"
