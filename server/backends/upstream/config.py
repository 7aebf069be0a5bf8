"""How a pool of upstreams is configured: `tandem serve --upstream URL …` and its options."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit


def base_url(url: str) -> str:
    """An upstream's root: `http://host:port` from what an operator may paste (with or without
    `/v1`, a trailing slash). Only http and https, with a host."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"an upstream is an http:// or https:// URL with a host, got {url!r}")
    path = parts.path.rstrip("/")
    path = path.removesuffix("/v1")
    return f"{parts.scheme}://{parts.netloc}{path}"


@dataclass(frozen=True)
class UpstreamConfig:
    urls: tuple[str, ...] = ()
    api_key: str | None = None  # sent to every upstream as `Authorization: Bearer` (vLLM's --api-key, another Tandem's)
    model: str | None = None  # the model id to ask the upstreams for; default: the one each serves
    tokenizer: str | None = None  # a model installed here whose tokenizer counts exactly (as --model takes it), offline
    context_length: int | None = None  # the window to enforce; default: what the upstreams report, else the tokenizer's model's
    max_concurrency: int = 8  # requests in flight per upstream; beyond every upstream's, requests wait
    max_waiting: int = 64  # requests waiting for a slot; beyond it, 503 with Retry-After
    connect_timeout: float = 5.0
    read_timeout: float = 60.0  # the longest silence from an upstream: before its first token and between tokens
    health_interval: float = 5.0  # seconds between health checks of each upstream
    health_timeout: float = 5.0
    max_backoff: float = 30.0  # the longest wait before a failed upstream is checked again

    def __post_init__(self) -> None:
        object.__setattr__(self, "urls", tuple(dict.fromkeys(base_url(u) for u in self.urls)))
        if self.max_concurrency < 1 or self.max_waiting < 0:
            raise ValueError("max_concurrency must be at least 1 and max_waiting at least 0")
