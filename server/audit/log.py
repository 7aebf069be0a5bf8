"""`AuditLog`: the writing side. Records are queued by the gateway without blocking the event loop
and sealed onto the chain by one writer thread, a batch per transaction; every `checkpoint_every`
records (and at shutdown) the chain head is signed.

Nothing a caller sends can stall the writer: an entry is made sealable before it is written (a
body that cannot be serialised becomes a minimal record naming the error, text the database
cannot store is escaped), and a batch the database refuses is split so one bad entry cannot
hold back the others. A refusal that is the database's own (disk full, locked) is retried with
backoff, in order, never dropped; each failure is logged and counted. Shutdown drains the queue.
The queue is bounded softly: past `max_queue` the gateway refuses new calls (`accepting`) rather
than let records pile up unwritten; what is already queued is always kept.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from sqlalchemy import or_, select

from ..clock import iso_utc, utc_now
from ..settings import tandem_home
from . import merkle, store, treehead
from .chain import canonical, checkpoint_text, ulid
from .keys import AuditKeys, public_key_id
from .record import Envelope, Outcome

log = logging.getLogger("tandem.audit")


@dataclass(frozen=True)
class AuditConfig:
    directory: Path | None = None  # default: $TANDEM_HOME/audit (`home`)
    checkpoint_every: int = 256
    checkpoint_seconds: float = 3600.0  # also sign a moved head at least this often
    content_days: int = 30  # redacted prompts and outputs are kept this long; 0 keeps none (HMACs only)
    signing_key: Path | None = None  # default: <directory>/signing.key
    tree_heads: Path | None = None  # where signed tree heads are published; default: <directory>/checkpoints.jsonl
    max_queue: int = 4096  # past this many unwritten records, new calls are refused until the writer catches up
    stuck_seconds: float = 30.0  # records waiting this long with no commit: the writer is stuck (healthz says so)
    database_url: str | None = None  # the records on PostgreSQL (postgresql+psycopg://…), one chain for a fleet; keys stay in `home`
    lease_seconds: float = 15.0  # on a shared log: a replica silent this long is dead, and its cut calls are recorded by another

    @property
    def home(self) -> Path:
        """The log's folder: the configured one, or $TANDEM_HOME/audit (read when asked, so a
        test's TANDEM_HOME holds)."""
        return self.directory or tandem_home() / "audit"


@dataclass
class Entry:
    """One record to seal: the envelope's body (no seq/id/ts yet) and the content kept apart."""

    body: dict[str, Any]
    prompt: str | None = None
    output: str | None = None
    call: str | None = None  # the journal entry this record closes (see `Opened`)


@dataclass
class Opened:
    """A call has started: journalled until its `Entry` (with the same `call`) is sealed."""

    call: str
    body: dict[str, Any]


class AuditLog:
    def __init__(self, config: AuditConfig, registry: CollectorRegistry | None = None) -> None:
        self.config = config
        registry = registry or CollectorRegistry()
        self._failures = Counter(
            "tandem_audit_write_failures",
            "Attempts to write audit records that the database refused (they are retried).",
            registry=registry,
        )
        self._unsealable = Counter(
            "tandem_audit_unsealable_records",
            "Records that could not be serialised as they were and were written as a minimal record naming the error.",
            registry=registry,
        )
        self._depth = Gauge("tandem_audit_queue_depth", "Audit records waiting to be written.", registry=registry)
        self._depth.set_function(lambda: self.depth)
        self._stuck = Gauge(
            "tandem_audit_writer_stuck", "1 while records wait and the writer has committed nothing for stuck_seconds.", registry=registry
        )
        self._stuck.set_function(lambda: float(self.stuck))
        self.keys = AuditKeys.load_or_create(config.home, config.signing_key)
        self.db = store.open_db(config.database_url or config.home / "audit.db", writer=True)
        self.shared = config.database_url is not None  # other replicas write to this log too
        self.replica = ulid()  # this writer, in the journal of calls and the heartbeats
        self._last_beat = 0.0
        self.tree_heads_path = config.tree_heads or config.home / "checkpoints.jsonl"
        self._tree = merkle.CompactRange()
        self._published = 0  # the tree size of the last head published by this process
        self._queue: queue.Queue[Entry | Opened | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._last_progress = time.monotonic()  # the writer's last commit, or the moment the queue was last empty
        with self.db.begin() as conn:
            expired = store.expire_content(conn)
        if expired:
            log.info("audit: %d expired content rows deleted", expired)
        self.recovered = self._recover_interrupted()
        self._sync_tree()
        self.publish_tree_head()

    @property
    def path(self) -> Path:
        return self.config.home / "audit.db"

    def start(self) -> AuditLog:
        self._thread = threading.Thread(target=self._run, name="tandem-audit", daemon=True)
        self._thread.start()
        return self

    def pseudonym(self, value: str | None, purpose: str) -> str | None:
        return None if value is None else self.keys.mac(value, purpose)

    def seal_content(self, text: str) -> str:
        """The HMAC of content as it will be stored (see `_storable`), so verification can recompute it."""
        return self.keys.mac(_storable(text) or "", "content")

    @property
    def depth(self) -> int:
        """Records not yet committed: queued, or in the batch the writer is writing."""
        return self._queue.unfinished_tasks

    @property
    def stuck(self) -> bool:
        """Records are waiting and nothing has been committed for `stuck_seconds` (or the writer died)."""
        if self._thread is not None and not self._thread.is_alive() and not self._stopping.is_set():
            return True
        return self.depth > 0 and time.monotonic() - self._last_progress > self.config.stuck_seconds

    @property
    def accepting(self) -> bool:
        """Whether the gateway may start new calls: their records would be written, not pile up."""
        return self.depth < self.config.max_queue and not self.stuck

    def open_call(self, body: dict[str, Any]) -> str:
        """Journal a call that has started (its skeleton envelope); returns the token its `Entry` carries."""
        call = ulid()
        self.submit(Opened(call, body))
        return call

    def _recover_interrupted(self) -> int:
        """Calls journalled but never sealed were cut by a crash: each gets its record now,
        `interrupted`. On a file of its own, every call another process journalled was cut (at
        start-up, the last run's); on a shared log, only those of replicas whose heartbeat stopped
        `lease_seconds` ago (asked at start-up and with every heartbeat after)."""
        with self.db.begin() as conn:
            query = select(store.pending).where(store.pending.c.replica.is_distinct_from(self.replica))
            if self.shared:
                self._beat(conn)
                alive = select(store.replicas.c.replica).where(store.replicas.c.seen_at > iso_utc(time.time() - self.config.lease_seconds))
                query = query.where(or_(store.pending.c.replica.is_(None), store.pending.c.replica.not_in(alive)))
            rows = conn.execute(query).fetchall()
            for row in rows:
                cut = dataclasses.replace(
                    Envelope.read(json.loads(row.body)),
                    outcome=Outcome("interrupted", "server_stopped"),
                    interrupted={"note": "the server stopped before this call ended; what it streamed, if anything, is not known here"},
                )
                store.append(conn, cut.to_json(), None, None)
                conn.execute(store.pending.delete().where(store.pending.c.call == row.call))
        if rows:
            log.warning("audit: %d calls cut by a stopped server recorded as interrupted", len(rows))
        return len(rows)

    def _beat(self, conn: Any) -> None:
        """This replica is alive (upserted by delete and insert: the same SQL on both engines, under the chain's lock)."""
        conn.execute(store.replicas.delete().where(store.replicas.c.replica == self.replica))
        conn.execute(store.replicas.insert().values(replica=self.replica, seen_at=utc_now()))
        self._last_beat = time.monotonic()

    def _heartbeat_due(self) -> bool:
        return self.shared and time.monotonic() - self._last_beat >= self.config.lease_seconds / 3

    def submit(self, entry: Entry | Opened) -> None:
        """Queue a record (never blocks, never drops). Without a running writer, it is written at once."""
        if self._thread is None:
            self.write([entry])
        else:
            if self._queue.empty():
                self._last_progress = time.monotonic()
            self._queue.put(entry)

    def flush(self) -> None:
        """Wait until every queued record is committed."""
        if self._thread is not None:
            self._queue.join()

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)  # after everything queued so far: the writer drains, then stops
            self._thread.join(timeout=60)
            if self._thread.is_alive():
                self._stopping.set()  # the database keeps refusing: stop retrying, and say how much is lost
                self._thread.join(timeout=10)
                log.error("audit: the writer could not drain at shutdown; %d records unwritten", self.depth)
            self._thread = None
        self.checkpoint()
        if self.shared:  # a clean stop: nothing of this replica's is left to recover
            with self.db.begin() as conn:
                conn.execute(store.replicas.delete().where(store.replicas.c.replica == self.replica))
        self.db.dispose()

    def write(self, entries: list[Entry | Opened]) -> list[dict[str, Any]]:
        sealed = []
        expires = self._expiry()
        entries = [self._sealable(e) if isinstance(e, Entry) else e for e in entries]
        with self.db.begin() as conn:
            for entry in entries:
                if isinstance(entry, Opened):
                    conn.execute(
                        store.pending.insert().values(call=entry.call, body=canonical(entry.body).decode("utf-8"), replica=self.replica)
                    )
                    continue
                content = {"prompt": entry.prompt, "output": entry.output} if expires else None
                sealed.append(store.append(conn, entry.body, content, expires))
                if entry.call is not None:
                    conn.execute(store.pending.delete().where(store.pending.c.call == entry.call))
        if sealed:
            if self._tree.size != sealed[0]["seq"] - 1:
                self._sync_tree()  # another process appended meanwhile: rebuild from the database
            else:
                for record in sealed:
                    self._tree.append(bytes.fromhex(record["leaf_hash"]))
            self.publish_tree_head()
        if sealed and sealed[-1]["seq"] // self.config.checkpoint_every > (sealed[0]["seq"] - 1) // self.config.checkpoint_every:
            self.checkpoint()
        return sealed

    def _sync_tree(self) -> None:
        """Bring the in-memory tree up to the database's head: the records other writers (a CLI
        command, the other replicas) appended since this one last looked."""
        with self.db.connect() as conn:
            if store.head(conn)[0] < self._tree.size:
                self._tree = merkle.CompactRange()
            for leaf in store.leaves(conn, after=self._tree.size):
                self._tree.append(leaf)

    def publish_tree_head(self) -> dict[str, Any] | None:
        """Sign the tree as it stands and append the head to the published file (if the tree moved)."""
        if self._tree.size == 0 or self._tree.size == self._published:
            return None
        with self.db.connect() as conn:
            seq, head = store.head(conn)
        if seq != self._tree.size:
            self._sync_tree()
        th = treehead.sign(self.keys, self._tree.size, self._tree.root().hex(), head, utc_now())
        treehead.publish(self.tree_heads_path, th)
        self._published = self._tree.size
        return th

    def checkpoint(self) -> dict[str, Any] | None:
        """Sign the chain head (if it moved since the last checkpoint)."""
        with self.db.begin() as conn:
            seq, head = store.head(conn)
            last = conn.execute(select(store.checkpoints).order_by(store.checkpoints.c.seq.desc()).limit(1)).first()
            if seq == 0 or (last is not None and last.seq >= seq):
                return None
            prev_sig = last.sig if last is not None else ""
            row = {
                "seq": seq,
                "ts": utc_now(),
                "head": head,
                "prev_sig": prev_sig,
                "key_id": public_key_id(self.keys.public),
                "sig": self.keys.sign(checkpoint_text(seq, head, prev_sig)),
            }
            conn.execute(store.checkpoints.insert().values(**row))
        return row

    def _sealable(self, entry: Entry) -> Entry:
        """The entry as it can be written: a body that cannot be serialised (a NaN, a type JSON does
        not know, a lone surrogate) becomes a minimal record that keeps the call's identity and
        names the error, so the call still has its record; content is escaped where it must be."""
        try:
            canonical(entry.body)
        except (TypeError, ValueError, RecursionError) as exc:
            self._unsealable.inc()
            log.error(
                "audit: a %s record could not be serialised (%s); writing a minimal record", entry.body.get("type"), type(exc).__name__
            )
            entry = Entry(_minimal(entry.body, exc), call=entry.call)  # its content has no sealed HMAC to be checked against: not kept
        return Entry(entry.body, _storable(entry.prompt), _storable(entry.output), entry.call)

    def _expiry(self) -> str | None:
        if self.config.content_days <= 0:
            return None
        when = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=self.config.content_days)
        return when.strftime("%Y-%m-%dT%H:%M:%S.000Z")

    def _run(self) -> None:
        stop, last_signed = False, time.monotonic()
        wait = min(60.0, self.config.checkpoint_seconds, self.config.lease_seconds / 3 if self.shared else 60.0)
        while not stop:
            if self._heartbeat_due():
                self._recover_retrying()
            try:
                first = self._queue.get(timeout=wait)
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
            self._write_retrying(entries)
            for _ in batch:
                self._queue.task_done()

    def _recover_retrying(self) -> None:
        """A heartbeat, and the calls of replicas found dead; a database that refuses is tried at the next beat."""
        try:
            if self._recover_interrupted():
                self._sync_tree()
                self.publish_tree_head()
        except Exception:
            self._failures.inc()
            log.exception("audit: the heartbeat could not be written; trying again")
            self._last_beat = time.monotonic()

    def _write_retrying(self, entries: list[Entry | Opened]) -> None:
        """Write a batch; if the database refuses it, write its entries one by one, so that an
        entry it refuses on its own is retried alone, in order, while the database itself is
        retried with backoff (never dropped, unless shutdown gives up on it)."""
        delay = 0.2
        while entries:
            try:
                self.write(entries)
                self._last_progress = time.monotonic()
                return
            except Exception:  # loud, counted, retried: a record is never silently dropped
                self._failures.inc()
                if len(entries) > 1:
                    log.exception("audit: a batch of %d records was refused; writing them one by one", len(entries))
                    for entry in entries:
                        self._write_retrying([entry])
                    return
                log.exception("audit: a record could not be written; retrying in %.1f s", delay)
                if self._stopping.wait(delay):
                    log.error("audit: giving up on a record at shutdown")
                    return
                delay = min(delay * 2, 5.0)


def _minimal(body: dict[str, Any], exc: BaseException) -> dict[str, Any]:
    """What of a record can always be written: its kind and identity, its outcome, and the error."""

    def text(value: Any) -> str | None:
        return _storable(value) if isinstance(value, str) else None

    outcome: dict[str, Any] = body["outcome"] if isinstance(body.get("outcome"), dict) else {}
    return Envelope(
        text(body.get("type")) or "unknown",
        text(body.get("surface")),
        text(body.get("request_id")),
        conversation_id=text(body.get("conversation_id")),
        outcome=Outcome(text(outcome.get("status")) or "error", text(outcome.get("error_code"))),
        audit_error=_storable(f"the full record could not be serialised: {type(exc).__name__}: {str(exc)[:200]}"),
    ).to_json()


def _storable(value: str | None) -> str | None:
    """Text SQLite can store as UTF-8: lone surrogates are escaped rather than refused."""
    if value is None:
        return None
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
