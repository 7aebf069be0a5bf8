"""Turns a stream of token ids into a stream of text that is safe to send.

Two problems are solved here, both per request:
* a multi-byte UTF-8 character can span several tokens: `tokenizers`' own `DecodeStream`
  buffers until a whole character is available, so no chunk ever holds half a character;
* a stop string can span several tokens: `StopMatcher` holds back the shortest tail of the
  text that could still grow into a stop string, and cuts the output where one completes.
"""

from __future__ import annotations

from typing import Any

from tokenizers.decoders import DecodeStream


class StopMatcher:
    """Finds stop strings in streamed text, across chunk boundaries."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Add `text`; return what can be emitted now and whether a stop string completed."""
        if not self._stops:
            return text, False
        buf = self._pending + text
        cut = min((i for i in (buf.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self._pending = ""
            return buf[:cut], True
        hold = self._held_tail(buf)
        self._pending = buf[len(buf) - hold :]
        return buf[: len(buf) - hold], False

    def flush(self) -> str:
        """At the end of generation, what was held back is ordinary output."""
        out, self._pending = self._pending, ""
        return out

    def _held_tail(self, buf: str) -> int:
        # Length of the longest suffix of `buf` that is a proper prefix of some stop string.
        longest = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(buf)), longest, -1):
                if buf.endswith(stop[:n]):
                    longest = n
                    break
        return longest


class IncrementalDetokenizer:
    """Token ids in, complete-character text out, with stop strings applied."""

    def __init__(self, tokenizer: Any, stops: tuple[str, ...]) -> None:
        # `tokenizer` is a transformers fast tokenizer; DecodeStream needs its Rust core.
        self._tokenizer = tokenizer
        self._core = tokenizer.backend_tokenizer
        self._stream = DecodeStream(skip_special_tokens=True)
        self._stops = StopMatcher(stops)
        self._undecoded: list[int] = []  # ids whose bytes do not yet form whole characters

    def push(self, token_id: int) -> tuple[str, bool]:
        """Return the text that token `token_id` releases and whether a stop string ended it."""
        piece = self._stream.step(self._core, token_id)
        if piece is None:
            self._undecoded.append(token_id)
            return "", False
        self._undecoded.clear()
        return self._stops.feed(piece)

    def finish(self) -> str:
        """The rest of the text when generation ends. Bytes the model left incomplete come out
        as U+FFFD, as any UTF-8 decoder shows them: dropping them would hide what it produced."""
        tail = ""
        if self._undecoded:
            tail, _ = self._stops.feed(self._tokenizer.decode(self._undecoded, skip_special_tokens=True))
            self._undecoded.clear()
        return tail + self._stops.flush()
