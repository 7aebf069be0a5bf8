"""The widget for every visitor: axe-core (WCAG 2.1 A and AA, shadow root included) finds nothing
in any state (closed, open, streaming, a long answer that scrolls, an error, offline); the whole
chat works from the keyboard alone; a screen reader hears "typing" once and each answer once, not
every streamed chunk. The socket is scripted, so each state is exact; axe-core comes from npm
(tests/axe, installed by `make test`)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.dialog.test_widget import scripted_socket, send_message, welcome

pytestmark = pytest.mark.browser
AXE = Path(__file__).resolve().parents[1] / "axe" / "node_modules" / "axe-core" / "axe.min.js"
WCAG = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]


def axe_violations(page: Page) -> list[str]:
    if not AXE.is_file():
        raise RuntimeError(f"{AXE} is missing: `make test` installs axe-core (tests/axe)")
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.evaluate(AXE.read_text())
    found = page.evaluate(
        "async tags => (await axe.run(document, {runOnly: {type: 'tag', values: tags}})).violations"
        ".map(v => v.id + ': ' + v.nodes.map(n => JSON.stringify(n.target)).join(', '))",
        WCAG,
    )
    return list(found)


def focused(page: Page) -> str:
    """The focused element inside the widget's shadow root, as tag.class."""
    return str(
        page.evaluate(
            "() => { const a = document.getElementById('tandem-chat').shadowRoot.activeElement;"
            " return a ? a.tagName.toLowerCase() + '.' + a.className : 'none' }"
        )
    )


SEQ = itertools.count(1)  # one conversation's rising seq (the widget drops a frame it has seen)


def send_frame(ws, **fields: object) -> None:  # type: ignore[no-untyped-def]
    ws.send(json.dumps({**fields, "seq": next(SEQ)}))


def stream(ws, text: str, chunks: int, done: bool = True, message_id: str = "m-a", user_id: str = "m-u") -> None:  # type: ignore[no-untyped-def]
    send_frame(ws, type="ack", client_msg_id="x", message_id=user_id)
    step = max(1, len(text) // chunks)
    for at in range(0, len(text), step):
        send_frame(ws, type="delta", message_id=message_id, text=text[at : at + step])
    if done:
        send_frame(ws, type="done", message_id=message_id, finish_reason="stop")


LONG = "\n\n".join(f"Paragraph {i}: our returns policy allows thirty days for unused items, with the receipt." for i in range(40))


def test_axe_finds_nothing_in_any_state(tiny_server, browser) -> None:  # type: ignore[no-untyped-def]
    with tiny_server() as s:
        page = browser.new_page()
        sockets = []
        try:
            replies = iter(["streaming", "long", "error"])

            def on_message(ws, frame, n):  # type: ignore[no-untyped-def]
                kind = next(replies)
                if kind == "streaming":
                    stream(ws, "Let me check that for you", 5, done=False)
                elif kind == "long":
                    stream(ws, LONG, 30, message_id="m-b", user_id="m-u2")
                else:
                    send_frame(ws, type="error", code="rate_limited", message="slow down")

            def on_hello(ws, frame, n):  # type: ignore[no-untyped-def]
                sockets.append(ws)
                welcome(ws)

            scripted_socket(page, on_hello, on_message)
            page.goto(f"{s.url}/widget/demo")
            expect(page.locator("#tandem-chat .launcher")).to_be_visible()
            states = {"closed": axe_violations(page)}
            page.locator("#tandem-chat .launcher").click()
            expect(page.locator("#tandem-chat .panel")).to_be_visible()
            states["open"] = axe_violations(page)
            send_message(page, "Are you open today?")
            expect(page.locator("#tandem-chat .stop")).to_be_visible()
            states["streaming"] = axe_violations(page)
            send_message(page, "And returns?")  # (busy in the widget: it waits; the scripted server answers the first)
            page.locator("#tandem-chat .stop").click()
            send_frame(sockets[-1], type="done", message_id="m-a", finish_reason="cancelled")
            expect(page.locator("#tandem-chat .send")).to_be_visible()
            send_message(page, "What is your returns policy?")
            expect(page.locator("#tandem-chat .msg.assistant[data-finish]")).to_have_count(2)
            assert page.locator("#tandem-chat .log").evaluate("e => e.scrollHeight > e.clientHeight")  # it scrolls
            states["long answer"] = axe_violations(page)
            send_message(page, "Thanks!")
            expect(page.locator("#tandem-chat .status.error")).to_be_visible()
            states["error"] = axe_violations(page)
            page.context.set_offline(True)
            sockets[-1].close()
            expect(page.locator("#tandem-chat .status")).to_contain_text("offline")
            states["offline"] = axe_violations(page)
            page.context.set_offline(False)
            assert states == {name: [] for name in states}, states
        finally:
            page.close()


def test_the_whole_chat_works_from_the_keyboard(tiny_server, browser) -> None:  # type: ignore[no-untyped-def]
    with tiny_server() as s:
        page = browser.new_page()
        try:
            sent = scripted_socket(page, lambda ws, f, n: welcome(ws), lambda ws, f, n: stream(ws, "We open at nine.", 4))
            page.goto(f"{s.url}/widget/demo")
            launcher = page.locator("#tandem-chat .launcher")
            expect(launcher).to_be_visible()
            page.keyboard.press("Tab")
            assert focused(page) == "button.launcher"
            expect(launcher).to_have_attribute("aria-expanded", "false")
            page.keyboard.press("Enter")
            expect(page.locator("#tandem-chat .panel")).to_be_visible()
            expect(launcher).to_have_attribute("aria-expanded", "true")
            assert focused(page) == "textarea."
            page.keyboard.type("When do you open?")
            page.keyboard.press("Shift+Enter")  # a newline, not a send
            page.keyboard.type("And close?")
            assert page.locator("#tandem-chat textarea").input_value() == "When do you open?\nAnd close?"
            page.keyboard.press("Enter")
            expect(page.locator("#tandem-chat .msg.assistant[data-finish]")).to_have_text("We open at nine.")
            assert [f["text"] for _, f in sent if f["type"] == "message"] == ["When do you open?\nAnd close?"]
            assert focused(page) == "textarea."  # still typing, though Send hid itself while the answer streamed
            page.keyboard.press("Escape")
            expect(page.locator("#tandem-chat .panel")).to_be_hidden()
            expect(launcher).to_have_attribute("aria-expanded", "false")
            assert focused(page) == "button.launcher"
            page.keyboard.press("Enter")  # and back in
            assert focused(page) == "textarea."
            page.keyboard.press("Shift+Tab")  # the answer's thumbs, rateable by keyboard
            assert page.evaluate("document.querySelector('#tandem-chat').shadowRoot.activeElement.dataset.rate") == "down"
            page.keyboard.press("Shift+Tab")
            assert page.evaluate("document.querySelector('#tandem-chat').shadowRoot.activeElement.dataset.rate") == "up"
            page.keyboard.press("Shift+Tab")  # the conversation can be focused, to scroll it by keyboard
            assert focused(page) == "div.log"
            page.keyboard.press("Shift+Tab")
            page.keyboard.press("Enter")  # the close button
            expect(page.locator("#tandem-chat .panel")).to_be_hidden()
            assert focused(page) == "button.launcher"
        finally:
            page.close()


def test_a_screen_reader_hears_typing_once_and_the_answer_once_and_who_said_it(tiny_server, browser) -> None:  # type: ignore[no-untyped-def]
    with tiny_server() as s:
        page = browser.new_page()
        try:
            answer = "Our shop opens at nine and closes at six, Monday to Saturday."
            scripted_socket(page, lambda ws, f, n: welcome(ws), lambda ws, f, n: stream(ws, answer, 20))
            page.goto(f"{s.url}/widget/demo")
            page.locator("#tandem-chat .launcher").click()
            page.evaluate(
                "() => { const root = document.getElementById('tandem-chat').shadowRoot; window.__heard = [];"
                " const live = [...root.querySelectorAll('[aria-live]')].filter(e => e.getAttribute('aria-live') !== 'off');"
                " for (const region of live) new MutationObserver(() => { const t = region.textContent.trim();"
                " if (t) window.__heard.push(t) }).observe(region, {childList: true, subtree: true, characterData: true}) }"
            )
            send_message(page, "When are you open?")
            expect(page.locator("#tandem-chat .msg.assistant[data-finish]")).to_have_text(answer)
            page.wait_for_function("window.__heard.some(t => t.includes('opens at nine'))")
            heard = page.evaluate("window.__heard")
            assert heard == ["The assistant is typing…", f"The assistant said: {answer}"], heard
            labels = page.locator("#tandem-chat .msg").evaluate_all("els => els.map(e => e.getAttribute('aria-label'))")
            assert labels == ["You said", "The assistant said"]
        finally:
            page.close()
