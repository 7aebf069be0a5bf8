"""Prompts for upstreams whose tokenizer is not installed here.

A conversation goes out as messages (the upstream applies its own chat template) and a cursor
position as prompt plus `suffix` (for upstreams that fill in the middle themselves). What the
gateway needs to budget, a token count, comes from the upstream's own tokenize endpoint (vLLM's and
llama.cpp's `/tokenize`, llama-cpp-python's `/extras/tokenize/count`) when it has one, else from an
estimate; /v1/models says which (`token_count`), so nobody mistakes an estimate for a count.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import httpx

from ...chat_window import Choice, Message
from ...engine.types import Messages
from ..protocol import Rendered

# A chat template's wrapping around each message (ChatML: `<|im_start|>role\n … <|im_end|>\n`, five
# tokens; Llama 3's header is about as long) and the answer's opening: generous, so a fitted
# prompt does not overrun the window.
TOKENS_PER_MESSAGE = 8
TOKENS_FOR_ANSWER = 4
CHARS_PER_TOKEN = 3.0  # English prose is about 4 characters a token and code about 3: the cautious one

# Tokenize endpoints, tried in this order: (path, request body for `text`, how to read the count)
TokenizeStyle = tuple[str, Callable[[str], dict[str, object]], Callable[[dict[str, object]], int]]


def _tokens(reply: dict[str, object]) -> int:
    tokens = reply.get("tokens")
    if not isinstance(tokens, list):
        raise ValueError("no token list")
    return len(tokens)


def _count(reply: dict[str, object]) -> int:
    count = reply.get("count")
    if not isinstance(count, int):
        raise ValueError("no count")
    return count


TOKENIZE_STYLES: tuple[TokenizeStyle, ...] = (
    ("/tokenize", lambda text: {"prompt": text, "add_special_tokens": False}, _tokens),  # vLLM, SGLang
    ("/tokenize", lambda text: {"content": text}, _tokens),  # llama.cpp's server
    ("/extras/tokenize/count", lambda text: {"input": text}, _count),  # llama-cpp-python
)


def estimate(text: str) -> int:
    return int(len(text) / CHARS_PER_TOKEN) + 1 if text else 0


class UpstreamCounter:
    """Counts tokens with an upstream's tokenize endpoint, found by `probe`; else estimates."""

    def __init__(self, timeout: float, headers: dict[str, str]) -> None:
        self.timeout, self.headers = timeout, headers
        self.url: str | None = None
        self.style: TokenizeStyle | None = None
        self._http = httpx.Client(timeout=timeout, trust_env=False)

    @property
    def kind(self) -> str:
        return "upstream" if self.style is not None else "estimate"

    def probe(self, urls: Sequence[str]) -> None:
        """Find an upstream and a tokenize endpoint that answers a count (blocking: at start-up, in a thread)."""
        for url in urls:
            for style in TOKENIZE_STYLES:
                path, request, read = style
                try:
                    response = self._http.post(f"{url}{path}", json=request("Hello, world"), headers=self.headers)
                    if response.status_code == 200 and read(response.json()) > 0:
                        self.url, self.style = url, style
                        return
                except (httpx.HTTPError, ValueError, AttributeError):
                    continue

    @functools.lru_cache(maxsize=4096)  # noqa: B019  (one counter per pool, for its lifetime: the cache is meant to live as long)
    def count(self, text: str) -> int:
        """Tokens in `text`, from the upstream (called on the gateway's scanner threads, never the
        event loop); an estimate when it cannot answer now."""
        if not text:
            return 0
        if self.style is not None and self.url is not None:
            path, request, read = self.style
            try:
                response = self._http.post(f"{self.url}{path}", json=request(text), headers=self.headers)
                if response.status_code == 200:
                    return read(response.json())
            except (httpx.HTTPError, ValueError, AttributeError):
                pass
        return estimate(text)

    def close(self) -> None:
        self._http.close()


class CountedText:
    """`PromptText` for an upstream without a tokenizer here."""

    def __init__(self, count: Callable[[str], int], fim: Callable[[], bool]) -> None:
        self._count, self._fim = count, fim  # fim: asked each time (an upstream says whether it fills in the middle once it is found)

    @property
    def chat_template(self) -> bool:
        return True  # the upstream's: an upstream without one answers the chat with its own error

    @property
    def tools(self) -> str | None:
        return None  # (tools are not passed on to upstreams)

    @property
    def reasoning(self) -> bool | None:
        return None  # (an upstream that parses reasoning sends it apart; its content is the answer)

    @property
    def fim(self) -> bool:
        return self._fim()

    @property
    def special_tokens(self) -> list[str]:
        return []  # unknown here; the guard's template-token rules still strip the common families'

    def _cost(self, message: Message) -> int:
        return self._count(message[1]) + TOKENS_PER_MESSAGE

    def choose(self, messages: tuple[Message, ...], budget: int) -> Choice:
        head = 1 if len(messages) > 1 and messages[0][0] == "system" else 0
        history = messages[head:-1]
        total = sum(self._cost(m) for m in (*messages[:head], messages[-1])) + TOKENS_FOR_ANSWER
        kept = 0
        for message in reversed(history):
            cost = self._cost(message)
            if total + cost > budget:
                break
            total, kept = total + cost, kept + 1
        return Choice((*messages[:head], *history[len(history) - kept :], messages[-1]), kept, len(history) - kept, total)

    def render_chat(self, messages: Sequence[Message]) -> Rendered:
        return Rendered(Messages(tuple(messages)), sum(self._cost(m) for m in messages) + TOKENS_FOR_ANSWER)

    def render_fim(self, prefix: str, suffix: str) -> Rendered:
        if not self.fim:
            raise ValueError("the upstream does not fill in the middle")
        return Rendered(prefix, self._count(prefix) + self._count(suffix), suffix=suffix)

    def decode(self, ids: list[int]) -> str:
        raise ValueError(
            "token-id prompts need the model's tokenizer here to be guarded; start the gateway with "
            "--upstream-tokenizer MODEL, or send text"
        )

    def encode(self, text: str | Sequence[Message], special: bool) -> list[int]:
        raise ValueError("the model's tokenizer is not here; start the gateway with --upstream-tokenizer MODEL")
