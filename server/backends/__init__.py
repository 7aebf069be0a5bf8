"""What the gateway generates through: the engine interface (`protocol.py`) and its two
implementations, the in-process engine (`local.py`) and a pool of OpenAI-compatible upstreams
(`upstream/`). Imported without torch."""

from .protocol import TOKEN_COUNTS, Backend, BackendFailed, BackendUnavailable, ModelInfo, PromptText, Rendered

__all__ = ["TOKEN_COUNTS", "Backend", "BackendFailed", "BackendUnavailable", "ModelInfo", "PromptText", "Rendered"]
