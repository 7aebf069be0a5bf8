"""The widget as each site sets it up and each visitor meets it, in headless Chromium from a second
loopback origin, answered by the default model: a right-to-left language under the strict policy,
the browser's language, a site's title, greeting, accent, dark theme and side, business hours with
and without the bot, the on-screen keyboard at 320 px, and the page's `window.Tandem` API with a
signed and a forged `identify`. axe-core finds nothing in any of these states; each page's
screenshot is saved under test-artifacts/."""

from __future__ import annotations

import asyncio
import html
import json
import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from dialog.identity import signature
from dialog.knowledge.index import KnowledgeBase
from dialog.store import Site, Store
from dialog.widget_settings import WidgetSettings
from tests.conftest import ThreadedServer, free_port
from tests.dialog.test_dialog_cli import tandem
from tests.dialog.test_dialog_sites import closed_now
from tests.dialog.test_widget import add_site
from tests.dialog.test_widget_a11y import axe_violations, focused
from tests.dialog.test_widget_embedding import answer_one, strict_csp, violations

pytestmark = [pytest.mark.browser, pytest.mark.default_model]
PROMPT = "You answer a shop's visitors in one short sentence."
SECRET = secrets.token_hex(32)  # the members site's identity secret, fresh each run


class Pages:
    """`/SITE?csp=strict&api=1&identify=good|forged`: a page on its own origin embedding the widget."""

    def __init__(self, tandem: str) -> None:
        self.tandem = tandem
        self.server = ThreadedServer(Starlette(routes=[Route("/{site}", self.page)]), free_port())
        self.url = self.server.url

    async def page(self, request: Request) -> Response:
        site, q = request.path_params["site"], request.query_params
        before = ""
        if q.get("api"):  # the page's own script: calls queued before the widget loads, and every event kept
            calls: list[list[object]] = [["open"]]
            if q.get("identify"):
                mac = signature(SECRET, "ada@example.com")
                if q["identify"] == "forged":
                    mac = signature("not-the-secret", "ada@example.com")
                calls.append(["identify", {"name": "Ada Lovelace", "email": "ada@example.com", "hmac": mac}])
            before = (
                "<script>window.__events = []; for (const n of ['ready', 'message', 'error'])"
                " window.addEventListener('tandem:' + n, e => window.__events.push([n, e.detail]));"
                f" window.Tandem = {json.dumps(calls)};</script>"
            )
        body = (
            f"<!doctype html><html lang='en'><head><meta charset='utf-8'><meta name='viewport' content='width=device-width'>"
            f"<title>Shop: {html.escape(site)}</title></head><body><main><h1>A shop</h1><p>{'Lorem ipsum dolor sit amet. ' * 30}</p></main>"
            f"{before}<script src='{self.tandem}/widget.js' data-site-key='{html.escape(site)}' defer></script></body></html>"
        )
        csp = strict_csp(self.tandem) if q.get("csp") == "strict" else None
        return HTMLResponse(body, headers={"Content-Security-Policy": csp} if csp else None)


@pytest.fixture(scope="module")
def pages(default_server, tmp_path_factory) -> Iterator[Pages]:  # type: ignore[no-untyped-def]
    host = Pages(default_server.url)
    sites = {
        "arabic": WidgetSettings(locale="ar"),
        "auto": WidgetSettings(theme="auto"),
        "brand": WidgetSettings(
            title="Acme Help", greeting="Hi! Ask me about **orders**.", accent="#ffcc00", theme="dark", position="left"
        ),
        "late": closed_now(bot_when_away=True),
        "held": closed_now(bot_when_away=False),
        "plain": WidgetSettings(),
    }
    with host.server:
        for key, look in sites.items():
            add_site(default_server.dialog_dir, Site(key, key, (host.url,), PROMPT, look))
        add_site(default_server.dialog_dir, Site("members", "members", (host.url,), PROMPT, WidgetSettings(), SECRET))
        add_site(default_server.dialog_dir, Site("kb", "kb", (host.url,), PROMPT))
        add_documents(default_server.dialog_dir, "kb", tmp_path_factory.mktemp("kb"))
        yield host


def add_documents(dialog_dir: Path, site_key: str, folder: Path) -> None:
    (folder / "returns.md").write_text("# Returns\n\nUnused items can be returned within 30 days of delivery, with the receipt.\n")
    (folder / "shipping.md").write_text("# Shipping\n\nParcels to Norway arrive in three working days.\n")

    async def go() -> None:
        store = await Store.open(dialog_dir / "chat.db")
        kb = KnowledgeBase(store.engine)
        for path in sorted(folder.iterdir()):
            await kb.add(site_key, path)
        await store.close()

    with ThreadPoolExecutor(1) as pool:  # (Playwright's sync API holds this thread's event loop)
        pool.submit(asyncio.run, go()).result()


def visit(browser, url: str, **context: object) -> Page:  # type: ignore[no-untyped-def]
    page = browser.new_context(**{"viewport": {"width": 1280, "height": 720}, **context}).new_page()
    page.add_init_script(
        "window.__csp = []; document.addEventListener('securitypolicyviolation', e => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));"
    )
    page.goto(url)
    return page


def in_widget(page: Page, css: str) -> str:
    return str(
        page.locator(f"#tandem-chat {css}").first.evaluate(
            "e => JSON.stringify([e.textContent, getComputedStyle(e).backgroundColor, getComputedStyle(e).color])"
        )
    )


def test_a_right_to_left_language_under_the_strict_policy(pages, browser, shots) -> None:  # type: ignore[no-untyped-def]
    page = visit(browser, f"{pages.url}/arabic?csp=strict")
    try:
        launcher = page.locator("#tandem-chat .launcher")
        expect(launcher).to_have_text("تحدث معنا")
        page.screenshot(path=shots / "rtl-closed.png")
        assert axe_violations(page) == []
        launcher.click()
        expect(page.locator("#tandem-chat .tandem")).to_have_attribute("dir", "rtl")
        expect(page.locator("#tandem-chat textarea")).to_have_attribute("placeholder", "اكتب رسالتك…")
        assert answer_one(page, "مرحبا، هل أنتم مفتوحون اليوم؟").strip()
        page.screenshot(path=shots / "rtl-answered.png")
        panel = page.locator("#tandem-chat .panel").bounding_box()
        user = page.locator("#tandem-chat .msg.user").bounding_box()
        bot = page.locator("#tandem-chat .msg.assistant").bounding_box()
        assert panel and user and bot
        assert (
            user["x"] - panel["x"] < 20 < bot["x"] - panel["x"] + bot["width"] - user["width"]
        )  # the visitor's words on the left, as RTL reads
        send = page.locator("#tandem-chat .send").bounding_box()
        text = page.locator("#tandem-chat textarea").bounding_box()
        assert send and text and send["x"] < text["x"]  # the send button at the line's end, which is its left
        assert page.locator("#tandem-chat .msg.user").get_attribute("aria-label") == "كتبتَ"
        assert axe_violations(page) == [] and violations(page) == []
    finally:
        page.close()


def test_the_keyboard_alone_gets_an_answer_under_the_strict_policy(pages, browser, shots) -> None:  # type: ignore[no-untyped-def]
    page = visit(browser, f"{pages.url}/plain?csp=strict")
    try:
        expect(page.locator("#tandem-chat .launcher")).to_be_visible()
        for _ in range(20):  # Tab from the top of the page until the launcher has focus (past the page's own links, if any)
            page.keyboard.press("Tab")
            if focused(page) == "button.launcher":
                break
        assert focused(page) == "button.launcher"
        page.keyboard.press("Enter")
        assert focused(page) == "textarea."
        page.keyboard.type("Hello! What do you sell?")
        page.keyboard.press("Enter")
        expect(page.locator("#tandem-chat .msg.assistant[data-finish]")).to_have_count(1, timeout=120_000)
        assert focused(page) == "textarea."
        page.screenshot(path=shots / "keyboard-answered.png")
        page.keyboard.press("Escape")
        expect(page.locator("#tandem-chat .panel")).to_be_hidden()
        assert focused(page) == "button.launcher"
        assert violations(page) == []
    finally:
        page.close()


def test_an_answer_from_the_sites_documents_shows_its_source(pages, browser, shots) -> None:  # type: ignore[no-untyped-def]
    page = visit(browser, f"{pages.url}/kb?csp=strict")
    try:
        page.locator("#tandem-chat .launcher").click()
        assert answer_one(page, "How many days do I have to return an unused item?").strip()
        sources = page.locator("#tandem-chat .msg.assistant .sources")
        expect(sources).to_have_text("Sources: Returns")
        page.screenshot(path=shots / "grounded-answer.png")
        assert axe_violations(page) == [] and violations(page) == []
        page.reload()  # the sources are kept with the answer
        page.locator("#tandem-chat .launcher").click()
        expect(page.locator("#tandem-chat .msg.assistant .sources")).to_have_text("Sources: Returns")
    finally:
        page.close()


def test_the_browsers_language_is_spoken_where_the_site_leaves_it_open(pages, browser, shots) -> None:  # type: ignore[no-untyped-def]
    for locale, launcher_text, send in (
        ("de-DE", "Chatten Sie mit uns", "Senden"),
        ("zh-CN", "在线咨询", "发送"),
        ("pt-BR", "Chat with us", "Send"),
    ):
        page = visit(browser, f"{pages.url}/plain", locale=locale)
        try:
            expect(page.locator("#tandem-chat .launcher")).to_have_text(launcher_text)
            page.locator("#tandem-chat .launcher").click()
            expect(page.locator("#tandem-chat .send")).to_have_text(send)
            page.screenshot(path=shots / f"language-{locale}.png")
            page.reload()  # kept for the next page: the launcher is in the visitor's language from the start
            expect(page.locator("#tandem-chat .launcher")).to_have_text(launcher_text)
        finally:
            page.close()


def test_a_sites_title_greeting_accent_dark_theme_and_side(pages, browser, shots) -> None:  # type: ignore[no-untyped-def]
    page = visit(browser, f"{pages.url}/brand")
    try:
        launcher = page.locator("#tandem-chat .launcher")
        expect(launcher).to_be_visible()
        box = launcher.bounding_box()
        assert box and box["x"] < 100  # on the left
        assert json.loads(in_widget(page, ".launcher"))[1:] == ["rgb(255, 204, 0)", "rgb(17, 20, 24)"]  # dark text on a light accent
        assert axe_violations(page) == []
        launcher.click()
        expect(page.locator("#tandem-chat .head span")).to_have_text("Acme Help")
        greeting = page.locator("#tandem-chat .msg").first
        expect(greeting).to_have_text("Hi! Ask me about orders.")
        expect(greeting.locator("strong")).to_have_text("orders")
        assert json.loads(in_widget(page, ".panel"))[1] == "rgb(31, 36, 40)"  # dark
        assert answer_one(page, "Hello! Where is my order?").strip()
        expect(page.locator("#tandem-chat .msg").first).to_have_text("Hi! Ask me about orders.")  # still first
        page.screenshot(path=shots / "brand-answered.png")
        assert axe_violations(page) == []
    finally:
        page.close()


def test_theme_auto_follows_the_visitors_colour_scheme(pages, browser, shots) -> None:  # type: ignore[no-untyped-def]
    for scheme, background in (("dark", "rgb(31, 36, 40)"), ("light", "rgb(255, 255, 255)")):
        page = visit(browser, f"{pages.url}/auto", color_scheme=scheme)
        try:
            page.locator("#tandem-chat .launcher").click()
            expect(page.locator("#tandem-chat .panel")).to_be_visible()
            assert json.loads(in_widget(page, ".panel"))[1] == background
            page.screenshot(path=shots / f"auto-{scheme}.png")
            assert axe_violations(page) == []
        finally:
            page.close()


def test_outside_the_hours_the_visitor_is_told_when_a_person_answers(pages, browser, shots) -> None:  # type: ignore[no-untyped-def]
    page = visit(browser, f"{pages.url}/late", timezone_id="UTC")
    try:
        page.locator("#tandem-chat .launcher").click()
        banner = page.locator("#tandem-chat .banner")
        expect(banner).to_contain_text("We're away right now. A person will answer from")
        expect(banner).to_contain_text("09:00")
        expect(banner).to_contain_text("Our assistant can help meanwhile.")
        assert axe_violations(page) == []
        assert answer_one(page, "Hello, are you open?").strip()  # the bot still answers: the site allows it
        page.screenshot(path=shots / "away-bot.png")
    finally:
        page.close()
    page = visit(browser, f"{pages.url}/held", timezone_id="UTC", locale="fr-FR")
    try:
        page.locator("#tandem-chat .launcher").click()
        expect(page.locator("#tandem-chat .banner")).to_contain_text("Nous sommes absents pour le moment")
        page.locator("#tandem-chat textarea").fill("Rappelez-moi, s'il vous plaît.")
        page.locator("#tandem-chat textarea").press("Enter")
        note = page.locator("#tandem-chat .msg.system")
        expect(note).to_contain_text("Votre message est gardé pour notre équipe. Une personne vous répondra à partir de")
        expect(page.locator("#tandem-chat .send")).to_be_visible()  # not waiting for an answer that will not come
        expect(page.locator("#tandem-chat .msg.assistant")).to_have_count(0)
        page.screenshot(path=shots / "away-held.png")
        assert axe_violations(page) == []
    finally:
        page.close()


def test_with_the_on_screen_keyboard_open_at_320_px_the_message_box_stays_in_view(pages, browser, shots) -> None:  # type: ignore[no-untyped-def]
    page = visit(browser, f"{pages.url}/plain?csp=strict", viewport={"width": 320, "height": 640}, has_touch=True, is_mobile=True)
    try:
        page.locator("#tandem-chat .launcher").click()
        page.set_viewport_size({"width": 320, "height": 300})  # the keyboard takes half the screen
        box = page.locator("#tandem-chat textarea").bounding_box()
        close = page.locator("#tandem-chat .head .close").bounding_box()
        person = page.locator("#tandem-chat .head .person").bounding_box()  # "talk to a person" fits beside it
        assert box and close and box["y"] + box["height"] <= 300 and close["y"] >= 0
        assert person and person["x"] >= 0 and person["x"] + person["width"] <= close["x"]
        assert answer_one(page, "Hi, do you ship abroad?").strip()
        send = page.locator("#tandem-chat .send").bounding_box()
        assert send and send["x"] + send["width"] <= 320 and send["y"] + send["height"] <= 300
        page.screenshot(path=shots / "keyboard-open.png")
        assert axe_violations(page) == []
    finally:
        page.close()


def test_the_pages_api_opens_closes_and_reports_ready_messages_and_errors(pages, browser, shots) -> None:  # type: ignore[no-untyped-def]
    page = visit(browser, f"{pages.url}/plain?api=1")
    try:
        expect(page.locator("#tandem-chat .panel")).to_be_visible()  # opened by a call queued before the widget loaded
        page.wait_for_function("window.__events.some(e => e[0] === 'ready')")
        assert answer_one(page, "Hello!").strip()
        page.wait_for_function("window.__events.filter(e => e[0] === 'message').length === 2")
        messages = page.evaluate("window.__events.filter(e => e[0] === 'message').map(e => e[1])")
        assert [m["role"] for m in messages] == ["user", "assistant"] and messages[0]["text"] == "Hello!"
        assert messages[1]["finish_reason"] in ("stop", "length") and messages[1]["text"].strip()
        page.evaluate("Tandem.close()")
        expect(page.locator("#tandem-chat .panel")).to_be_hidden()
        assert page.evaluate("Tandem.isOpen()") is False
        page.evaluate("Tandem.toggle()")
        expect(page.locator("#tandem-chat .panel")).to_be_visible()
        page.evaluate("Tandem.on('error', e => { window.__onError = e.code })")
        page.evaluate("Tandem.identify({email: 'not-an-email'}).catch(e => { window.__rejected = e.message })")
        page.wait_for_function("window.__rejected && window.__onError")
        assert page.evaluate("window.__onError") == "identity_invalid"
        expect(page.locator("#tandem-chat .status")).to_have_text("")  # the page's mistake, not shown to the visitor
    finally:
        page.close()


def test_identify_attaches_a_signed_customer_and_refuses_a_forged_one_without_leaking_the_secret(pages, browser, default_server) -> None:  # type: ignore[no-untyped-def]
    frames: list[str] = []
    page = visit(browser, f"{pages.url}/members?api=1&identify=forged")
    try:
        page.wait_for_function("window.__events.some(e => e[0] === 'error')")
        assert page.evaluate("window.__events.filter(e => e[0] === 'error').map(e => e[1].code)") == ["identity_invalid"]
        forged = page.evaluate("JSON.parse(localStorage.getItem(Object.keys(localStorage)[0])).conversation_id")
    finally:
        page.close()
    page = browser.new_context().new_page()
    page.on("websocket", lambda ws: ws.on("framereceived", lambda payload: frames.append(str(payload))))
    try:
        page.goto(f"{pages.url}/members?api=1&identify=good")
        page.wait_for_function("window.__events.some(e => e[0] === 'ready')")
        assert page.evaluate(
            "window.Tandem.identify({name: 'Ada Lovelace', email: 'ada@example.com', hmac: '%s'})" % signature(SECRET, "ada@example.com")
        ) == {
            "name": "Ada Lovelace",
            "email": "ada@example.com",
            "id": None,
            "verified": True,
        }
        cid = page.evaluate("JSON.parse(localStorage.getItem(Object.keys(localStorage)[0])).conversation_id")
    finally:
        page.close()
    d = ["--dialog-dir", str(default_server.dialog_dir)]
    assert "customer: Ada Lovelace <ada@example.com> (verified)" in tandem("conversations", "show", cid, *d).stdout
    assert "customer:" not in tandem("conversations", "show", forged, *d).stdout
    good = signature(SECRET, "ada@example.com")
    log = default_server.log_path.read_text()
    audit = b"".join(p.read_bytes() for p in Path(default_server.audit_dir).rglob("*") if p.is_file())
    for leak in (SECRET, good):
        assert leak not in log and leak.encode() not in audit and not any(leak in f for f in frames)
