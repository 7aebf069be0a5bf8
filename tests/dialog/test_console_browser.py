"""People in the loop in real browsers (headless Chromium): a visitor on the demo page asks for a
person with the widget's button; a staff member signed into /console sees the conversation appear,
takes it over and replies, and the visitor's widget shows the agent's name and words; the staff
member hands back and the bot answers the visitor's next message; the visitor rates the answer and,
once it is closed, the conversation; the rating shows in the console and /metrics. The console's
page runs under a policy that allows only its own script."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Page, expect

from tests.conftest import metric
from tests.dialog.test_widget_a11y import axe_violations
from tests.dialog_client import staff_token


def sign_in(page: Page, url: str, token: str) -> None:
    page.goto(f"{url}/console")
    page.locator("#token").fill(token)
    page.locator("#signin button[type=submit]").click()
    expect(page.locator("#who")).to_have_text("Signed in as Dana")


def test_a_visitor_asks_for_a_person_and_a_staff_member_answers_in_the_console(tiny_server, browser, shots: Path) -> None:
    with tiny_server(dialog={"max_answer_tokens": 4}) as s:
        token = staff_token(s.dialog_dir, "Dana", ["demo"])
        staff, visitor = browser.new_page(), browser.new_page()
        blocked: list[str] = []
        staff.on("console", lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None)
        try:
            sign_in(staff, s.url, token)
            visitor.goto(f"{s.url}/widget/demo")
            chat = visitor.locator("#tandem-chat")
            chat.locator(".launcher").click()
            expect(chat.locator(".panel")).to_be_visible()
            chat.locator("textarea").fill("My order never arrived")
            chat.locator("textarea").press("Enter")
            expect(chat.locator(".msg.assistant[data-finish]")).to_have_count(1, timeout=60_000)
            chat.locator(".person").click()  # "Talk to a person"
            expect(chat.locator(".msg.system").last).to_have_text("We've asked a person to join. They'll answer here.")
            expect(chat.locator(".person")).to_be_hidden()

            waiting = staff.locator("#list li[data-status=waiting]")
            expect(waiting).to_have_count(1)  # it appears without a reload
            expect(waiting).to_contain_text("Waiting for a person")
            waiting.locator("button").click()
            expect(staff.locator("#messages li.user")).to_have_text("VisitorMy order never arrived")
            staff.locator("#take").click()
            expect(staff.locator("#state")).to_have_text("With an agent (Dana)")
            expect(chat.locator(".msg.system").last).to_have_text("Dana has joined the conversation.")
            staff.locator("#reply-text").fill("Hi, I'm Dana. Let me look into it.")
            staff.locator("#reply button[type=submit]").click()
            agent = chat.locator(".msg.agent")
            expect(agent).to_have_count(1)
            expect(agent.locator(".who")).to_have_text("Dana")
            expect(agent).to_contain_text("Hi, I'm Dana. Let me look into it.")
            expect(staff.locator("#messages li.agent")).to_contain_text("Hi, I'm Dana.")
            staff.screenshot(path=str(shots / "console-agent.png"))
            assert axe_violations(staff) == []  # WCAG 2.1 A and AA, as the widget
            visitor.screenshot(path=str(shots / "widget-agent.png"))

            staff.locator("#handback").click()
            expect(chat.locator(".msg.system").last).to_have_text("The assistant is answering again.")
            chat.locator("textarea").fill("Thanks. What about returns?")
            chat.locator("textarea").press("Enter")
            expect(chat.locator(".msg.assistant[data-finish]")).to_have_count(2, timeout=60_000)  # the bot answers again
            chat.locator(".msg.assistant[data-finish]").last.locator("button[data-rate=up]").click()
            expect(chat.locator(".msg.assistant[data-finish]").last.locator("button[data-rate=up]")).to_have_attribute(
                "aria-pressed", "true"
            )

            staff.locator("#close").click()
            stars = chat.locator(".stars button")
            expect(stars).to_have_count(5)
            stars.nth(4).click()
            expect(chat.locator(".msg.system").last).to_have_text("Thank you for your rating.")
            expect(staff.locator("#rating")).to_have_text("Rated 5/5")
            expect(staff.locator("#state")).to_have_text("Closed")
            staff.screenshot(path=str(shots / "console-closed.png"))
            visitor.screenshot(path=str(shots / "widget-closed.png"))
            assert metric(s.url, "tandem_dialog_ratings_total", 'kind="conversation",value="5"') == 1
            assert metric(s.url, "tandem_dialog_ratings_total", 'kind="answer",value="up"') == 1
            assert not blocked, blocked  # the console breaks none of its own policy
        finally:
            staff.close()
            visitor.close()


def test_the_console_refuses_a_wrong_token_and_keeps_none(tiny_server, browser) -> None:
    with tiny_server() as s:
        page = browser.new_page()
        try:
            page.goto(f"{s.url}/console")
            page.locator("#token").fill("tst_wrong")
            page.locator("#signin button[type=submit]").click()
            expect(page.locator("#signin-error")).to_have_text("Sign in with a staff token (tandem staff add).")
            assert page.evaluate("sessionStorage.getItem('tandem.console.token')") is None
            expect(page.locator("#app")).to_be_hidden()
            assert axe_violations(page) == []
        finally:
            page.close()
