"""A pool of OpenAI-compatible upstreams as the gateway's backend (`tandem serve --upstream URL`)."""

from .config import UpstreamConfig, base_url
from .pool import UpstreamPool

__all__ = ["UpstreamConfig", "UpstreamPool", "base_url"]
