"""The language server's wire: LSP base-protocol framing that never trusts the peer's headers.

pygls's reader (`pygls.io_.run_async`) takes `Content-Length` at its word: it reads exactly that
many bytes, so `Content-Length: 99999999999999999999` overflows the read (and the process dies)
and a large one waits for, and allocates, bytes that never come. Lines that are not a well-formed
header are silently skipped there, and a message its decoder refuses gets no answer at all.

Here the framing is a small sans-IO state machine (`Framer`): a header block is at most
`MAX_HEADER` bytes and must carry one decimal `Content-Length` of at most `MAX_BODY`; anything
else is a framing error, after which the stream is resynchronised at the next `Content-Length:`
(the bytes in between, the bad message's body among them, are skipped). The loops below feed it
from stdin (a daemon thread, so a blocked read never holds up the exit) or from a TCP connection,
and hand each body to `TandemProtocol.handle_body` (lsp/protocol.py), which answers every request.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import BinaryIO

log = logging.getLogger("tandem.lsp")

MAX_BODY = 64 * 1024 * 1024  # a bigger message is refused and skipped, never buffered
MAX_HEADER = 8 * 1024  # a header block (all header lines) longer than this is garbage
CHUNK = 64 * 1024
_MARKER = re.compile(rb"content-length:", re.IGNORECASE)
_DIGITS = re.compile(rb"[0-9]+")


@dataclass(frozen=True)
class FramingError:
    """Bytes that are not a well-formed message; `refused` is set for a message that was well
    framed but too large (the client deserves an answer: one with id null)."""

    reason: str
    refused: bool = False


def parse_header(block: bytes) -> int | str:
    """The body length a header block declares, or why the block is unusable."""
    length: int | None = None
    for line in block.split(b"\r\n"):
        name, colon, value = line.partition(b":")
        if not colon:
            return f"header line without a colon: {line[:60]!r}"
        if name.strip().lower() != b"content-length":
            continue  # Content-Type and anything else: ignored
        value = value.strip()
        if not _DIGITS.fullmatch(value):
            return f"Content-Length is not a non-negative decimal integer: {value[:40]!r}"
        digits = value.lstrip(b"0") or b"0"
        n = int(digits) if len(digits) <= 12 else MAX_BODY + 1  # no int() of thousands of digits
        if length is not None and n != length:
            return "two different Content-Length headers"
        length = n
    if length is None:
        return "no Content-Length header"
    return length


class Framer:
    """Split a byte stream into message bodies. `feed` returns, in order, each complete body
    (bytes) and each `FramingError` the new bytes complete; partial input is kept for later."""

    def __init__(self, max_body: int = MAX_BODY, max_header: int = MAX_HEADER) -> None:
        self.max_body, self.max_header = max_body, max_header
        self.buf = bytearray()
        self.body_length: int | None = None  # reading a body of this many bytes
        self.resyncing = False  # skipping to the next `Content-Length:`

    def feed(self, data: bytes) -> list[bytes | FramingError]:
        self.buf += data
        out: list[bytes | FramingError] = []
        while True:
            if self.body_length is not None:
                if len(self.buf) < self.body_length:
                    return out
                out.append(bytes(self.buf[: self.body_length]))
                del self.buf[: self.body_length]
                self.body_length = None
                continue
            if self.resyncing:
                found = _MARKER.search(self.buf)
                if found is None:  # keep a tail that may be the start of a marker split across reads
                    del self.buf[: max(0, len(self.buf) - len(_MARKER.pattern) + 1)]
                    return out
                del self.buf[: found.start()]
                self.resyncing = False
            while self.buf[:2] == b"\r\n":  # stray line ends between messages
                del self.buf[:2]
            end = self.buf.find(b"\r\n\r\n", 0, self.max_header + 4)
            if end < 0:
                if len(self.buf) > self.max_header:
                    out.append(self._skip(f"no end of the header block within {self.max_header} bytes"))
                    continue
                return out
            parsed = parse_header(bytes(self.buf[:end]))
            if isinstance(parsed, str):
                out.append(self._skip(parsed))
            elif parsed > self.max_body:
                out.append(self._skip(f"a message body of {parsed} bytes is over the limit of {self.max_body}", refused=True))
            else:
                del self.buf[: end + 4]
                self.body_length = parsed

    def _skip(self, reason: str, refused: bool = False) -> FramingError:
        """Give up on the message at the start of the buffer: look for the next header."""
        del self.buf[:1]
        self.resyncing = True
        return FramingError(reason, refused)


async def serve(
    chunks: AsyncIterator[bytes], on_body: Callable[[bytes], None], on_error: Callable[[FramingError], None], stop_event: threading.Event
) -> None:
    """Frame `chunks` until they end (or `stop_event` is set), handing over each body and each
    framing error. Only SystemExit (the `exit` notification) and a lost client end it early."""
    framer = Framer()
    async for chunk in chunks:
        for item in framer.feed(chunk):
            if isinstance(item, FramingError):
                log.warning("skipped unframeable input: %s", item.reason)
                on_error(item)
            else:
                on_body(item)
        if stop_event.is_set():
            break
    if framer.buf.strip() or framer.body_length is not None:
        log.warning("the input ended inside a message")


async def stdin_chunks(stream: BinaryIO) -> AsyncIterator[bytes]:
    """Chunks of `stream`, read by a daemon thread (a blocked read never keeps the process from
    exiting), with back-pressure: the thread reads ahead at most a few chunks."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=4)
    read: Callable[[int], bytes]
    try:  # the file descriptor itself: a daemon thread blocked in a buffered read would hold the
        read = functools.partial(os.read, stream.fileno())  # buffer's lock, and the interpreter aborts on it at exit
    except (AttributeError, OSError, ValueError):
        read = getattr(stream, "read1", stream.read)

    def reader() -> None:
        while True:
            try:
                data = read(CHUNK)
            except (OSError, ValueError) as exc:  # closed under us
                log.warning("stdin: %s", exc)
                data = b""
            try:
                asyncio.run_coroutine_threadsafe(queue.put(data), loop).result()
            except (Exception, asyncio.CancelledError):  # the loop is gone
                return
            if not data:
                return

    threading.Thread(target=reader, name="tandem-lsp-stdin", daemon=True).start()
    while data := await queue.get():
        yield data


async def stream_chunks(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    while data := await reader.read(CHUNK):
        yield data
