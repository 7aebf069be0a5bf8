"""`tandem sites` and `tandem conversations` on a real chat store, as an operator uses them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT
from tests.dialog_client import Chat


def tandem(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "server.cli", *args], capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_sites_add_and_list(tmp_path: Path) -> None:
    d = ["--dialog-dir", str(tmp_path)]
    added = tandem(
        "sites",
        "add",
        "acme",
        "--name",
        "Acme",
        "--origin",
        "https://acme.test",
        "--origin",
        "https://www.acme.test",
        "--system-prompt",
        "You help Acme's customers.",
        *d,
    )
    assert added.returncode == 0 and 'data-site-key="acme"' in added.stdout
    assert tandem("sites", "add", "nope", *d).returncode == 2  # no origin: refused with a reason
    listed = tandem("sites", "list", *d).stdout
    assert "acme" in listed and "https://acme.test, https://www.acme.test" in listed and "You help Acme" in listed
    tandem("sites", "add", "acme", "--origin", "https://acme.test", "--system-prompt", "Changed.", *d)
    assert "Changed." in tandem("sites", "list", *d).stdout


def test_conversations_list_show_export(tiny_server, tmp_path: Path) -> None:
    with tiny_server(dialog={"max_answer_tokens": 8}) as s:
        with Chat(s.url) as chat:
            chat.ask("Where is my parcel?")
        d = ["--dialog-dir", str(s.dialog_dir)]
        listed = tandem("conversations", "list", *d)
        assert chat.conversation_id in listed.stdout and "2 messages" in listed.stdout
        shown = tandem("conversations", "show", chat.conversation_id, *d)
        assert "Visitor (" in shown.stdout and "Where is my parcel?" in shown.stdout and "Assistant (" in shown.stdout
        assert "status: bot" in shown.stdout
        assert tandem("conversations", "show", "conv_missing", *d).returncode == 1
        out = tmp_path / "all.jsonl"
        assert tandem("conversations", "export", "--out", str(out), *d).returncode == 0
        (line,) = out.read_text().splitlines()
        dump = json.loads(line)
        assert dump["id"] == chat.conversation_id and [m["role"] for m in dump["messages"]] == ["user", "assistant"]
        text = tmp_path / "all.txt"  # the same transcript as text, to read or paste into a ticket
        assert tandem("conversations", "export", "--format", "text", "--out", str(text), *d).returncode == 0
        assert text.read_text() == shown.stdout + "\n"
