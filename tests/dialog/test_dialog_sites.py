"""A site's widget settings, business hours and identified customers, over the real socket of a
real server (scripted engine) and through `tandem sites`: what `welcome` tells the widget, which
language a visitor gets, a message outside the hours with and without the bot, and `identify`
with a right, a wrong and no signature (the secret never leaves the server)."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import string
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dialog import frames
from dialog.hours import DAYS, BusinessHours, HoursError
from dialog.identity import signature
from dialog.locales import LOCALE_DIR
from dialog.store import Site, Store
from dialog.web import widget_source
from dialog.widget_settings import LOCALES, SettingsError, WidgetSettings
from server.audit import AuditReader, Filters
from tests.dialog.test_dialog_cli import tandem
from tests.dialog_client import Chat
from tests.waiting import eventually


def put(s, site: Site) -> None:  # type: ignore[no-untyped-def]
    async def go() -> None:
        store = await Store.open(s.dialog_dir / "chat.db")
        await store.put_site(site)
        await store.close()

    asyncio.run(go())


def closed_now(bot_when_away: bool, **more: str) -> WidgetSettings:
    """Hours that exclude the present moment: one hour on the day after tomorrow."""
    day = DAYS[(datetime.now(UTC) + timedelta(days=2)).weekday()].title()
    return WidgetSettings(hours=f"{day} 09:00-10:00", timezone="UTC", bot_when_away=bot_when_away, **more)


# --- the settings themselves -----------------------------------------------------------------------
def test_every_language_has_every_word_and_the_widget_stays_small() -> None:
    english = json.loads((LOCALE_DIR / "en.json").read_text())
    for locale in LOCALES:
        words = json.loads((LOCALE_DIR / f"{locale}.json").read_text())
        assert words.keys() == english.keys(), locale
        for key, text in words.items():  # the same placeholders as in English
            assert set(re.findall(r"\{\w+\}", text)) == set(re.findall(r"\{\w+\}", english[key])), (locale, key)
    assert json.loads((LOCALE_DIR / "ar.json").read_text())["dir"] == "rtl"
    assert len(widget_source().encode()) < 40 * 1024  # served: script, styles and English words together


@pytest.mark.parametrize(
    "values",
    [
        {"accent": "red"},
        {"accent": "#12345"},
        {"theme": "neon"},
        {"position": "top"},
        {"locale": "xx"},
        {"hours": "Mon 9-17"},
        {"hours": "Mon-Fri 17:00-09:00"},
        {"hours": "Funday 09:00-10:00"},
        {"hours": "Mon 09:00-25:00"},
        {"timezone": "Mars/Olympus"},
        {"title": "x" * 61},
        {"greeting": "bell\x07"},
    ],
)
def test_a_setting_the_widget_cannot_show_is_refused_with_its_name(values: dict[str, str]) -> None:
    with pytest.raises(SettingsError, match=next(iter(values)) if "timezone" not in values else "hours"):
        WidgetSettings(**values)  # type: ignore[arg-type]


@given(st.text(max_size=80))
def test_the_hours_parser_takes_anything_and_answers_with_hours_or_a_reason(text: str) -> None:
    try:
        hours = BusinessHours.parse(text, "Europe/Berlin")
    except HoursError as exc:
        assert str(exc)
        return
    assert BusinessHours.parse(str(hours) if hours.intervals else "", "Europe/Berlin") == hours  # written as it is read


@given(
    st.lists(st.tuples(st.sampled_from(DAYS), st.integers(0, 23), st.integers(1, 24)), min_size=1, max_size=6),
    st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC)),
    st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe"]),
)
def test_next_open_is_the_first_open_minute_after_now(entries: list[tuple[str, int, int]], now: datetime, tz: str) -> None:
    text = "; ".join(f"{d} {a:02d}:00-{max(a + 1, b):02d}:00" for d, a, b in entries if max(a + 1, b) <= 24)
    hours = BusinessHours.parse(text, tz)
    opens = hours.next_open(now)
    assert opens is not None and opens > now and hours.is_open(opens)
    step = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    while step < opens and (opens - now) < timedelta(days=8):  # no open minute before it (checked hourly, then the last hour)
        assert not hours.is_open(step) or hours.is_open(now)
        step += timedelta(hours=1) if opens - step > timedelta(hours=1) else timedelta(minutes=1)


def test_hours_follow_summer_time() -> None:
    hours = BusinessHours.parse("Mon-Fri 09:00-17:00", "Europe/Berlin")
    assert not hours.is_open(datetime(2026, 1, 5, 7, 30, tzinfo=UTC))  # a Monday, 08:30 in Berlin in winter
    assert hours.is_open(datetime(2026, 7, 6, 7, 30, tzinfo=UTC))  # a Monday, 09:30 in Berlin in summer
    assert hours.next_open(datetime(2026, 3, 28, 12, 0, tzinfo=UTC)).isoformat() == "2026-03-30T09:00:00+02:00"  # type: ignore[union-attr]


# --- what welcome tells the widget -----------------------------------------------------------------
def test_welcome_carries_the_sites_look_and_the_visitors_language(tiny_server) -> None:
    with tiny_server() as s:
        look = WidgetSettings(title="Acme Help", greeting="Hi!", accent="#ffcc00", theme="dark", position="left")
        put(s, Site("acme", "Acme", (s.url,), "You help.", look))
        with Chat(s.url, site="acme", languages=["fr-CA", "en"]) as chat:
            site = chat.welcome["site"]
        assert {k: site[k] for k in ("title", "greeting", "accent", "theme", "position")} == {
            "title": "Acme Help",
            "greeting": "Hi!",
            "accent": "#ffcc00",
            "theme": "dark",
            "position": "left",
        }
        assert site["locale"] == "fr" and site["strings"]["send"] == "Envoyer" and site["hours"]["open"] is True
        with Chat(s.url, site="acme", languages=["pt-BR", "ja"]) as chat:  # none the widget speaks: English
            assert chat.welcome["site"]["locale"] == "en"
        put(s, Site("acme", "Acme", (s.url,), "You help.", look.changed(locale="ar")))
        with Chat(s.url, site="acme", languages=["de"]) as chat:  # the site's own language wins
            assert chat.welcome["site"]["locale"] == "ar" and chat.welcome["site"]["strings"]["dir"] == "rtl"
        with Chat(s.url, site="acme", hello=False) as chat:  # the browser's languages are bounded like any field
            chat.send({"type": "hello", "v": 1, "site_key": "acme", "languages": ["x" * 36]})
            assert chat.recv()["code"] == "bad_frame"


def test_outside_the_hours_the_bot_answers_where_the_site_allows_it(tiny_server) -> None:
    with tiny_server(dialog={"max_answer_tokens": 8}) as s:
        put(s, Site("late", "Late", (s.url,), "You help.", closed_now(bot_when_away=True)))
        with Chat(s.url, site="late") as chat:
            hours = chat.welcome["site"]["hours"]
            assert hours["open"] is False and hours["closes_at"] is None and hours["bot_when_away"] is True
            opens = datetime.fromisoformat(hours["next_open"])
            assert opens > datetime.now(UTC) and opens.hour == 9 and opens.utcoffset() == timedelta(0)
            _, out = chat.ask("Are you there?")
            assert out[-1]["type"] == "done" and any(f["type"] == "delta" for f in out)


def test_outside_the_hours_without_the_bot_a_message_is_kept_guarded_for_a_person(tiny_server) -> None:
    with tiny_server(dialog={"max_answer_tokens": 8}) as s:
        put(s, Site("late", "Late", (s.url,), "You help.", closed_now(bot_when_away=False, away_message="Back on Monday.")))
        key = "ghp_" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(36))  # fresh each run
        with Chat(s.url, site="late") as chat:
            assert chat.welcome["site"]["hours"]["away_message"] == "Back on Monday."
            chat.say(f"Please call me back, my key is {key}")
            ack, away = chat.recv(), chat.recv()
            assert ack["type"] == "ack" and away["type"] == "away" and away["message_id"] == ack["message_id"]
            assert datetime.fromisoformat(away["next_open"]) > datetime.now(UTC)
            assert s.engine.requests == []  # nothing was generated
            chat.say("And a second one")  # one at a time, as for answers, but never refused as busy once kept
            assert [chat.recv()["type"], chat.recv()["type"]] == ["ack", "away"]
        with Chat(s.url, site="late", token=chat.token, conversation_id=chat.conversation_id) as again:
            history = again.welcome["history"]
        assert [m["role"] for m in history] == ["user", "user"]
        assert key not in history[0]["text"] and "Please call me back" in history[0]["text"]  # kept as the guard passed it
        shown = tandem("conversations", "show", chat.conversation_id, "--dialog-dir", str(s.dialog_dir)).stdout
        assert "Please call me back" in shown and key not in shown
        reader = AuditReader(s.audit_dir)
        records = eventually(
            lambda: reader.search(Filters(conversation=chat.conversation_id), limit=10), "the held messages' audit records"
        )
        assert {r["record"]["output"]["finish_reason"] for r in records} == {"held"}


# --- identified customers ----------------------------------------------------------------------------
def test_identify_with_the_sites_signature_attaches_the_customer_and_a_wrong_one_is_refused(tiny_server) -> None:
    with tiny_server() as s:
        d = ["--dialog-dir", str(s.dialog_dir)]
        added = tandem("sites", "add", "members", "--origin", s.url, "--identity-validation", *d)
        assert added.returncode == 0, added.stderr
        secret = re.search(r"identity secret[^:]*: ([0-9a-f]{64})", added.stdout)[1]  # type: ignore[index]
        good = signature(secret, "ada@example.com")
        seen: list[dict] = []
        with Chat(s.url, site="members") as chat:
            chat.send(
                {
                    "type": "identify",
                    "name": "Ada Lovelace",
                    "email": "ada@example.com",
                    "hmac": good[:-1] + "0" if good[-1] != "0" else good[:-1] + "1",
                }
            )
            seen.append(chat.recv())
            assert seen[-1]["type"] == "error" and seen[-1]["code"] == "identity_invalid"
            shown = tandem("conversations", "show", chat.conversation_id, *d).stdout
            assert "customer:" not in shown  # refused: nothing attached
            chat.send({"type": "identify", "name": "Ada Lovelace", "email": "ada@example.com"})  # no signature at all
            seen.append(chat.recv())
            assert seen[-1]["code"] == "identity_invalid"
            chat.send({"type": "identify", "name": "Ada Lovelace", "email": "ada@example.com", "hmac": good})
            seen.append(chat.recv())
            assert seen[-1] == {"type": "identified", "name": "Ada Lovelace", "email": "ada@example.com", "id": None, "verified": True}
            chat.send({"type": "identify", "id": "cust-42", "hmac": signature(secret, "cust-42"), "name": "Ada"})  # by the site's own id
            seen.append(chat.recv())
            assert seen[-1]["verified"] is True and seen[-1]["id"] == "cust-42"
            chat.send({"type": "identify", "name": "Ada", "email": "ada@example.com", "hmac": good})
            seen.append(chat.recv())
            chat.ask("Where is my order?")
        shown = tandem("conversations", "show", chat.conversation_id, *d).stdout
        assert "customer: Ada <ada@example.com> (verified)" in shown
        assert "customer ada@example.com" in tandem("conversations", "list", *d).stdout
        exported = json.loads(tandem("conversations", "export", chat.conversation_id, *d).stdout)
        assert exported["contact"] == {"name": "Ada", "email": "ada@example.com", "customer_id": None, "verified": True}
        assert "identity validation: on" in tandem("sites", "show", "members", *d).stdout
        assert secret not in tandem("sites", "show", "members", *d).stdout  # only with --identity-secret
        assert secret in tandem("sites", "show", "members", "--identity-secret", *d).stdout
        # neither the secret nor a valid signature is sent back, logged, audited or kept with the conversation
        leaks = [secret, good]
        assert not any(x in json.dumps(seen) for x in leaks)
        audit = b"".join(p.read_bytes() for p in Path(s.audit_dir).rglob("*") if p.is_file())
        assert not any(x.encode() in audit for x in leaks)
        assert good not in shown and good.encode() not in (s.dialog_dir / "chat.db").read_bytes()


def test_a_site_without_a_secret_takes_the_customers_word_marked_not_verified(tiny_server) -> None:
    with tiny_server() as s:
        put(s, Site("open", "Open", (s.url,), "You help."))
        with Chat(s.url, site="open") as chat:
            chat.send({"type": "identify", "name": "Bob", "email": "bob@example.com", "hmac": "whatever"})
            assert chat.recv()["verified"] is False
            for bad in ({"email": "not an email"}, {}, {"name": "x" * 101}, {"email": 5}, {"name": "Bob", "extra": 1}):
                chat.send({"type": "identify", **bad})
                assert chat.recv()["code"] in ("identity_invalid", "bad_frame")
            chat.send({"type": "ping"})
            assert chat.recv() == {"type": "pong"}  # still serving
        shown = tandem("conversations", "show", chat.conversation_id, "--dialog-dir", str(s.dialog_dir)).stdout
        assert "customer: Bob <bob@example.com> (not verified" in shown


@given(
    st.dictionaries(
        st.sampled_from(["name", "email", "id", "hmac", "type", "x"]), st.one_of(st.text(max_size=300), st.integers(), st.none())
    )
)
def test_identify_frames_parse_or_are_refused_with_a_frame_error(fields: dict) -> None:
    try:
        frame = frames.parse(json.dumps({"type": "identify", **fields}))
    except frames.FrameError as exc:
        assert exc.code in ("bad_frame", "unknown_type")
        return
    assert isinstance(frame, frames.Identify) or fields.get("type") in ("hello", "message", "cancel", "ping")


def test_sites_edit_changes_only_what_it_is_given(tmp_path: Path) -> None:
    d = ["--dialog-dir", str(tmp_path)]
    assert tandem("sites", "add", "acme", "--origin", "https://acme.test", "--title", "Acme", "--locale", "de", *d).returncode == 0
    edited = tandem("sites", "edit", "acme", "--accent", "#0a7f3f", "--hours", "Mon-Fri 09:00-17:00", "--timezone", "Europe/Berlin", *d)
    assert edited.returncode == 0, edited.stderr
    shown = tandem("sites", "show", "acme", *d).stdout
    for line in (
        "title:               Acme",
        "locale:              de",
        "accent:              #0a7f3f",
        "hours:               Mon-Fri 09:00-17:00 (Europe/Berlin)",
    ):
        assert line in shown
    refused = tandem("sites", "edit", "acme", "--accent", "tomato", *d)
    assert refused.returncode == 2 and "accent" in refused.stderr
    assert tandem("sites", "edit", "ghost", "--title", "x", *d).returncode == 1
    assert "accent:              #0a7f3f" in tandem("sites", "show", "acme", *d).stdout  # a refused edit changes nothing
    assert set(string.hexdigits) >= set(tandem("sites", "edit", "acme", "--rotate-identity-secret", *d).stdout.split()[-1])
