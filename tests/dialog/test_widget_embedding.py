"""widget.js embedded as a company would: from Tandem's origin into pages on another loopback origin,
under the Content-Security-Policy the README documents, under one that forgets `ws:`, under
hostile page CSS, at 320 px, and behind a socket that is refused before it opens. Each page's
screenshot is saved under test-artifacts/ (TANDEM_TEST_ARTIFACTS)."""

from __future__ import annotations

import html
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from dialog.store import Site
from tests.conftest import ThreadedServer, free_port
from tests.dialog.test_widget import add_site

pytestmark = [pytest.mark.browser, pytest.mark.default_model]

HOSTILE = {
    "div_none": "div { display: none !important; }",
    "all_unset": "* { all: unset !important; font-size: 64px !important; line-height: 2 !important; }",
    "z_index_war": ".cover { position: fixed; inset: 0; z-index: 2147483647; background: rgba(255,255,255,.01); }",
    "box_sizing": "*, *::before, *::after { box-sizing: content-box !important; padding: 9px !important; }",
    "body_transform": "body { transform: translate(40px, -300px) scale(.8) !important; }",
    "popover_rules": "[popover], :popover-open, tandem-chat { display: none !important; opacity: 0 !important; inset: 0 !important; }",
}


def strict_csp(tandem: str) -> str:
    """The policy the README documents: the widget's script and its two connections, nothing else."""
    ws = tandem.replace("http://", "ws://").replace("https://", "wss://")
    return f"default-src 'none'; script-src {tandem}; connect-src {tandem} {ws}"


class HostPages:
    """A second origin whose pages embed the widget from Tandem's, each with its own policy and CSS."""

    def __init__(self, tandem: str) -> None:
        self.tandem = tandem
        self.server = ThreadedServer(Starlette(routes=[Route("/{case}", self.page)]), free_port())
        self.url = self.server.url

    async def page(self, request: Request) -> Response:
        case = request.path_params["case"]
        style, csp = "", None
        if case == "strict":
            csp = strict_csp(self.tandem)
        elif case == "no_ws":
            csp = f"default-src 'none'; script-src {self.tandem}; connect-src {self.tandem}"
        elif case in HOSTILE:
            style = f"<style>{HOSTILE[case]}</style>"
        body = (
            f"<!doctype html><html lang='en'><head><meta charset='utf-8'><meta name='viewport' content='width=device-width'>"
            f"<title>Shop: {html.escape(case)}</title>{style}</head><body><div class='cover'></div><main><h1>A shop</h1>"
            f"<p>{'Lorem ipsum dolor sit amet. ' * 40}</p></main>"
            f"<script src='{self.tandem}/widget.js' data-site-key='shop' defer></script></body></html>"
        )
        return HTMLResponse(body, headers={"Content-Security-Policy": csp} if csp else None)


@pytest.fixture(scope="module")
def pages(default_server) -> Iterator[HostPages]:  # type: ignore[no-untyped-def]
    host = HostPages(default_server.url)
    with host.server:
        add_site(default_server.dialog_dir, Site("shop", "A shop", (host.url,), "You answer a shop's visitors in one short sentence."))
        yield host


def violations(page: Page) -> list[str]:
    return page.evaluate("window.__csp || []")  # type: ignore[no-any-return]


def visit(browser, url: str, shots: Path, name: str, width: int = 1280) -> Page:  # type: ignore[no-untyped-def]
    page = browser.new_page(viewport={"width": width, "height": 720})
    page.add_init_script(
        "window.__csp = []; document.addEventListener('securitypolicyviolation', e => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));"
    )
    page.goto(url)
    page.screenshot(path=shots / f"{name}-closed.png")
    return page


def answer_one(page: Page, question: str = "Hello! Are you open today?") -> str:
    page.locator("#tandem-chat textarea").fill(question)
    page.locator("#tandem-chat textarea").press("Enter")
    answer = page.locator("#tandem-chat .msg.assistant[data-finish]")
    expect(answer).to_have_count(1, timeout=120_000)
    return answer.inner_text()


def assert_laid_out(page: Page, width: int) -> None:
    """The launcher opens a panel of the widget's own size, inside the viewport, in its own font."""
    launcher = page.locator("#tandem-chat .launcher")
    expect(launcher).to_be_visible()
    launcher.click()  # Playwright clicks only what receives the click at that point: nothing covers it
    panel = page.locator("#tandem-chat .panel")
    expect(panel).to_be_visible()
    box = panel.bounding_box()
    assert box is not None
    assert box["width"] == (360 if width > 480 else width), box  # a phone: the whole screen
    assert box["x"] >= 0 and box["x"] + box["width"] <= width and box["y"] >= 0 and box["y"] + box["height"] <= 720, box
    font = page.locator("#tandem-chat textarea").evaluate("e => getComputedStyle(e).fontSize")
    assert font == "14px"
    page.locator("#tandem-chat textarea").click()  # the input row is not covered by the launcher


def test_under_the_documented_strict_policy_it_is_styled_connects_and_answers(pages, browser, shots) -> None:  # type: ignore[no-untyped-def]
    page = visit(browser, f"{pages.url}/strict", shots, "strict")
    try:
        assert_laid_out(page, 1280)
        page.screenshot(path=shots / "strict-open.png")
        assert answer_one(page).strip()
        page.screenshot(path=shots / "strict-answered.png")
        assert violations(page) == []  # nothing the widget does needs more than script-src and connect-src
        position = page.locator("#tandem-chat .launcher").evaluate("e => getComputedStyle(e).position")
        assert position == "fixed"  # styled (an inline <style> would have been blocked: unstyled, in the page flow)
    finally:
        page.close()


def test_a_policy_without_ws_shows_the_visitor_a_clear_message_and_keeps_what_they_typed(pages, browser, shots) -> None:  # type: ignore[no-untyped-def]
    page = visit(browser, f"{pages.url}/no_ws", shots, "no-ws")
    try:
        page.locator("#tandem-chat .launcher").click()
        expect(page.locator("#tandem-chat .status")).to_contain_text("Can't reach the support chat", timeout=15_000)
        page.locator("#tandem-chat textarea").fill("Is anyone there?")
        page.locator("#tandem-chat textarea").press("Enter")
        expect(page.locator("#tandem-chat .msg.user.pending")).to_have_text("Is anyone there?")
        expect(page.locator("#tandem-chat .status")).to_contain_text("Trying again in", timeout=15_000)  # still retrying
        page.screenshot(path=shots / "no-ws-open.png")
        assert any(v.startswith("connect-src ws://") for v in violations(page))
    finally:
        page.close()


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_page_css_cannot_hide_cover_or_restyle_it(pages, browser, shots, case: str) -> None:  # type: ignore[no-untyped-def]
    page = visit(browser, f"{pages.url}/{case}", shots, case)
    try:
        assert_laid_out(page, 1280)
        page.screenshot(path=shots / f"{case}-open.png")
        assert answer_one(page).strip()
        page.screenshot(path=shots / f"{case}-answered.png")
    finally:
        page.close()


def test_at_320_px_the_panel_fits_and_answers(pages, browser, shots) -> None:  # type: ignore[no-untyped-def]
    page = visit(browser, f"{pages.url}/strict", shots, "narrow", width=320)
    try:
        assert_laid_out(page, 320)
        page.screenshot(path=shots / "narrow-open.png")
        assert answer_one(page, "Hi, what do you sell?").strip()
        page.screenshot(path=shots / "narrow-answered.png")
    finally:
        page.close()


def test_a_message_typed_while_the_socket_is_refused_is_sent_once_when_it_opens(pages, browser, shots) -> None:  # type: ignore[no-untyped-def]
    page = browser.new_page()
    refusals = [0]

    def socket(ws) -> None:  # type: ignore[no-untyped-def]
        if refusals[0] < 3:  # the first tries are refused, as by a restarting server or a proxy
            refusals[0] += 1
            ws.close(code=1011, reason="refused")
            return
        ws.connect_to_server()

    try:
        page.route_web_socket("**/v1/dialog*", socket)
        page.goto(f"{pages.url}/strict")
        page.locator("#tandem-chat .launcher").click()
        expect(page.locator("#tandem-chat .status")).to_contain_text("Can't reach the support chat", timeout=15_000)
        page.locator("#tandem-chat textarea").fill("Do you ship to Norway?")
        page.locator("#tandem-chat textarea").press("Enter")
        expect(page.locator("#tandem-chat .msg.assistant[data-finish]")).to_have_count(1, timeout=120_000)
        assert refusals[0] == 3
        expect(page.locator("#tandem-chat .msg.user")).to_have_count(1)
        expect(page.locator("#tandem-chat .status")).to_have_text("")
        page.reload()  # the server's own history: the message was stored once, answered once
        page.locator("#tandem-chat .launcher").click()
        expect(page.locator("#tandem-chat .msg")).to_have_count(2)
        expect(page.locator("#tandem-chat .msg.user")).to_have_text("Do you ship to Norway?")
    finally:
        page.close()
