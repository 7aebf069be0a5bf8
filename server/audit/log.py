"""`AuditLog`: the writing side. Records are queued by the gateway without blocking the event loop
and sealed onto the chain by one writer thread, a batch per transaction; every `checkpoint_every`
records (and at shutdown) the chain head is signed. A batch the database refuses (disk full,
locked) is retried with backoff, in order, never dropped; each failure is logged and counted.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from sqlalchemy import select

from . import store
from ..clock import utc_now
from .chain import checkpoint_text
from .keys import AuditKeys, public_key_id

log = logging.getLogger("tandem.audit")


@dataclass(frozen=True)
class AuditConfig:
    directory: Path
    checkpoint_every: int = 256
    checkpoint_seconds: float = 3600.0  # also sign a moved head at least this often
    content_days: int = 30  # redacted prompts and outputs are kept this long; 0 keeps none (HMACs only)


@dataclass
class Entry:
    """One record to seal: the envelope's body (no seq/id/ts yet) and the content kept apart."""

    body: dict[str, Any]
    prompt: str | None = None
    output: str | None = None


class AuditLog:
    def __init__(self, config: AuditConfig, registry: CollectorRegistry | None = None) -> None:
        self.config = config
        registry = registry or CollectorRegistry()
        self._failures = Counter("tandem_audit_write_failures", "Attempts to write audit records that the database refused (they are retried).", registry=registry)
        self._depth = Gauge("tandem_audit_queue_depth", "Audit records waiting to be written.", registry=registry)
        self._depth.set_function(lambda: self._queue.qsize())
        self.keys = AuditKeys.load_or_create(config.directory)
        self.db = store.open_db(config.directory / "audit.db", writer=True)
        self._queue: queue.Queue[Entry | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        with self.db.begin() as conn:
            expired = store.expire_content(conn)
        if expired:
            log.info("audit: %d expired content rows deleted", expired)

    @property
    def path(self) -> Path:
        return self.config.directory / "audit.db"

    def start(self) -> AuditLog:
        self._thread = threading.Thread(target=self._run, name="tandem-audit", daemon=True)
        self._thread.start()
        return self

    def pseudonym(self, value: str | None, purpose: str) -> str | None:
        return None if value is None else self.keys.mac(value, purpose)

    def seal_content(self, text: str) -> str:
        return self.keys.mac(text, "content")

    def submit(self, entry: Entry) -> None:
        """Queue a record (never blocks). Without a running writer, it is written at once."""
        if self._thread is None:
            self.write([entry])
        else:
            self._queue.put(entry)

    def flush(self) -> None:
        """Wait until every queued record is committed."""
        if self._thread is not None:
            self._queue.join()

    def close(self) -> None:
        if self._thread is not None:
            self._stopping.set()
            self._queue.put(None)
            self._thread.join(timeout=30)
            self._thread = None
        self.checkpoint()
        self.db.dispose()

    def write(self, entries: list[Entry]) -> list[dict[str, Any]]:
        sealed = []
        expires = self._expiry()
        with self.db.begin() as conn:
            for entry in entries:
                content = {"prompt": entry.prompt, "output": entry.output} if expires else None
                sealed.append(store.append(conn, entry.body, content, expires))
        if sealed and sealed[-1]["seq"] // self.config.checkpoint_every > (sealed[0]["seq"] - 1) // self.config.checkpoint_every:
            self.checkpoint()
        return sealed

    def checkpoint(self) -> dict[str, Any] | None:
        """Sign the chain head (if it moved since the last checkpoint)."""
        with self.db.begin() as conn:
            seq, head = store.head(conn)
            last = conn.execute(select(store.checkpoints).order_by(store.checkpoints.c.seq.desc()).limit(1)).first()
            if seq == 0 or (last is not None and last.seq >= seq):
                return None
            prev_sig = last.sig if last is not None else ""
            row = {"seq": seq, "ts": utc_now(), "head": head, "prev_sig": prev_sig, "key_id": public_key_id(self.keys.public),
                   "sig": self.keys.sign(checkpoint_text(seq, head, prev_sig))}
            conn.execute(store.checkpoints.insert().values(**row))
        return row

    def _expiry(self) -> str | None:
        if self.config.content_days <= 0:
            return None
        when = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=self.config.content_days)
        return when.strftime("%Y-%m-%dT%H:%M:%S.000Z")

    def _run(self) -> None:
        stop, last_signed = False, time.monotonic()
        while not stop:
            try:
                first = self._queue.get(timeout=min(60.0, self.config.checkpoint_seconds))
            except queue.Empty:
                if time.monotonic() - last_signed >= self.config.checkpoint_seconds:
                    self.checkpoint()
                    last_signed = time.monotonic()
                continue
            batch = [first]
            while len(batch) < 256:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            entries = [e for e in batch if e is not None]
            stop = len(entries) < len(batch)
            delay = 0.2
            while entries:
                try:
                    self.write(entries)
                    break
                except Exception:  # loud, counted, retried: a record is never silently dropped
                    self._failures.inc()
                    log.exception("audit: %d records could not be written; retrying in %.1f s", len(entries), delay)
                    if self._stopping.wait(delay) and delay >= 5:
                        log.error("audit: giving up on %d records at shutdown", len(entries))
                        break
                    delay = min(delay * 2, 5.0)
            for _ in batch:
                self._queue.task_done()
