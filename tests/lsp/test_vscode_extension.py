"""The VS Code extension in a real VS Code: code-server (installed by `make test`) served on
loopback with the built `tandem.vsix` installed, driven by Playwright in headless Chromium. A
Python file is opened, typed into, and the grey suggestion that appears comes from Tandem's
language server on the default model; Tab accepts it and the server counts the acceptance."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
from playwright.sync_api import Page, expect

from tests.conftest import ARTIFACTS, ROOT, free_port, metric, wait_healthy
from tests.waiting import eventually, stays

pytestmark = [pytest.mark.browser, pytest.mark.default_model]

EXT = ROOT / "vscode-extension"
VSIX = EXT / "tandem.vsix"
INSTALL = EXT / ".code-server"
CODE_SERVER = INSTALL / "cs" / "node_modules" / ".bin" / "code-server"
NODE24_BIN = INSTALL / "node24" / "node_modules" / "node" / "bin"
GHOST = ".monaco-editor .ghost-text-decoration, .monaco-editor .ghost-text"  # on the cursor's line, and the lines below
SOURCE = "import os\n\n\ndef list_python_files(path):\n    "

# a quiet, offline workbench: no welcome page, chat panel, trust prompt, gallery or telemetry
WORKBENCH_SETTINGS = {
    "workbench.startupEditor": "none",
    "workbench.tips.enabled": False,
    "workbench.enableExperiments": False,
    "workbench.secondarySideBar.defaultVisibility": "hidden",
    "chat.disableAIFeatures": True,
    "extensions.autoCheckUpdates": False,
    "extensions.autoUpdate": False,
    "extensions.ignoreRecommendations": True,
    "telemetry.telemetryLevel": "off",
    "update.mode": "none",
    "security.workspace.trust.enabled": False,
    "git.enabled": False,
    "github.gitAuthentication": False,
    "editor.inlineSuggest.enabled": True,
    "editor.quickSuggestions": {"other": False, "comments": False, "strings": False},
    "editor.suggestOnTriggerCharacters": False,
    "editor.acceptSuggestionOnEnter": "off",
}


class CodeServer(NamedTuple):
    url: str
    workspace: Path
    log: Path


@pytest.fixture(scope="module")
def code_server(default_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CodeServer]:  # type: ignore[no-untyped-def]
    for needed, how in ((VSIX, "`make vsix` builds it"), (CODE_SERVER, "`make test` installs it")):
        if not needed.exists():
            raise RuntimeError(f"{needed} is missing: {how}")
    root = tmp_path_factory.mktemp("code-server")
    user_data, extensions, workspace, tmp = (root / "user-data", root / "extensions", root / "workspace", root / "tmp")
    for d in (user_data / "User", extensions, workspace, tmp):
        d.mkdir(parents=True)
    (workspace / "files.py").write_text(SOURCE)
    settings = {
        **WORKBENCH_SETTINGS,
        "tandem.pythonPath": sys.executable,
        "tandem.serverUrl": default_server.url,
        "tandem.maxTokens": 24,
        "tandem.timeBudgetMs": 30_000,
    }
    (user_data / "User" / "settings.json").write_text(json.dumps(settings, indent=2))
    port = free_port()
    config = root / "config.yaml"
    config.write_text(f"bind-addr: 127.0.0.1:{port}\nauth: none\ncert: false\ndisable-telemetry: true\ndisable-update-check: true\n")
    env = {
        **os.environ,
        "PATH": f"{NODE24_BIN}{os.pathsep}{os.environ['PATH']}",
        "TMPDIR": str(tmp),
        "XDG_CONFIG_HOME": str(root / "xdg-config"),
        "XDG_DATA_HOME": str(root / "xdg-data"),
        "XDG_CACHE_HOME": str(root / "xdg-cache"),
        "EXTENSIONS_GALLERY": "{}",
    }  # no marketplace: the workbench asks nothing of the network
    common = [str(CODE_SERVER), "--config", str(config), "--user-data-dir", str(user_data), "--extensions-dir", str(extensions)]
    subprocess.run([*common, "--install-extension", str(VSIX)], env=env, check=True, capture_output=True, timeout=120)
    listed = subprocess.run([*common, "--list-extensions"], env=env, check=True, capture_output=True, text=True, timeout=120).stdout
    assert "tandem.tandem" in listed.split()
    log = root / "code-server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [*common, "--disable-workspace-trust", "--disable-getting-started-override", str(workspace)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, proc, log, 60, "code-server")
    try:
        yield CodeServer(url, workspace, log)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # code-server and the extension hosts (and their language servers)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def open_file(page: Page, name: str) -> None:
    page.keyboard.press("Control+P")
    page.locator(".quick-input-widget input").fill(name)
    page.locator(".quick-input-list .monaco-list-row").filter(has_text=name).first.click()
    expect(page.locator(".monaco-editor .view-lines")).to_contain_text("def list_python_files", timeout=30_000)


def status_item(page: Page):  # type: ignore[no-untyped-def]
    return (
        page.locator('#workbench\\.parts\\.statusbar [id="tandem.tandem.status"], #workbench\\.parts\\.statusbar .statusbar-item')
        .filter(has_text="Tandem")
        .first
    )


def test_a_tandem_suggestion_appears_in_vs_code_and_tab_accepts_it(code_server: CodeServer, default_server, browser) -> None:  # type: ignore[no-untyped-def]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    offsite: list[str] = []
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.on(
        "request",
        lambda r: offsite.append(r.url) if not r.url.startswith(("http://127.0.0.1", "ws://127.0.0.1", "data:", "blob:")) else None,
    )
    try:
        page.goto(f"{code_server.url}/?folder={code_server.workspace}")
        expect(page.locator(".monaco-workbench")).to_be_visible(timeout=60_000)
        status = status_item(page)
        # the extension started the language server, which warmed the engine up and reported it ready
        expect(status.locator(".codicon-check")).to_be_visible(timeout=120_000)
        open_file(page, "files.py")
        accepted_before = metric(default_server.url, "tandem_completion_feedback_total", 'event="accepted"')
        finished_before = metric(default_server.url, "tandem_requests_finished_total")
        page.locator(".monaco-editor .view-lines").first.click()
        page.keyboard.press("Control+End")
        expect(page.locator("#workbench\\.parts\\.statusbar")).to_contain_text("Ln 5, Col 5")
        page.keyboard.type("fi", delay=120)  # a developer starts the line, then pauses
        ghost = page.locator(GHOST).first
        try:
            expect(ghost).to_be_visible(timeout=60_000)
        except AssertionError:
            page.screenshot(path=str(ARTIFACTS / "vscode-no-suggestion.png"))
            raise
        # the rest of the cursor's line (on it) and the lines below (a view zone), syntax-highlighted in pieces
        on_line = "".join(page.locator(".monaco-editor .ghost-text-decoration").all_inner_texts()).replace("\xa0", " ")
        below = "".join(page.locator(".monaco-editor .ghost-text").all_inner_texts()).replace("\xa0", " ")
        assert (on_line + below).strip(), "an empty ghost text"
        # it came from Tandem: the engine finished a generation for it
        assert metric(default_server.url, "tandem_requests_finished_total") > finished_before
        expect(status).to_contain_text(re.compile(r"Tandem \d+ ms"))  # ready, with the last suggestion's latency
        page.screenshot(path=str(ARTIFACTS / "vscode-inline-suggestion.png"))
        page.keyboard.press("Tab")
        accepted_line = ("fi" + on_line).rstrip()
        eventually(
            lambda: accepted_line in page.locator(".monaco-editor .view-lines").first.inner_text().replace("\xa0", " "),
            f"Tab inserting {accepted_line!r}",
            10,
        )
        # the item's command reported the acceptance to the language server, which told the server
        eventually(
            lambda: metric(default_server.url, "tandem_completion_feedback_total", 'event="accepted"') >= accepted_before + 1,
            "the acceptance reaching the server",
            20,
        )
        page.screenshot(path=str(ARTIFACTS / "vscode-suggestion-accepted.png"))
        assert not offsite, f"the workbench reached off the machine: {sorted(set(offsite))[:5]}"
    finally:
        context.close()


def run_command(page: Page, title: str) -> None:
    page.keyboard.press("F1")
    page.locator(".quick-input-widget input").fill(f">{title}")
    page.locator(".quick-input-list .monaco-list-row").filter(has_text=title).first.click()


def settled_count(url: str, timeout: float = 60) -> float:
    """The engine's finished-request count once nothing is in flight: no call in the gateway, none
    in the engine, and the count unchanged for a second (a request the language server sent just
    before completions were switched off may still be on its way, then cancelled)."""

    def busy() -> float:
        return metric(url, "tandem_gateway_calls_in_flight") + sum(
            metric(url, f"tandem_requests_{state}") for state in ("running", "prefilling", "waiting")
        )

    def settled() -> tuple[float] | None:  # (a tuple: a count of 0 is an answer too)
        count = metric(url, "tandem_requests_finished_total")
        holds = stays(
            lambda: busy() == 0 and metric(url, "tandem_requests_finished_total") == count, "the engine staying idle", 1.0, fail=False
        )
        return (count,) if holds else None

    return eventually(settled, "the engine settling", timeout)[0]


def test_commands_toggle_show_the_log_and_dismissals_are_reported(code_server: CodeServer, default_server, browser) -> None:  # type: ignore[no-untyped-def]
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    try:
        page.goto(f"{code_server.url}/?folder={code_server.workspace}")
        status = status_item(page)
        expect(status.locator(".codicon-check")).to_be_visible(timeout=120_000)
        open_file(page, "files.py")
        # off: the status bar says so and typing asks nothing of the engine
        run_command(page, "Tandem: Toggle completions")
        expect(status).to_contain_text("Tandem: off")
        finished = settled_count(default_server.url)  # what opening the file asked for, before the switch, has ended
        page.locator(".monaco-editor .view-lines").first.click()
        page.keyboard.press("Control+End")
        page.keyboard.type("# list ", delay=120)
        stays(
            lambda: page.locator(GHOST).count() == 0 and metric(default_server.url, "tandem_requests_finished_total") == finished,
            "no suggestion and nothing asked of the engine while off",
            3,
        )
        # on again; a suggestion the developer walks away from is reported dismissed
        run_command(page, "Tandem: Toggle completions")
        expect(status.locator(".codicon-check")).to_be_visible()
        dismissed = metric(default_server.url, "tandem_completion_feedback_total", 'event="dismissed"')
        page.locator(".monaco-editor .view-lines").first.click()
        page.keyboard.press("Control+End")
        run_command(page, "Tandem: Suggest a completion here")
        ghost = page.locator(GHOST).first
        expect(ghost).to_be_visible(timeout=60_000)
        page.keyboard.press("Escape")
        page.keyboard.type("\n\nclass Stack:\n", delay=120)  # typing on elsewhere: a new request replaces the shown one
        eventually(
            lambda: metric(default_server.url, "tandem_completion_feedback_total", 'event="dismissed"') >= dismissed + 1,
            "the dismissal reaching the server",
            60,
        )
        # the language server's log, in VS Code's output panel
        run_command(page, "Tandem: Show the language server's log")
        expect(page.get_by_role("document", name="Tandem - Output")).to_contain_text("Starting the language server", timeout=15_000)
    finally:
        context.close()
