"""Signed webhooks against a real receiver (an HTTP server on a loopback socket): every event once,
signed, in order, to the webhooks that want it; signatures refused when anything is off; retries
with backoff while a receiver is down or failing, and nothing lost or sent twice across a restart;
the inbound check; the CLI; and the README's standalone verifier."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import json
import logging
import re
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from dialog.store import Site, Store
from dialog.webhooks import EVENTS, SignatureRefused, Webhooks, backoff_delay, new_secret, sign, verify
from tests.waiting import eventually_async

ROOT = Path(__file__).resolve().parents[2]


def fast(engine: Any, registry: CollectorRegistry | None = None, max_attempts: int = 1000) -> Webhooks:
    """Webhooks that try again within a test's patience."""
    return Webhooks(engine, registry, base_delay=0.05, max_delay=0.2, max_attempts=max_attempts, timeout=5.0)


# --- the receiver ---------------------------------------------------------------------------------
class Receiver:
    """An HTTP server on 127.0.0.1 that records each POST (headers, body, the status it answered)
    and answers the statuses of `statuses` in turn, then `default`."""

    def __init__(self, port: int = 0, statuses: tuple[int, ...] = (), default: int = 200) -> None:
        self.requests: list[tuple[dict[str, str], bytes, int]] = []
        self.statuses, self.default = list(statuses), default
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.lock:
                    status = receiver.statuses.pop(0) if receiver.statuses else receiver.default
                    receiver.requests.append(({k: v for k, v in self.headers.items()}, body, status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()

    def accepted(self) -> list[tuple[dict[str, str], bytes]]:
        """What it answered 2xx, in arrival order."""
        with self.lock:
            return [(h, b) for h, b, status in self.requests if 200 <= status < 300]

    def accepted_ids(self) -> list[str]:
        return [json.loads(b)["id"] for _, b in self.accepted()]

    def count(self) -> int:
        with self.lock:
            return len(self.requests)


@pytest.fixture
def receiver() -> Iterator[Callable[..., Receiver]]:
    made: list[Receiver] = []

    def make(*args: Any, **kwargs: Any) -> Receiver:
        made.append(Receiver(*args, **kwargs))
        return made[-1]

    yield make
    for r in made:
        r.close()


def reserved_port() -> int:
    """A port nothing listens on (bound, then let go), for a receiver that is down and comes up later."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scenario(where: Path | str, body: Callable[[Store], Awaitable[None]]) -> None:
    """Run `body` on a fresh chat store with the site "shop" (and "other"): in the folder `where`,
    or at `where` (the `chat_db` fixture's file or PostgreSQL URL)."""

    async def main() -> None:
        store = await Store.open(where / "chat.db" if isinstance(where, Path) and where.is_dir() else where)
        try:
            await store.put_site(Site("shop", "shop", ("http://x",), "prompt"))
            await store.put_site(Site("other", "other", ("http://y",), "prompt"))
            await body(store)
        finally:
            await store.close()

    asyncio.run(main())


async def wait_for(check: Callable[[], Any], what: str) -> Any:
    return await eventually_async(check, what, timeout=20)


@functools.cache
def readme_verifier() -> Callable[[str, str, bytes, int], bool]:
    """The README's `verify_tandem_signature`, from the Python block of its Webhooks section, run as it is."""
    readme = (ROOT / "README.md").read_text()
    start = readme.index("### Webhooks: your helpdesk sees every conversation")
    section = readme[start : readme.index("\n### ", start + 1)]
    signature = "def verify_tandem_signature(secret: str, header: str, body: bytes, tolerance: int = 300) -> bool"
    (code,) = [block for block in re.findall(r"```python\n(.*?)```", section, re.S) if signature in block]
    imports = {line for line in code.splitlines() if line.startswith(("import ", "from "))}
    assert imports <= {"import hashlib", "import hmac", "import time"}, imports  # the standard library only
    namespace: dict[str, Any] = {}
    exec(code, namespace)
    verifier: Callable[[str, str, bytes, int], bool] = namespace["verify_tandem_signature"]
    return verifier


async def settled(hooks: Webhooks, site_key: str, count: int) -> list[dict[str, Any]]:
    """The site's delivery log once `count` deliveries are recorded delivered (the receiver has them a moment before), else []."""
    log = await hooks.deliveries(site_key)
    return log if sum(d["status"] == "delivered" for d in log) == count else []


def delivered_properly(secret: str, headers: dict[str, str], body: bytes) -> dict[str, Any]:
    """The checks every delivery must pass; its body."""
    verify(secret, headers["Tandem-Signature"], body)
    assert readme_verifier()(secret, headers["Tandem-Signature"], body, 300)
    event = json.loads(body)
    assert headers["Tandem-Event-Id"] == event["id"] and headers["Tandem-Event"] == event["type"]
    assert headers["Content-Type"] == "application/json" and headers["User-Agent"] == "Tandem-Webhooks/1"
    assert set(event) == {"id", "type", "created_at", "site_key", "data"} and event["id"].startswith("evt_")
    return dict(event)


# --- signatures -----------------------------------------------------------------------------------
def test_a_signature_verifies_and_anything_off_is_refused() -> None:
    secret, body, t = new_secret(), b'{"id":"evt_1","text":"h\xc3\xa9"}', int(time.time())
    assert secret.startswith("whsec_") and len(secret) > 40 and new_secret() != secret
    header = sign(secret, body, t)
    expected = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    assert header == f"t={t},v1={expected}"
    verify(secret, header, body)
    verify(secret, f"t={t},v1={'0' * 64},v1={expected}", body)  # several v1 (a secret's rotation): any one matching
    verify(secret, f"v0=abc, t={t}, v1={expected}", body)  # other schemes ignored, spaces allowed
    refused: dict[str, list[tuple[str, str | None, bytes]]] = {
        "mismatch": [
            (secret, header, body + b" "),  # tampered body
            (new_secret(), header, body),  # another secret
            (secret, f"t={t + 1},v1={expected}", body),  # the timestamp changed
        ],
        "expired": [
            (secret, sign(secret, body, t - 301), body),  # too old: a replay
            (secret, sign(secret, body, t + 301), body),  # from the future
        ],
        "missing": [(secret, None, body), (secret, "", body)],
        "malformed": [
            (secret, "garbage", body),
            (secret, f"t={t}", body),
            (secret, f"v1={expected}", body),
            (secret, f"t=abc,v1={expected}", body),
            (secret, f"t={t},t={t},v1={expected}", body),
            (secret, f"t={t},v1=xyz", body),
            (secret, f"t=١٢٣,v1={expected}", body),  # digits, but not ASCII ones
        ],
    }
    for code, cases in refused.items():
        for key, head, data in cases:
            with pytest.raises(SignatureRefused) as caught:
                verify(key, head, data, now=t)
            assert caught.value.code == code, (head, caught.value)


@settings(max_examples=300, deadline=None, database=None)
@given(
    header=st.one_of(
        st.none(),
        st.text(),
        st.lists(
            st.tuples(st.sampled_from(["t", "v1", "v0", "", "T"]), st.sampled_from(["=", "", "=="]), st.text(max_size=80)),
            max_size=4,
        ).map(lambda parts: ",".join(k + s + v for k, s, v in parts)),
        st.integers(min_value=-(10**30), max_value=10**30).map(lambda t: f"t={t},v1={'a' * 64}"),
    ),
    body=st.binary(max_size=200),
    secret=st.text(alphabet=st.characters(codec="utf-8"), max_size=40),
)
def test_verify_only_ever_refuses_with_signature_refused(header: str | None, body: bytes, secret: str) -> None:
    try:
        verify(secret, header, body)
    except SignatureRefused as exc:
        assert exc.code in {"missing", "malformed", "expired", "mismatch"}
    if header is not None:  # and the README's verifier says no without raising
        assert readme_verifier()(secret, header, body, 300) is False


def test_backoff_doubles_up_to_the_cap_give_or_take_a_fifth() -> None:
    for attempts, nominal in [(1, 2.0), (2, 4.0), (3, 8.0), (9, 512.0), (10, 600.0), (10_000, 600.0)]:
        delays = [backoff_delay(attempts, 2.0, 600.0) for _ in range(50)]
        assert all(0.8 * nominal <= d <= 1.2 * nominal for d in delays), (attempts, min(delays), max(delays))


# --- delivery -------------------------------------------------------------------------------------
def test_every_event_arrives_once_signed_in_order_to_the_webhooks_that_want_it(chat_db: Path | str, receiver: Any) -> None:
    everything, some, elsewhere = receiver(), receiver(), receiver()
    registry = CollectorRegistry()

    async def body(store: Store) -> None:
        hooks = fast(store.engine, registry)
        _, all_secret = await hooks.add("shop", everything.url, None)
        _, some_secret = await hooks.add("shop", some.url, ["handoff.requested", "conversation.closed"])
        _, other_secret = await hooks.add("other", elsewhere.url, None)
        hooks.start()
        try:
            ids = [
                await hooks.emit("shop", event, {"conversation_id": "conv_1", "n": n, "text": "grüße"}) for n, event in enumerate(EVENTS)
            ]
            other_id = await hooks.emit("other", "message.created", {"conversation_id": "conv_2"})
            await wait_for(lambda: len(everything.accepted()) == len(EVENTS), "every event at the webhook that wants them all")
            await wait_for(lambda: len(some.accepted()) == 2 and len(elsewhere.accepted()) == 1, "the others' events")
            assert len(set(ids + [other_id])) == len(EVENTS) + 1
            delivered = [delivered_properly(all_secret, h, b) for h, b in everything.accepted()]
            assert [e["id"] for e in delivered] == ids and [e["type"] for e in delivered] == list(EVENTS)  # once each, in order
            assert [e["data"]["n"] for e in delivered] == list(range(len(EVENTS))) and delivered[0]["data"]["text"] == "grüße"
            assert {e["site_key"] for e in delivered} == {"shop"}
            chosen = [delivered_properly(some_secret, h, b) for h, b in some.accepted()]
            assert [(e["id"], e["type"]) for e in chosen] == [(ids[1], "handoff.requested"), (ids[5], "conversation.closed")]
            (theirs,) = [delivered_properly(other_secret, h, b) for h, b in elsewhere.accepted()]
            assert theirs["id"] == other_id and theirs["site_key"] == "other"
            log = await wait_for(lambda: settled(hooks, "shop", len(EVENTS) + 2), "the deliveries recorded")
            assert len(log) == len(EVENTS) + 2 and {(d["status"], d["attempts"], d["last_code"]) for d in log} == {("delivered", 1, 200)}
            assert {d["url"] for d in log} == {everything.url, some.url}  # (the other site's are not in shop's log)
            assert await hooks.deliveries("shop", status="pending") == []
        finally:
            await hooks.close()
        assert everything.count() == len(EVENTS) and some.count() == 2 and elsewhere.count() == 1  # nothing sent twice
        sample = registry.get_sample_value
        assert sample("tandem_webhook_deliveries_total", {"result": "delivered"}) == len(EVENTS) + 3
        assert sample("tandem_webhook_deliveries_total", {"result": "retry"}) == 0

    scenario(chat_db, body)


def test_a_receiver_that_is_down_gets_everything_once_when_it_comes_up(tmp_path: Path, receiver: Any) -> None:
    port, healthy = reserved_port(), receiver()

    async def body(store: Store) -> None:
        hooks = fast(store.engine)
        down_id, secret = await hooks.add("shop", f"http://127.0.0.1:{port}/hook", None)
        await hooks.add("shop", healthy.url, None)
        hooks.start()
        try:
            ids = [await hooks.emit("shop", "message.created", {"n": n}) for n in range(5)]
            # the other webhook is not held up
            await wait_for(lambda: healthy.accepted_ids() == ids, "the healthy receiver's deliveries")

            async def retried() -> bool:
                down = {d["id"]: d for d in await hooks.deliveries("shop") if d["id"].endswith(down_id)}
                return down[f"{ids[0]}.{down_id}"]["attempts"] >= 3

            await wait_for(retried, "retries of the first event while the receiver is down")
            down = [d for d in await hooks.deliveries("shop") if d["id"].endswith(down_id)]
            assert {d["status"] for d in down} == {"pending"}
            first = next(d for d in down if d["id"].startswith(ids[0]))
            assert first["last_code"] is None and "Connect" in first["last_error"]
            assert all(d["attempts"] == 0 for d in down if d is not first)  # the later ones wait their turn
            came_up = receiver(port)
            await wait_for(lambda: len(came_up.accepted()) == 5, "every event once the receiver is up")
            assert came_up.accepted_ids() == ids  # each exactly once, in order
            for headers, sent in came_up.accepted():
                delivered_properly(secret, headers, sent)
            assert len(await wait_for(lambda: settled(hooks, "shop", 10), "the deliveries recorded")) == 10
        finally:
            await hooks.close()
        assert came_up.count() == 5 and healthy.count() == 5

    scenario(tmp_path, body)


def test_a_failing_receiver_gets_the_event_again_until_it_answers_2xx(tmp_path: Path, receiver: Any) -> None:
    flaky = receiver(statuses=(500, 500))
    registry = CollectorRegistry()

    async def body(store: Store) -> None:
        hooks = fast(store.engine, registry)
        _, secret = await hooks.add("shop", flaky.url, ["conversation.rated"])
        hooks.start()
        try:
            event_id = await hooks.emit("shop", "conversation.rated", {"conversation_id": "conv_1", "rating": 5})
            await wait_for(lambda: flaky.accepted(), "the third attempt's delivery")
            (log,) = await wait_for(lambda: hooks.deliveries("shop", status="delivered"), "the delivery recorded")
            assert (log["attempts"], log["last_code"], log["last_error"], log["event"]) == (3, 200, None, "conversation.rated")
            assert log["delivered_at"] and log["id"].startswith(event_id)
        finally:
            await hooks.close()
        with flaky.lock:
            assert [status for _, _, status in flaky.requests] == [500, 500, 200]
            for headers, sent, _ in flaky.requests:  # each attempt signed, with the same event id
                assert delivered_properly(secret, headers, sent)["id"] == event_id
        sample = registry.get_sample_value
        assert sample("tandem_webhook_deliveries_total", {"result": "retry"}) == 2
        assert sample("tandem_webhook_deliveries_total", {"result": "delivered"}) == 1

    scenario(tmp_path, body)


def test_a_delivery_fails_after_max_attempts_and_redeliver_sends_it(tmp_path: Path, receiver: Any) -> None:
    broken = receiver(default=503)
    registry = CollectorRegistry()

    async def body(store: Store) -> None:
        hooks = fast(store.engine, registry, max_attempts=3)
        await hooks.add("shop", broken.url, None)
        hooks.start()
        try:
            event_id = await hooks.emit("shop", "conversation.closed", {"conversation_id": "conv_1"})
            (failed,) = await wait_for(lambda: hooks.deliveries("shop", status="failed"), "the delivery marked failed")
            assert (failed["attempts"], failed["last_code"], failed["last_error"]) == (3, 503, "HTTP 503")
            assert broken.count() == 3 and await hooks.deliveries("shop", status="pending") == []
            assert registry.get_sample_value("tandem_webhook_deliveries_total", {"result": "failed"}) == 1
            broken.default = 200
            assert await hooks.redeliver(failed["id"])
            assert not await hooks.redeliver(failed["id"]) and not await hooks.redeliver("evt_missing.whk_missing")  # only failed ones
            (done,) = await wait_for(lambda: hooks.deliveries("shop", status="delivered"), "the redelivery")
            assert done["attempts"] == 1 and broken.accepted_ids() == [event_id]
        finally:
            await hooks.close()
        assert broken.count() == 4

    scenario(tmp_path, body)


def test_pending_deliveries_survive_a_restart_and_none_is_sent_twice(chat_db: Path | str, receiver: Any) -> None:
    helpdesk = receiver()

    async def body(store: Store) -> None:
        first = fast(store.engine)
        _, secret = await first.add("shop", helpdesk.url, None)
        first.start()
        ids = [await first.emit("shop", "message.created", {"n": n}) for n in range(3)]
        await wait_for(lambda: len(helpdesk.accepted()) == 3, "the first events")
        helpdesk.default = 503  # the helpdesk has trouble, and the server stops
        ids += [await first.emit("shop", "message.created", {"n": n}) for n in range(3, 6)]
        await wait_for(lambda: helpdesk.count() >= 4, "an attempt at the fourth event")
        await first.close()
        ids += [await first.emit("shop", "conversation.closed", {"n": 6})]  # written while no worker runs
        pending = await first.deliveries("shop", status="pending")
        assert len(pending) == 4 and helpdesk.accepted_ids() == ids[:3]
        helpdesk.default = 200
        second = fast(store.engine)  # the next start
        second.start()
        try:
            await wait_for(lambda: len(helpdesk.accepted()) == 7, "the pending events after the restart")
            assert helpdesk.accepted_ids() == ids  # every event exactly once, in order
            for headers, sent in helpdesk.accepted():
                delivered_properly(secret, headers, sent)
        finally:
            await second.close()
        assert len(helpdesk.accepted()) == 7 and Counter(helpdesk.accepted_ids()).most_common(1)[0][1] == 1

    scenario(chat_db, body)


def test_a_failing_round_is_logged_and_the_worker_goes_on(tmp_path: Path, receiver: Any, caplog: pytest.LogCaptureFixture) -> None:
    helpdesk = receiver()

    async def body(store: Store) -> None:
        hooks = fast(store.engine)
        await hooks.add("shop", helpdesk.url, None)
        real, broken = hooks._round, [True]

        async def round_that_fails_once() -> float:
            if broken and broken.pop():
                raise RuntimeError("the disk is full")
            return await real()

        hooks._round = round_that_fails_once  # type: ignore[method-assign]
        with caplog.at_level(logging.ERROR, logger="tandem.webhooks"):
            hooks.start()
            try:
                event_id = await hooks.emit("shop", "conversation.created", {"text": "\ud800 a lone surrogate"})
                await wait_for(lambda: helpdesk.accepted_ids() == [event_id], "the delivery after the failed round")
            finally:
                await hooks.close()
        assert not broken and any("round of deliveries failed" in r.getMessage() and r.exc_info for r in caplog.records)
        ((_, sent),) = helpdesk.accepted()
        assert json.loads(sent)["data"]["text"] == "\ud800 a lone surrogate"  # (sent escaped, as JSON allows)

    scenario(tmp_path, body)


# --- the webhooks themselves, and the inbound direction --------------------------------------------
def test_adding_checks_url_events_and_site_and_never_lists_the_secret(tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        hooks = Webhooks(store.engine)
        for url in ["ftp://helpdesk.example.com/x", "https://", "helpdesk.example.com/hook", "https://exa mple.com/", "http://h:99999/"]:
            with pytest.raises(ValueError, match="http:// or https://"):
                await hooks.add("shop", url, None)
        with pytest.raises(ValueError, match="unknown event"):
            await hooks.add("shop", "https://helpdesk.example.com/hook", ["message.deleted"])
        with pytest.raises(ValueError, match="no site"):
            await hooks.add("nowhere", "https://helpdesk.example.com/hook", None)
        with pytest.raises(ValueError, match="unknown event"):
            await hooks.emit("shop", "message.deleted", {})
        hook_id, secret = await hooks.add("shop", "https://helpdesk.example.com/hook", ["message.created", "message.created"])
        assert hook_id.startswith("whk_") and secret.startswith("whsec_")
        (listed,) = await hooks.hooks("shop")
        assert listed["id"] == hook_id and listed["events"] == ["message.created"] and secret not in json.dumps(listed)
        assert await hooks.hooks("other") == [] and await hooks.secrets("shop") == [secret]
        await hooks.emit("shop", "message.created", {})  # (no worker: it waits in the outbox)
        assert len(await hooks.deliveries("shop")) == 1
        assert await hooks.remove(hook_id) and not await hooks.remove(hook_id)
        assert await hooks.hooks("shop") == [] and await hooks.deliveries("shop") == []

    scenario(tmp_path, body)


def test_inbound_requests_must_be_signed_with_one_of_the_sites_secrets(tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        hooks = Webhooks(store.engine)
        _, shop_secret = await hooks.add("shop", "https://helpdesk.example.com/a", None)
        _, rotated = await hooks.add("shop", "https://helpdesk.example.com/b", None)
        _, other_secret = await hooks.add("other", "https://helpdesk.example.com/c", None)
        reply, t = json.dumps({"author": "Dana (Helpdesk)", "text": "On its way!"}).encode(), int(time.time())
        await hooks.verify_inbound("shop", sign(shop_secret, reply, t), reply)
        await hooks.verify_inbound("shop", sign(rotated, reply, t), reply)
        await hooks.verify_inbound("other", sign(other_secret, reply, t), reply)
        refused = [
            ("shop", sign(other_secret, reply, t), reply, "mismatch"),  # another site's secret
            ("other", sign(shop_secret, reply, t), reply, "mismatch"),
            ("shop", sign(shop_secret, reply, t), reply + b"!", "mismatch"),  # tampered
            ("shop", sign(shop_secret, reply, t - 600), reply, "expired"),
            ("shop", None, reply, "missing"),
            ("shop", "t=1,v1=nothex", reply, "malformed"),
            ("nowhere", sign(shop_secret, reply, t), reply, "mismatch"),  # a site without webhooks accepts nothing
        ]
        for site_key, header, data, code in refused:
            with pytest.raises(SignatureRefused) as caught:
                await hooks.verify_inbound(site_key, header, data)
            assert caught.value.code == code, (site_key, header)

    scenario(tmp_path, body)


# --- the CLI and the README -----------------------------------------------------------------------
def tandem(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "server.cli", *args], capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_the_cli_adds_lists_shows_deliveries_redelivers_and_removes(tmp_path: Path) -> None:
    d = ["--dialog-dir", str(tmp_path)]
    assert tandem("sites", "add", "shop", "--origin", "http://x", *d).returncode == 0
    added = tandem("webhooks", "add", "shop", f"http://127.0.0.1:{reserved_port()}/hook", "--event", "message.created", *d)
    assert added.returncode == 0, added.stderr
    hook_id = re.search(r"whk_[0-9a-f]+", added.stdout).group(0)
    secret = re.search(r"secret: (whsec_\S+)", added.stdout).group(1)
    assert "shown once" in added.stdout
    listed = tandem("webhooks", "list", "shop", *d)
    assert hook_id in listed.stdout and "message.created" in listed.stdout and secret not in listed.stdout
    bad = tandem("webhooks", "add", "shop", "ftp://helpdesk.example.com", *d)
    assert bad.returncode == 2 and "http:// or https://" in bad.stderr
    nowhere = tandem("webhooks", "add", "nowhere", "https://helpdesk.example.com/hook", *d)
    assert nowhere.returncode == 2 and "no site 'nowhere'" in nowhere.stderr

    async def fail_one() -> str:  # a delivery to the receiver that is not there, failed at once
        store = await Store.open(tmp_path / "chat.db")
        hooks = fast(store.engine, max_attempts=1)
        hooks.start()
        try:
            await hooks.emit("shop", "message.created", {"n": 1})
            (failed,) = await wait_for(lambda: hooks.deliveries("shop", status="failed"), "the failed delivery")
            return str(failed["id"])
        finally:
            await hooks.close()
            await store.close()

    delivery_id = asyncio.run(fail_one())
    shown = tandem("webhooks", "deliveries", "shop", "--status", "failed", *d)
    assert shown.returncode == 0 and delivery_id in shown.stdout and "failed (Connect" in shown.stdout
    assert tandem("webhooks", "redeliver", delivery_id, *d).returncode == 0
    assert "pending" in tandem("webhooks", "deliveries", "shop", *d).stdout
    assert tandem("webhooks", "remove", hook_id, *d).returncode == 0
    assert tandem("webhooks", "remove", hook_id, *d).returncode == 1  # (gone)


def test_the_readme_verifier_accepts_a_real_delivery_and_refuses_a_tampered_one(tmp_path: Path, receiver: Any) -> None:
    helpdesk = receiver()
    verifier = readme_verifier()

    async def body(store: Store) -> None:
        hooks = fast(store.engine)
        _, secret = await hooks.add("shop", helpdesk.url, None)
        hooks.start()
        try:
            await hooks.emit("shop", "handoff.requested", {"conversation_id": "conv_1", "reason": "wants a person — ürgent"})
            ((headers, sent),) = await wait_for(lambda: helpdesk.accepted(), "the delivery")
        finally:
            await hooks.close()
        header = headers["Tandem-Signature"]
        assert verifier(secret, header, sent, 300)
        assert not verifier(secret, header, sent.replace(b"conv_1", b"conv_2"), 300)
        assert not verifier(new_secret(), header, sent, 300)
        assert not verifier(secret, sign(secret, sent, int(time.time()) - 301), sent, 300)  # a replay
        assert not verifier(secret, "garbage", sent, 300) and not verifier(secret, "t=,v1=", sent, 300)

    scenario(tmp_path, body)
